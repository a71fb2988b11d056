"""Compare the train and val losses of two runs (their metrics.jsonl): how many are bitwise equal, and the largest
difference. Used by the device-call scripts that check an exact resume:

    python3 benchmarks/compare_losses.py RUN_A RUN_B
"""

import json
import sys


def losses(run: str) -> dict:
    """(kind, step) -> loss of a run directory's train and val records."""
    out = {}
    with open(f"{run}/metrics.jsonl") as handle:
        for line in handle:
            record = json.loads(line)
            if record["kind"] in ("train", "val"):
                out[(record["kind"], record["step"])] = record["loss"]
    return out


def main(first: str, second: str) -> str:
    a, b = losses(first), losses(second)
    same = sum(a[key] == b.get(key) for key in a)
    largest = max((abs(a[key] - b[key]) for key in a if key in b), default=float("nan"))
    return f"{same}/{len(a)} losses bitwise equal; max abs difference {largest:.3g}"


if __name__ == "__main__":
    print(main(*sys.argv[1:3]))
