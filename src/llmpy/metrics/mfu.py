"""Model FLOPs utilisation: llm.c's FLOPs-per-token count against a table of GPU peak throughputs."""

from __future__ import annotations

import re

from llmpy.config import ModelConfig
from llmpy.errors import LlmpyError

# Dense (no 2:4 sparsity) bf16 tensor-core peaks in FLOP/s with fp32 accumulation, from NVIDIA datasheets (which
# quote sparse numbers: these are half of those). Keys are matched as whole words of torch.cuda.get_device_name()
# (so "A40" is not found in "RTX A4000", nor "H200" in "GH200"), longest key first (so "H100 PCIe" beats "H100").
# TF32 is half the bf16 rate on all of them.
_PEAK_BF16: dict[str, float] = {
    "B200": 2250e12,
    "GB200": 2500e12,
    "H100": 989e12,  # SXM5, reported as "NVIDIA H100 80GB HBM3"
    "H100 PCIE": 756e12,
    "H100 NVL": 835e12,
    "H800": 989e12,
    "H200": 989e12,
    "H200 NVL": 835e12,
    "GH200": 989e12,
    "A100": 312e12,  # SXM4 and PCIe alike
    "A800": 312e12,
    "A40": 149.7e12,
    "A10": 125e12,
    # AWS's A10 variant: same GA102 chip, but tensor cores at the GeForce rate (half-speed fp32 accumulate) -> ~70
    "A10G": 70e12,
    "L4": 121e12,
    "L40": 181e12,
    "L40S": 362e12,
    # GeForce cards: the bf16-with-fp32-accumulate rate (the fp16-accumulate rate is twice this, but unused here)
    "RTX 3090": 71e12,
    "RTX 3090 TI": 80e12,
    "RTX 4090": 165e12,
}
_TENSOR_CORE_FRACTION = {"bf16": 1.0, "fp16": 1.0, "fp32": 0.5, "tf32": 0.5}  # fp32 runs use TF32 tensor cores


def parameter_count(cfg: ModelConfig) -> int:
    """Parameters as llm.c counts them: padded wte, wpe, L blocks of 12C^2 + 13C, final LayerNorm; tied head once."""
    C, L = cfg.n_embd, cfg.n_layer
    return cfg.padded_vocab_size * C + cfg.block_size * C + L * (12 * C * C + 13 * C) + 2 * C


def matmul_parameters(model) -> int:
    """N for `training_flops_per_token`: llm.c counts every GPT-2 parameter (the tied embedding is also the head's
    matmul). An untied model (the modern family) counts its head but not its lookup tables (token, position and
    value embeddings), which cost no matmul FLOPs."""
    import torch.nn as nn

    total = sum(p.numel() for p in model.parameters())
    if model.lm_head.weight is model.transformer.wte.weight:
        return total
    return total - sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))


def training_flops_per_token(cfg: ModelConfig, seq_len: int, num_params: int | None = None) -> float:
    """FLOPs to train on one token, llm.c's count: 6N + 6LCT.

    N is `parameter_count(cfg)` unless given (124,475,904 for d12). 6N is forward (2N) plus backward (4N) through
    every weight. 6LCT is attention's scores and weighted sum: the PaLM appendix counts 12LCT, halved here because
    the causal mask skips half of it. For d12 at T=1024 this is ~0.80 GFLOP/token; nanoGPT's `estimate_mfu` uses
    6N + 12LCT (~0.86 GFLOP/token), so its MFU reads ~7% higher for the same run.
    """
    n = parameter_count(cfg) if num_params is None else num_params
    return 6.0 * n + 6.0 * cfg.n_layer * cfg.n_embd * seq_len


def peak_flops(device_name: str, precision: str = "bf16") -> float | None:
    """Dense peak FLOP/s of the GPU named `device_name` at `precision` ("fp32" means TF32); None if unknown or a CPU."""
    if precision not in _TENSOR_CORE_FRACTION:
        raise LlmpyError(f"peak FLOPs: unknown precision {precision!r}, use one of {', '.join(_TENSOR_CORE_FRACTION)}")
    name = device_name.upper()
    for key in sorted(_PEAK_BF16, key=len, reverse=True):
        if re.search(rf"(?<![A-Z0-9]){re.escape(key)}(?![A-Z0-9])", name):
            return _PEAK_BF16[key] * _TENSOR_CORE_FRACTION[precision]
    return None  # no MFU is better than a wrong one


def known_gpus() -> list[str]:
    """The GPU names of the peak table, as `peak_flops` matches them."""
    return list(_PEAK_BF16)


def mfu(tokens_per_sec: float, flops_per_token: float, peak: float | None) -> float | None:
    """Achieved FLOP/s as a fraction of `peak`; None without a known peak."""
    if not peak:
        return None
    return tokens_per_sec * flops_per_token / peak
