"""Help and errors a person can act on, and progress in long operations (issue 26 items 12 and 13): bench's -d default
is train's, a long step says where it is, --help describes and shows defaults, a near miss gets its near match, an
unknown -e or --gpu lists what is known, eval says what it skipped and scored, the README lists every LLMPY_ variable."""

import argparse
import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_random_shards

from llmpy import resources
from llmpy.cli import build_parser, main
from llmpy.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def commands() -> dict[str, argparse.ArgumentParser]:
    return next(a for a in build_parser()._actions if a.dest == "command").choices


def last_error_line(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


# item 12: bench's default -d and progress inside a long step

def test_bench_defaults_to_trains_total_batch_size():
    """`bench` and `train` with the same flags time the same step: -d -1 (one micro-step) unless -d is given."""
    assert commands()["bench"].parse_args([]).total_batch_size == TrainConfig().total_batch_size == -1


def run_tiny_bench(capsys, d: int) -> str:
    assert main(["bench", "--model", "d2w64", "-b", "2", "-t", "32", "-d", str(d), "--steps", "1", "--warmup", "0",
                 "--device", "cpu", "--compile", "0"]) == 0
    return capsys.readouterr().err


def test_a_step_of_many_micro_steps_shows_progress_on_a_terminal(capsys, monkeypatch):
    from llmpy.train import progress

    monkeypatch.setattr(progress, "SHOW_AFTER_S", 0.0)  # tiny steps: show at once, every micro-step
    monkeypatch.setattr(progress, "EVERY_S", 0.0)
    assert "micro-step" not in run_tiny_bench(capsys, 256)  # not a terminal: logs stay clean
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    err = run_tiny_bench(capsys, 256)  # 256 / (2 x 32) = 4 micro-steps
    assert re.search(r"step 1: micro-step 3/4, ~\d+s left in this step", err), err
    assert "micro-step 4/4" not in err  # a finished step leaves nothing behind


def test_progress_waits_for_a_long_step_and_estimates_from_the_steady_micro_steps():
    from llmpy.train.progress import MicroStepProgress

    class Stream(list):
        def write(self, text):
            self.append(text)

        def flush(self):
            pass

    now = [0.0]
    out = Stream()
    bar = MicroStepProgress(enabled=True, stream=out, clock=lambda: now[0], show_after=5.0, every=2.0)
    bar.start(step=6, micro_steps=10)
    for done, at in ((1, 30.0), (2, 31.0), (3, 31.5), (4, 33.0)):  # the first micro-step compiles: 30 s
        now[0] = at
        bar.tick(done)
    # 30 s in: shown; (33 - 30) / 3 s per steady micro-step -> 6 left = ~6s; 31.5 is within 2 s of 30: not shown
    shown = "".join(out)
    assert "step 7: micro-step 1/10" in shown and "micro-step 3/10" not in shown
    assert "step 7: micro-step 4/10, ~6s left in this step" in shown
    bar.finish()
    assert out[-1].startswith("\r") and out[-1].strip() == ""  # the line is cleared


# item 13: help, near matches, unknown values

def test_every_subcommand_has_a_one_line_description_and_shows_its_defaults():
    for name, command in commands().items():
        assert command.description and "\n" not in command.description, name
        formatter = command._get_formatter()
        for action in command._actions:
            default = action.default
            if (not action.option_strings or action.help in (None, argparse.SUPPRESS) or default is None
                    or default is False or default == argparse.SUPPRESS):
                continue
            assert "default" in formatter._expand_help(action), (name, action.option_strings)
        assert "default" in command.format_help()


def test_sample_help_names_its_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 128)" in out and "(default: 1337)" in out  # --max-new-tokens, --seed


def test_close_match_finds_the_near_miss_only():
    from llmpy.suggest import close_match

    assert close_match("trian", ["train", "bench", "eval"]) == "train"
    assert close_match("--lerning-rate", ["--learning-rate", "--seed"]) == "--learning-rate"
    assert close_match("xyz", ["train", "bench"]) is None


@pytest.mark.parametrize("argv, hint", [
    (["trian"], "unknown command 'trian'; did you mean 'train'?"),
    (["evl", "--model", "x"], "did you mean 'eval'?"),
    (["train", "--lerning-rate", "1"], "did you mean --learning-rate?"),
    (["train", "--lerning-rate=1"], "did you mean --learning-rate?"),
    (["bench", "--stpes", "3"], "did you mean --steps?"),
    (["eval", "--model", "x", "--dtype", "bf61"], "invalid choice: 'bf61'; did you mean 'bf16'?"),
    (["bench", "--recipe", "modren"], "did you mean 'modern'?"),
    (["train", "-i", "x.bin", "-k", "cosin"], "did you mean 'cosine'?"),
])
def test_a_near_miss_gets_its_near_match_in_one_line(argv, hint, capsys):
    assert exit_code(argv) == 2
    line = last_error_line(capsys)
    assert hint in line
    if "did you mean --" in hint:  # an unknown option: the help it points at is the subcommand's
        assert f"(`llmpy {argv[0]} --help`)" in line


def exit_code(argv: list[str]) -> int:
    """main's exit code, whether argparse exits or main returns."""
    try:
        return main(argv)
    except SystemExit as exit_info:
        return exit_info.code


def test_an_unknown_flag_with_no_near_match_points_at_help(capsys):
    assert exit_code(["train", "--zzzzzz"]) == 2
    assert "llmpy train --help" in last_error_line(capsys)


def test_an_unknown_model_lists_the_forms_it_accepts(tmp_path, capsys):
    shards = write_random_shards(tmp_path, "c", {"train_000001.bin": 4096}, seed=0)
    assert main(["train", "-i", str(shards / "c_train_*.bin"), "-e", "gtp2", "-b", "2", "-t", "32", "-x", "1",
                 "--device", "cpu", "--compile", "0"]) == 2
    err = last_error_line(capsys)
    for form in ("dN", "dNwC", "gpt2-medium", "run directory", "model_", "llm.c", "Hugging Face"):
        assert form in err, (form, err)
    assert "(did you mean 'gpt2'?)" in err
    assert main(["sample", "--model", str(tmp_path / "nothing")]) == 2
    err = last_error_line(capsys)
    for form in ("gpt2-xl", "run directory", "llm.c", "Hugging Face"):
        assert form in err, (form, err)


def test_plan_names_the_gpus_it_knows(capsys):
    assert main(["plan", "--gpu", "H10"]) == 2
    err = last_error_line(capsys)
    assert "H100" in err and "A100" in err and "L4" in err and "did you mean" in err


# item 13: eval says what it skipped and scored

def test_eval_says_it_skips_the_val_loss_and_how_many_examples_it_scored(tmp_path, capsys, monkeypatch, bpe_file,
                                                                         shared_data):
    from llmpy.checkpoint import export_model
    from llmpy.config import ModelConfig
    from llmpy.model import GPT

    monkeypatch.setenv("LLMPY_GPT2_BPE", str(bpe_file))
    torch.manual_seed(0)
    model = export_model(tmp_path / "tiny", GPT(ModelConfig(n_layer=2, n_head=2, n_embd=64, block_size=64)), {})
    hellaswag = shared_data / "hellaswag" / "hellaswag_val.jsonl"
    assert main(["eval", "--model", str(model.parent), "--hellaswag-file", str(hellaswag), "--limit", "3",
                 "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "val loss skipped: no -j/--val-data given" in captured.err
    assert re.search(r"HellaSwag examples\s+3\b", captured.out), captured.out


# item 13: the variables that point at local data

def test_the_readme_lists_every_llmpy_variable_of_the_source():
    internal: set[str] = set()  # variables not meant for users (none today)
    found = {name for path in (ROOT / "src").rglob("*.py")
             for name in re.findall(r"LLMPY_[A-Z0-9_]*[A-Z0-9]", path.read_text(encoding="utf-8"))}
    assert {"LLMPY_OFFLINE", "LLMPY_CACHE", "LLMPY_GPT2_BPE", "LLMPY_HELLASWAG", "LLMPY_TINYSHAKESPEARE"} <= found
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = set(re.findall(r"^\| `(LLMPY_[A-Z0-9_]+)", readme, re.MULTILINE))
    assert sorted(found - internal - rows) == []


def test_quickstart_offline_names_every_local_data_variable(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLMPY_OFFLINE", "1")
    monkeypatch.setenv("LLMPY_CACHE", str(tmp_path / "cache"))
    for resource in (resources.GPT2_BPE, resources.HELLASWAG_VAL, resources.TINYSHAKESPEARE):
        monkeypatch.delenv(resource.env_var, raising=False)
    assert main(["quickstart", "--device", "cpu", "--data", str(tmp_path / "data")]) == 2  # no BPE anywhere
    err = capsys.readouterr().err
    for name in ("LLMPY_GPT2_BPE", "LLMPY_TINYSHAKESPEARE", "LLMPY_HELLASWAG", "LLMPY_CACHE", "LLMPY_OFFLINE"):
        assert name in err.splitlines()[0], (name, err)
