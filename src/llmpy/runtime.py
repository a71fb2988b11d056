"""Where and in what precision a run executes: device choice, autocast, TF32, seeding."""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass

import numpy as np
import torch

from llmpy.attention import activate_attention, backend_context
from llmpy.errors import LlmpyError


@dataclass(frozen=True)
class Runtime:
    """The device and the precision every component of a run agrees on."""

    device: torch.device
    precision: str  # "bf16" (autocast, fp32 master weights) or "fp32"
    attention: str = "auto"  # SDPA kernel preference, see llmpy.config.ATTENTION_BACKENDS

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward pass's context: bf16 autocast (a no-op in fp32) and the preferred attention kernel."""
        stack = contextlib.ExitStack()
        if self.precision == "bf16":
            stack.enter_context(torch.autocast(device_type=self.device.type, dtype=torch.bfloat16))
        stack.enter_context(backend_context(self.attention))
        return stack

    def device_name(self) -> str:
        return torch.cuda.get_device_name(self.device) if self.is_cuda else "cpu"

    def activate(self, tf32: bool) -> None:
        """Make this the process's current device and set TF32 for the fp32 matmuls that remain (llm.c's -f 1).
        Process-wide settings by nature, so they are made here, once, by the command that owns the process."""
        if self.is_cuda:
            torch.cuda.set_device(self.device)
        activate_attention(self.device, self.attention)
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.set_float32_matmul_precision("high" if tf32 else "highest")


def select_runtime(device: str = "auto", dtype: str = "auto", local_rank: int = 0, attention: str = "auto") -> Runtime:
    """Resolve --device/--dtype (values checked by the caller's flags): auto picks CUDA when present (GPU
    `local_rank` under torchrun), bf16 on CUDA. Changes nothing: see Runtime.activate."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise LlmpyError(f"--device {device!r} is not a device torch knows ({exc})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise LlmpyError(f"--device {device}: CUDA is not available in this torch build / machine")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
    if dtype == "auto":
        dtype = "bf16" if dev.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if attention == "auto":
        attention = auto_attention(dev, dtype)
    return Runtime(device=dev, precision=dtype, attention=attention)


def auto_attention(device: torch.device, precision: str) -> str:
    """--attention auto: cudnn+fa4 in bf16 on a Hopper GPU (compute capability 9.x, where a step measured 2.6-3.6%
    faster than with cuDNN alone, benchmarks/RESULTS.md) when the flash-attn-4 package is installed; otherwise
    "auto", PyTorch's own choice per call. A package that is there but does not import, or whose kernels fail a
    small probe (llmpy.kernels.fa4.probe, which also compiles them), is warned about and left out."""
    import importlib.util
    import warnings

    from llmpy.kernels import fa4

    if device.type != "cuda" or precision != "bf16" or torch.cuda.get_device_capability(device)[0] != 9:
        return "auto"
    try:
        if importlib.util.find_spec("flash_attn") is None:
            return "auto"
        fa4.load()
        fa4.probe(device)
    except Exception as exc:  # flash-attn 2 (no flash_attn.cute), or a flash-attn-4 that does not match this torch
        warnings.warn(f"--attention auto: flash_attn is installed but FlashAttention-4 did not load or run "
                      f"({type(exc).__name__}: {exc}); attention stays with PyTorch's choice", stacklevel=2)
        return "auto"
    return "cudnn+fa4"


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) so a run is repeatable."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every RNG a run touches, in types `torch.load(weights_only=True)` accepts."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(), "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` captured (CUDA only when both then and now have it)."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
