"""`python -m llmpy` (also what `torchrun -m llmpy` runs)."""

from llmpy.cli import entry

if __name__ == "__main__":
    entry()
