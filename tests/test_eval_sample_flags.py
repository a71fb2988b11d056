"""`llmpy sample` and `llmpy eval` refuse values they cannot use with one line naming the flag or file, before any
work, instead of a torch traceback or a silent HellaSwag accuracy of 0 (adversarial review D3, D4, D10, D12)."""

import pytest
import torch

from llmpy.checkpoint import export_model
from llmpy.cli import main
from llmpy.config import ModelConfig
from llmpy.model import GPT


@pytest.fixture()
def run_dir(bpe_env, tmp_path):
    """A finished run directory holding a 1-layer model (untrained: only that it loads matters)."""
    torch.manual_seed(0)
    export_model(tmp_path / "run", GPT(ModelConfig(n_layer=1, n_head=1, n_embd=64, block_size=16)), {})
    return tmp_path / "run"


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("flag, value, wanted", [
    ("--temperature", "nan", "a finite number >= 0 (0 = greedy), got nan"),
    ("--temperature", "inf", "a finite number >= 0 (0 = greedy), got inf"),
    ("--temperature", "-0.5", "a finite number >= 0 (0 = greedy), got -0.5"),
    ("--top-p", "0", "in (0, 1] (1 = off), got 0.0"),
    ("--top-p", "nan", "in (0, 1] (1 = off), got nan"),
    ("--top-p", "1.5", "in (0, 1] (1 = off), got 1.5"),
    ("--top-k", "-1", ">= 0 (0 = off), got -1"),
    ("--num-samples", "0", ">= 1, got 0"),
    ("--max-new-tokens", "0", ">= 1, got 0"),
])
def test_sample_refuses_a_flag_value_in_one_line(run_dir, capsys, flag, value, wanted):
    assert main(["sample", "--model", str(run_dir), "--device", "cpu", flag, value]) == 2
    assert one_line_error(capsys) == f"llmpy: error: sample: {flag} must be {wanted}"


def test_sample_with_a_tiny_top_p_is_greedy_and_prints(run_dir, capsys):
    """D3: the smallest nucleus still holds the top token, so sampling works."""
    args = ["sample", "--model", str(run_dir), "--device", "cpu", "--prompt", "A", "--max-new-tokens", "3"]
    assert main(args + ["--top-p", "1e-9"]) == 0
    nucleus = capsys.readouterr().out
    assert main(args + ["--temperature", "0"]) == 0
    assert nucleus == capsys.readouterr().out


def test_eval_refuses_an_empty_hellaswag_file_and_a_limit_below_one(run_dir, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert main(["eval", "--model", str(run_dir), "--device", "cpu", "--hellaswag-file", str(empty)]) == 2
    assert one_line_error(capsys).startswith(f"llmpy: error: {empty}: no HellaSwag examples in this file")
    for limit in ("0", "-4"):
        assert main(["eval", "--model", str(run_dir), "--device", "cpu", "--hellaswag-file", str(empty),
                     "--limit", limit]) == 2
        assert one_line_error(capsys) == (f"llmpy: error: eval: --limit must be at least 1 HellaSwag example, "
                                          f"got {limit} (leave it out for all)")


@pytest.mark.parametrize("flag, value, message", [
    ("--dtype", "fp16", "argument --dtype: invalid choice: 'fp16'"),
    ("--dtype", "xyz", "argument --dtype: invalid choice: 'xyz'"),
    ("--device", "mps", "argument --device: 'mps' is not one of auto | cpu | cuda | cuda:N"),
    ("--device", "cpu:1", "argument --device: 'cpu:1' is not one of auto | cpu | cuda | cuda:N"),
])
def test_eval_and_sample_refuse_an_unknown_dtype_or_device(run_dir, capsys, flag, value, message):
    commands = [["eval", "--model", str(run_dir)]]
    if flag == "--device":
        commands.append(["sample", "--model", str(run_dir)])
    for command in commands:
        with pytest.raises(SystemExit) as stopped:
            main(command + [flag, value])
        assert stopped.value.code == 2
        assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_eval_accepts_every_dtype_and_device_it_lists(run_dir, tmp_path, capsys):
    for dtype in ("auto", "bf16", "fp32"):
        # --limit 0 is refused after the flags parse: proof they were accepted, without scoring anything
        assert main(["eval", "--model", str(run_dir), "--device", "cpu", "--dtype", dtype, "--limit", "0"]) == 2
        assert "--limit must be at least 1" in one_line_error(capsys)
