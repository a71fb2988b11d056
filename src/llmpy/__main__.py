"""`python -m llmpy` (also what `torchrun -m llmpy` runs)."""

from llmpy.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
