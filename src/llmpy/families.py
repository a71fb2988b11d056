"""Model families by name: a checkpoint records its family, and a recipe names one. A new architecture is a new
entry here (its module takes its config and the recompute level); the loop, the checkpoints and the CLI stay as
they are."""

from __future__ import annotations

import torch.nn as nn

from llmpy.config import ModelConfig
from llmpy.errors import LlmpyError
from llmpy.model import GPT

MODEL_FAMILIES: dict[str, type[nn.Module]] = {"gpt2": GPT}
DEFAULT_FAMILY = "gpt2"  # checkpoints written before families existed are GPT-2


def build_model(config: ModelConfig, family: str = DEFAULT_FAMILY, recompute: int = 0) -> nn.Module:
    """A freshly initialised model of `family` with `config`'s shape."""
    if family not in MODEL_FAMILIES:
        raise LlmpyError(f"unknown model family {family!r}: this llmpy knows {', '.join(MODEL_FAMILIES)}")
    return MODEL_FAMILIES[family](config, recompute=recompute)


def family_of(model: nn.Module) -> str:
    """The registered family name of `model`'s class."""
    for name, cls in MODEL_FAMILIES.items():
        if isinstance(model, cls):  # FSDP makes a subclass of the model class
            return name
    raise LlmpyError(f"{type(model).__name__} is not a registered model family ({', '.join(MODEL_FAMILIES)})")
