"""`llmpy --help`, `llmpy train --help` and argument errors build the parser without importing torch, numpy or
matplotlib (issue 15 item 12: they took ~2 s when bench/plot imported torch at module level)."""

import subprocess
import sys

import pytest

HEAVY = ("torch", "numpy", "matplotlib")


def imported_modules(*args: str) -> tuple[int, set[str]]:
    """Exit code and the top-level modules `python -X importtime -m llmpy ARGS` imported."""
    run = subprocess.run([sys.executable, "-X", "importtime", "-m", "llmpy", *args], capture_output=True, text=True,
                         timeout=120, check=False)
    names = {line.split("|")[-1].strip().split(".")[0] for line in run.stderr.splitlines()
             if line.startswith("import time:")}
    return run.returncode, names


@pytest.mark.parametrize("args, code", [(["--help"], 0), (["train", "--help"], 0), (["eval", "--help"], 0),
                                        (["train", "--no-such-flag"], 2), (["bench", "--steps", "x"], 2),
                                        (["train", "-i", "x.bin", "--debug", "-b"], 2)])
def test_help_and_argument_errors_do_not_import_torch(args, code):
    returncode, names = imported_modules(*args)
    assert returncode == code
    assert "llmpy" in names and not names & set(HEAVY), sorted(names & set(HEAVY))


def test_building_the_parser_imports_no_heavy_module():
    script = ("import sys; from llmpy.cli import build_parser; build_parser(); "
              f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert run.stdout.strip() == ""
