"""llmpy: reproduce the GPT-2 family from scratch in PyTorch."""

__version__ = "0.1.0"
