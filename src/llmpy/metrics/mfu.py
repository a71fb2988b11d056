"""Model FLOPs utilisation: llm.c's FLOPs-per-token count against a table of GPU peak throughputs."""

from __future__ import annotations

from llmpy.config import ModelConfig

# Dense (no sparsity) tensor-core peaks in FLOP/s for bf16, from the vendors' datasheets. Matched by substring
# against torch.cuda.get_device_name(); more specific names first. TF32 ("fp32" runs) is half the bf16 rate.
_PEAK_BF16: list[tuple[str, float]] = [
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM5, "NVIDIA H100 80GB HBM3"
    ("H800", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("A10G", 125e12),  # AWS's A10 variant, reported by the driver as "NVIDIA A10G"
    ("A10", 125e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
]


def parameter_count(cfg: ModelConfig) -> int:
    """Parameters as llm.c counts them: padded wte, wpe, L blocks of 12C^2 + 13C, final LayerNorm (tied head once)."""
    C, L = cfg.n_embd, cfg.n_layer
    return cfg.padded_vocab_size * C + cfg.block_size * C + L * (12 * C * C + 13 * C) + 2 * C


def training_flops_per_token(cfg: ModelConfig, seq_len: int, num_params: int | None = None) -> float:
    """FLOPs to train on one token, llm.c's formula: 6N + 6LCT.

    6N: forward (2N) and backward (4N) through every weight. 6LCT: attention scores and weighted sum, 12LCT in the
    PaLM appendix halved because the causal mask skips half the work. (nanoGPT counts 6N + 12LCT, about
    0.86 GFLOP per token for GPT-2 124M at T=1024, against llm.c's 0.80.)
    """
    n = parameter_count(cfg) if num_params is None else num_params
    return 6.0 * n + 6.0 * cfg.n_layer * cfg.n_embd * seq_len


def peak_flops(device_name: str, precision: str = "bf16") -> float | None:
    """Dense peak FLOP/s of a GPU for `precision` (bf16, or fp32 meaning TF32); None when unknown (and for CPUs)."""
    for key, peak in _PEAK_BF16:
        if key in device_name:
            return peak if precision == "bf16" else peak / 2
    return None


def mfu(tokens_per_sec: float, flops_per_token: float, peak: float | None) -> float | None:
    """Achieved FLOP/s over peak, or None without a known peak."""
    if not peak:
        return None
    return tokens_per_sec * flops_per_token / peak
