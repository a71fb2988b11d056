"""scripts/speedrun_124M.sh run by bash with `python` and `torchrun` replaced by stubs that record their arguments:
every llmpy command it issues, for 8 GPUs and for one, is parsed and validated by llmpy's real argument parser."""

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from llmpy.cli import build_parser
from llmpy.flags import train_config_from_args

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
# records its arguments (one command per line); as torchrun, writes the DONE marker of the run's last step (-x)
STUB = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$RECORD"
if [ "$(basename "$0")" = torchrun ]; then
  args=("$@"); for i in "${!args[@]}"; do
    [ "${args[$i]}" = -o ] && out=${args[$((i + 1))]}; [ "${args[$i]}" = -x ] && last=${args[$((i + 1))]}
  done
  mkdir -p "$out" && touch "$(printf "%s/DONE_%08d" "$out" "$last")"
fi
"""


def run_script(tmp_path, gpus: str, data: Path) -> list[list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("python", "torchrun", "nvidia-smi"):
        (bin_dir / name).write_text(STUB)
        (bin_dir / name).chmod(0o755)
    record = tmp_path / f"record_{gpus}.txt"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RECORD": str(record), "GPUS": gpus,
           "DATA": str(data), "OUT": str(tmp_path / f"run{gpus}")}
    done = subprocess.run(["bash", str(SCRIPTS / "speedrun_124M.sh")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return [shlex.split(line) for line in record.read_text().splitlines()]


@pytest.mark.parametrize("gpus, accumulation", [("8", 1), ("1", 4)])
def test_the_speedrun_script_trains_the_frontier_recipe_on_the_published_tokens(tmp_path, gpus, accumulation):
    commands = run_script(tmp_path, gpus, tmp_path / "fineweb")
    prepare, launch = commands
    assert prepare[:4] == ["python", "-m", "llmpy", "prepare"]
    args = build_parser().parse_args(prepare[3:])
    assert (args.source, args.type, args.version, args.out) == ("fineweb", "classic", "10B", str(tmp_path / "fineweb"))
    assert launch[0] == "torchrun" and f"--nproc_per_node={gpus}" in launch
    train = launch[launch.index("llmpy") + 1:]
    config = train_config_from_args(build_parser().parse_args(train))
    config.validate(world_size=int(gpus))
    assert (config.recipe, config.family, config.optimizer, config.model) == ("frontier", "modern", "muon", "d12")
    assert config.grad_accum_steps(world_size=int(gpus)) == accumulation
    assert config.total_batch_size * config.max_steps == 262_144 * 1293 == 338_952_192  # the published ~0.34B
    assert config.val_max_steps * config.batch_size * config.seq_len * int(gpus) == 10_485_760  # the speedrun's val
    assert config.resume == 1 and config.output_dir == str(tmp_path / f"run{gpus}")


def test_a_prepared_data_set_is_not_prepared_again_and_a_bad_gpu_count_is_one_line(tmp_path):
    data = tmp_path / "fineweb"
    data.mkdir()
    (data / "manifest.json").write_text('{"complete": true}')
    assert [c[0] for c in run_script(tmp_path, "8", data)] == ["torchrun"]
    done = subprocess.run(["bash", str(SCRIPTS / "speedrun_124M.sh")], env={**os.environ, "GPUS": "4"},
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip() == "speedrun_124M.sh: GPUS must be 8 or 1, got '4'"
