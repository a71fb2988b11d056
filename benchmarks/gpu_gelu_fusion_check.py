"""The cuBLASLt GELU epilogues (llmpy.kernels.cublaslt) on the GPU, op by op, at GPT-2 124M's MLP shapes.

Each op is compared with an fp32 reference computed from the same bf16 inputs (llmpy.kernels.cublaslt.epilogue_errors,
which the auto-enabling probe also uses; `gelu_erf` shows which GELU the epilogue computes), then timed against the unfused bf16 ops it replaces (compiled, as
a training step runs them).
    PYTHONPATH=src [LLMPY_CUBLASLT_TUNE=8] python benchmarks/gpu_gelu_fusion_check.py [--rows 65536]
"""

import argparse
import json

import torch
import torch.nn.functional as F

from llmpy.kernels.cublaslt import (_cublaslt, _lt_usable, epilogue_errors, disagreeing_outputs, gelu_fusion_supported,
                                    linear_gelu, matmul_dgelu)


def timed(fn, repeats: int = 20) -> float:
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=65536)
    parser.add_argument("--channels", type=int, default=768)
    args = parser.parse_args()
    M, C, N = args.rows, args.channels, 4 * args.channels
    result = {"rows": M, "channels": C, "supported": gelu_fusion_supported(0), "device": torch.cuda.get_device_name()}
    g = torch.Generator(device="cuda").manual_seed(0)
    bf = torch.bfloat16
    x = torch.randn(M, C, device="cuda", generator=g).to(bf)
    w_fc = (0.02 * torch.randn(N, C, device="cuda", generator=g)).to(bf)
    b_fc = (0.02 * torch.randn(N, device="cuda", generator=g)).to(bf)
    w_proj = (0.02 * torch.randn(C, N, device="cuda", generator=g)).to(bf)
    dy = torch.randn(M, C, device="cuda", generator=g).to(bf)
    result["lt_usable"] = _lt_usable(x, w_fc, b_fc)
    errors = epilogue_errors(x, w_fc, b_fc, w_proj, dy)  # {output: (max error, max |reference|)}
    result.update({f"{name}_max_err": error for name, (error, _) in errors.items()})
    result.update({f"{name}_scale": scale for name, (_, scale) in errors.items()})
    _, pre = linear_gelu(x, w_fc, b_fc)

    @torch.compile
    def unfused_forward(x, w, b):
        pre = torch.addmm(b, x, w.t())
        return F.gelu(pre, approximate="tanh"), pre

    @torch.compile
    def unfused_backward(dy, w, pre):
        dh = torch.ops.aten.gelu_backward(dy @ w, pre, approximate="tanh")
        return dh, dh.sum(0, dtype=torch.float32).to(dh.dtype)

    result["ms_fused_forward"] = timed(lambda: linear_gelu(x, w_fc, b_fc))
    result["ms_fused_backward"] = timed(lambda: matmul_dgelu(dy, w_proj, pre))
    result["ms_unfused_forward"] = timed(lambda: unfused_forward(x, w_fc, b_fc))
    result["ms_plain_matmul_forward"] = timed(lambda: x @ w_fc.t())
    result["ms_unfused_backward"] = timed(lambda: unfused_backward(dy, w_proj, pre))
    result["ms_plain_matmul_backward"] = timed(lambda: dy @ w_proj)
    result["disagreeing"] = disagreeing_outputs(errors)
    result["passed"] = result["supported"] and result["lt_usable"] and not result["disagreeing"]
    # with LLMPY_CUBLASLT_TUNE=N: each planned shape's candidate algorithms and their ms at first use
    result["candidate_ms"] = {str(key[0]) + " D" + str(key[4]): timings for key, timings in _cublaslt(0).timings.items()}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
