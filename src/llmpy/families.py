"""Model families by name: a checkpoint records its family, and a recipe names one. A new architecture is a new
entry here (its module takes its config and the recompute level); the loop, the checkpoints and the CLI stay as
they are."""

from __future__ import annotations

import torch.nn as nn

from llmpy.config import ModelConfig
from llmpy.errors import LlmpyError
from llmpy.model import GPT
from llmpy.modern import ModernConfig, ModernGPT

# family -> (model class, its config class): GPT-2 as released, and the modern architecture of the modern recipe
MODEL_FAMILIES: dict[str, tuple[type[nn.Module], type[ModelConfig]]] = {
    "gpt2": (GPT, ModelConfig),
    "modern": (ModernGPT, ModernConfig),
}
DEFAULT_FAMILY = "gpt2"  # checkpoints written before families existed are GPT-2


def _entry(family: str) -> tuple[type[nn.Module], type[ModelConfig]]:
    if family not in MODEL_FAMILIES:
        raise LlmpyError(f"unknown model family {family!r}: this llmpy knows {', '.join(MODEL_FAMILIES)}")
    return MODEL_FAMILIES[family]


def model_config(family: str, descriptor: str, arch: str = "") -> ModelConfig:
    """The config of a fresh `family` model of size `descriptor` (d12, gpt2-medium, ...), with `--arch` switches
    (the modern family's; any for GPT-2 is refused)."""
    config = _entry(family)[1].from_descriptor(descriptor)
    if arch:
        if not hasattr(config, "with_arch"):
            raise LlmpyError(f"--arch {arch!r}: the {family} family has no architecture switches (use --family modern)")
        config = config.with_arch(arch)
    return config


def config_from_dict(family: str, values: dict) -> ModelConfig:
    """A saved model config (checkpoint's "model_config") as its family's config class."""
    return _entry(family)[1].from_dict(values)


def build_model(config: ModelConfig, family: str = DEFAULT_FAMILY, recompute: int = 0) -> nn.Module:
    """A freshly initialised model of `family` with `config`'s shape."""
    return _entry(family)[0](config, recompute=recompute)


def family_of(model: nn.Module) -> str:
    """The registered family name of `model`'s class."""
    for name, (cls, _) in MODEL_FAMILIES.items():
        if isinstance(model, cls):  # FSDP makes a subclass of the model class
            return name
    raise LlmpyError(f"{type(model).__name__} is not a registered model family ({', '.join(MODEL_FAMILIES)})")


def is_tied(config: ModelConfig) -> bool:
    """Whether the head shares the token embedding's weight (GPT-2 always; the modern family when tie=1), so that
    checkpoints store it once, as `transformer.wte.weight`."""
    return bool(getattr(config, "tie", 1))


def require_gpt2(model: nn.Module, format_name: str, target) -> None:
    """Export formats that hold only GPT-2's architecture (Hugging Face GPT-2, llm.c) refuse other families."""
    family = family_of(model)
    if family != "gpt2":
        raise LlmpyError(f"{target}: the {format_name} format holds only GPT-2's architecture, and this is a {family} "
                         f"model (rotary positions, untied head, ...); export it with --to hf (llmpy's own Hugging Face "
                         f"model) or --to llmpy")
