"""argparse value types that check a number's range as they parse it, so a value no command can use is refused in
argparse's one line (`llmpy: error: argument --steps: must be a positive integer, got '0'`), before anything runs.
Training flags are range-checked by TrainConfig.validate instead, where a --config file's values are checked too."""

from __future__ import annotations

import argparse
import math
from typing import Callable

SEED_LIMIT = 2**32  # numpy's generators take 32-bit seeds: every llmpy seed is in [0, 2**32)


def _number(kind: type, wanted: str, ok: Callable[[float], bool]) -> Callable[[str], int | float]:
    """An argparse type: `kind(text)` when `ok` holds for it, else an ArgumentTypeError saying `wanted`."""
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except (ValueError, OverflowError):  # int('1.5'), float('x'), a 5,000-digit int
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
        return value

    return parse


positive_int = _number(int, "a positive integer", lambda v: v >= 1)
non_negative_int = _number(int, "an integer >= 0", lambda v: v >= 0)
seed_int = _number(int, "an integer in [0, 2**32)", lambda v: 0 <= v < SEED_LIMIT)
positive_float = _number(float, "a finite number > 0", lambda v: 0 < v < math.inf)
non_negative_float = _number(float, "a finite number >= 0", lambda v: 0 <= v < math.inf)
fraction = _number(float, "a fraction in (0, 1]", lambda v: 0 < v <= 1)  # NaN fails every comparison
