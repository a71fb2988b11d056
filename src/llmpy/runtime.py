"""Where and in what precision a run executes: device choice, autocast, TF32, seeding."""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass

import numpy as np
import torch

from llmpy.errors import LlmpyError


@dataclass(frozen=True)
class Runtime:
    """The device and the precision every component of a run agrees on."""

    device: torch.device
    precision: str  # "bf16" (autocast, fp32 master weights) or "fp32"
    attention: str = "auto"  # SDPA backend preference: auto | flash | cudnn | efficient | math

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward pass's context: bf16 autocast (a no-op in fp32) and the preferred attention kernel."""
        stack = contextlib.ExitStack()
        if self.precision == "bf16":
            stack.enter_context(torch.autocast(device_type=self.device.type, dtype=torch.bfloat16))
        if self.attention != "auto":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            first = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                     "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[self.attention]
            # the chosen kernel first; the others stay as fallbacks for shapes it cannot take (e.g. KV-cache decode)
            order = [first] + [b for b in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                                           SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH) if b != first]
            stack.enter_context(sdpa_kernel(order, set_priority=True))
        return stack

    def synchronize(self) -> None:
        if self.is_cuda:
            torch.cuda.synchronize(self.device)

    def device_name(self) -> str:
        return torch.cuda.get_device_name(self.device) if self.is_cuda else "cpu"


ATTENTION_BACKENDS = ("auto", "flash", "cudnn", "efficient", "math")


def select_runtime(device: str = "auto", dtype: str = "auto", tf32: bool = True, local_rank: int = 0,
                   attention: str = "auto") -> Runtime:
    """Resolve --device/--dtype: auto picks CUDA when present (GPU `local_rank` under torchrun), bf16 on CUDA."""
    if attention not in ATTENTION_BACKENDS:
        raise LlmpyError(f"--attention must be one of {', '.join(ATTENTION_BACKENDS)}, got {attention!r}")
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
        torch.cuda.set_device(dev)
    if dtype == "auto":
        dtype = "bf16" if dev.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if dtype not in ("bf16", "fp32"):
        raise LlmpyError(f"--dtype must be auto, bf16 or fp32, got {dtype!r}")
    # TF32 for the fp32 matmuls that remain (llm.c's -f 1); harmless on CPU.
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    return Runtime(device=dev, precision=dtype, attention=attention)


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
