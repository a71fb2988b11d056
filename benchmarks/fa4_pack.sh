#!/usr/bin/env bash
# Builds .fa4/ (git-ignored): FlashAttention-4 for torch 2.11's SDPA hook, in one device call's 64 MiB carry.
#   bash benchmarks/fa4_pack.sh [DIR]   # here, where pip reaches the registry (DIR: .fa4); then carry it and run
#   bash .fa4/install.sh && export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/python_packages:$PYTHONPATH
# flash-attn-4 4.0.0b18 is the newest release whose _flash_attn_fwd returns (out, lse), as torch 2.11's
# torch/nn/attention/_fa4.py unpacks it. nvidia-cutlass-dsl-libs-cu13's wheel (88 MB) is repacked as tar.xz (53 MB);
# it carries every file of libs-base, so libs-base is not shipped.
set -eu
dir=${1:-.fa4}
mkdir -p "$dir" /tmp/fa4pack
get() {
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$1" "$2"
}
for spec in flash-attn-4==4.0.0b18 quack-kernels==0.5.0 nvidia-cutlass-dsl==4.5.2 apache-tvm-ffi==0.1.12 \
            torch-c-dlpack-ext==0.1.5 einops==0.8.2; do
    get "$dir" "$spec"
done
get /tmp/fa4pack nvidia-cutlass-dsl-libs-cu13==4.5.2
rm -rf /tmp/fa4pack/x && mkdir /tmp/fa4pack/x && unzip -q /tmp/fa4pack/nvidia_cutlass_dsl_libs_cu13-*.whl -d /tmp/fa4pack/x
tar -C /tmp/fa4pack/x -cf - . | xz -9e -T2 > "$dir/nvidia_cutlass_dsl_libs_cu13-4.5.2.tar.xz"   # ~4 min on 2 cores
(cd "$dir" && sha256sum nvidia_cutlass_dsl_libs_cu13-4.5.2.tar.xz > SHA256)
cat > "$dir/install.sh" <<'INSTALL'
#!/usr/bin/env bash
# FlashAttention-4 and its stack into ${FA4_SITE:-/tmp/site} (see benchmarks/fa4_pack.sh).
set -eu
SITE=${FA4_SITE:-/tmp/site}
here=$(dirname "$0")
(cd "$here" && sha256sum -c --quiet SHA256)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$here"/*.whl
tar -C "$SITE" -xJf "$here"/nvidia_cutlass_dsl_libs_cu13-4.5.2.tar.xz   # merged into nvidia_cutlass_dsl/
echo "FA4 installed in $SITE"
INSTALL
chmod +x "$dir/install.sh"
du -sh "$dir"
