"""The modern GPT: the same GPT-2 sizes and vocabulary, with the architecture changes the NanoGPT speedrun and its
successors found to buy quality per token. Each change is a switch of `ModernConfig`, so the ablation table is
one flag each (`--arch name=value,...`); with every switch off, what remains is GPT-2 without its biases.

Switch (default)     what it does (source of the idea)
rotary (1)           rotary position embedding on q and k instead of learned absolute positions (Su et al. 2021,
                     RoFormer)
qk_norm (1)          RMS-normalise q and k per head before the dot product (Dehghani et al. 2023; Wortsman et al.
                     2023): bounded attention logits, stable at high learning rates
relu2 (1)            MLP activation ReLU(x)^2 instead of GELU (So et al. 2021, Primer)
rmsnorm (1)          parameter-free RMSNorm (no gain, no bias) instead of LayerNorm (Zhang & Sennrich 2019)
bias (0)             biases in the linear layers (GPT-2 has them)
zero_init (1)        output projections of attention and MLP, and the head, start at zero: every block begins as
                     the identity (muP-style zero init, as the speedrun does)
tie (0)              tie the head to the token embedding (GPT-2 does; untied heads learn faster with Muon/Adam)
softcap (15)         logits -> cap * tanh(logits / cap), bounding the head's output (Gemma 2); 0 = off
value_embeds (3)     extra token embeddings added to the values of the first and last k layers (k <= L/2), each shared
                     by layer i and layer L-k+i, with learned mixing scalars (the speedrun's value embeddings, after
                     Zhou et al. 2024's value residual learning)
unet (1)             U-net-style skips: the outputs of the first half of the blocks are added, with learned
                     weights, to the inputs of the second half, in reverse order
doc_mask (0)         document-aware attention: a position attends only to its own document (documents start at
                     each EOT), not to the unrelated text packed before it in the row; FlexAttention block masks on
                     CUDA, so fully masked blocks are skipped (the speedrun; Zhao et al. 2024 on intra-document masking)
window (0)           a sliding-window schedule: attention sees only the last `window` tokens at the start of training,
                     growing linearly to the whole sequence (-t) by the end (the speedrun's window warmup, its
                     successor to sequence-length warmup; with FlexAttention the blocks outside it are skipped);
                     0 = the whole sequence throughout
fp8_head (0)         the head's matmuls (forward and both backward) in FP8 with per-tensor scales, on GPUs with FP8
                     tensor cores (llmpy.kernels.fp8); elsewhere the ordinary matmul

The vocabulary stays padded to 50304 (the padded rows are never predicted), the output is the final hidden state
(a norm of the residual stream), and `lm_head` + `logits()` follow GPT's contract (see llmpy.families).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from llmpy import attention
from llmpy.attention import AttentionMask, attention_mask, causal_attention, document_index, flex_attention_enabled
from llmpy.config import ModelConfig
from llmpy.errors import LlmpyError
from llmpy.gpt2 import EOT_TOKEN
from llmpy.kernels import fp8 as fp8_kernels
from llmpy.kernels.fp8 import fp8_linear, fp8_shapes_fit


@dataclass(frozen=True)
class ModernConfig(ModelConfig):
    """A GPT-2 shape plus the architecture switches (see the module docstring); 0/1 ints so they parse from flags."""

    rotary: int = 1
    rope_base: int = 10000
    qk_norm: int = 1
    relu2: int = 1
    rmsnorm: int = 1
    bias: int = 0
    zero_init: int = 1
    tie: int = 0
    softcap: float = 15.0
    value_embeds: int = 3
    unet: int = 1
    doc_mask: int = 0
    window: int = 0
    fp8_head: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("rotary", "qk_norm", "relu2", "rmsnorm", "bias", "zero_init", "tie", "unet", "doc_mask", "fp8_head"):
            if getattr(self, name) not in (0, 1):
                raise LlmpyError(f"--arch {name} must be 0 or 1, got {getattr(self, name)}")
        if self.softcap < 0 or not math.isfinite(self.softcap):
            raise LlmpyError(f"--arch softcap must be >= 0 (0 = off), got {self.softcap}")
        if self.value_embeds < 0:
            raise LlmpyError(f"--arch value_embeds must be >= 0, got {self.value_embeds}")
        # a table serves a first and a last layer: at most L/2 of them (the config says what the model has)
        object.__setattr__(self, "value_embeds", min(self.value_embeds, self.n_layer // 2))
        if not 0 <= self.window <= self.block_size:
            raise LlmpyError(f"--arch window must be 0 (off) to {self.block_size} tokens, got {self.window}")
        if self.rope_base <= 0:
            raise LlmpyError(f"--arch rope_base must be positive, got {self.rope_base}")
        if self.rotary and (self.n_embd // self.n_head) % 2:
            raise LlmpyError(f"rotary positions need an even head size, got {self.n_embd // self.n_head}")

    SWITCHES = ("rotary", "rope_base", "qk_norm", "relu2", "rmsnorm", "bias", "zero_init", "tie", "softcap",
                "value_embeds", "unet", "doc_mask", "window", "fp8_head")

    def with_arch(self, arch: str) -> "ModernConfig":
        """This config with `--arch` overrides applied: "name=value,name=value" over SWITCHES ("" = none)."""
        changes = {}
        for item in filter(None, (part.strip() for part in arch.split(","))):
            name, sep, value = item.partition("=")
            name = name.strip().replace("-", "_")
            if not sep or name not in self.SWITCHES:
                raise LlmpyError(f"--arch {item!r}: expected name=value with name one of {', '.join(self.SWITCHES)}")
            if name in changes:
                raise LlmpyError(f"--arch {arch!r}: {name} is given twice")
            kind = type(getattr(self, name))
            try:
                number = float(value)
            except ValueError:
                raise LlmpyError(f"--arch {item!r}: {value!r} is not a number") from None
            if kind is int and not number.is_integer():
                raise LlmpyError(f"--arch {item!r}: {name} takes a whole number, got {value!r}")
            changes[name] = kind(number)
        return dataclasses.replace(self, **changes)


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """x / rms(x) over the last dimension, without a gain (eps as float32's machine epsilon)."""
    return F.rms_norm(x, (x.size(-1),))


class Norm(nn.Module):
    """The block's normalisation: parameter-free RMSNorm, or LayerNorm (with gain and bias) when rmsnorm=0."""

    def __init__(self, config: ModernConfig):
        super().__init__()
        self.layer_norm = None if config.rmsnorm else nn.LayerNorm(config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x) if self.layer_norm is None else self.layer_norm(x)


class Rotary(nn.Module):
    """Rotary position embedding: channel pair (i, i + hs/2) of the vector at position m is rotated by the angle
    m * base^(-2i/hs). Then q_m . k_n depends on the positions only through m - n."""

    def __init__(self, head_dim: int, max_positions: int, base: float):
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_dim // 2, dtype=torch.float64) * 2 / head_dim)  # (hs/2,)
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float64), inv_freq)  # (T_max, hs/2)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """x (B, T, nh, hs) at positions start..start+T-1 -> the rotated x, same shape and dtype."""
        T = x.size(1)
        cos = self.cos[start:start + T, None, :].to(x.dtype)  # (T, 1, hs/2), broadcast over heads
        sin = self.sin[start:start + T, None, :].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class ModernAttention(nn.Module):
    """Causal self-attention with separate q, k, v projections, optional QK-norm, rotary positions and a value
    embedding mixed into v (for the layers that have one)."""

    def __init__(self, config: ModernConfig, rotary: Rotary | None, has_value_embed: bool):
        super().__init__()
        C, bias = config.n_embd, bool(config.bias)
        self.n_head, self.qk_norm, self.rotary = config.n_head, bool(config.qk_norm), rotary
        self.c_q, self.c_k, self.c_v = (nn.Linear(C, C, bias=bias) for _ in range(3))
        self.c_proj = nn.Linear(C, C, bias=bias)
        self.c_proj.residual_projection = True
        # v <- a * v + b * value_embedding(tokens): (1, 0.5) at the start, learned
        self.value_mix = nn.Parameter(torch.tensor([1.0, 0.5])) if has_value_embed else None

    def forward(self, x: torch.Tensor, value_embed: torch.Tensor | None, start: int, kv_cache=None,
                mask: AttentionMask | None = None) -> torch.Tensor:
        B, T, C = x.shape
        shape = (B, T, self.n_head, C // self.n_head)
        q, k, v = self.c_q(x).view(shape), self.c_k(x).view(shape), self.c_v(x).view(shape)  # (B, T, nh, hs)
        if self.value_mix is not None:
            v = self.value_mix[0] * v + self.value_mix[1] * value_embed.view(shape)
        if self.qk_norm:
            q, k = rms_norm(q), rms_norm(k)
        if self.rotary is not None:
            q, k = self.rotary(q, start), self.rotary(k, start)
        y = causal_attention(q, k, v, kv_cache, mask)  # (B, T, nh, hs)
        return self.c_proj(y.reshape(B, T, C))


class ModernMLP(nn.Module):
    """C -> 4C -> ReLU^2 (or GELU) -> C."""

    def __init__(self, config: ModernConfig):
        super().__init__()
        C, bias = config.n_embd, bool(config.bias)
        self.relu2 = bool(config.relu2)
        self.c_fc = nn.Linear(C, 4 * C, bias=bias)
        self.c_proj = nn.Linear(4 * C, C, bias=bias)
        self.c_proj.residual_projection = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)  # (B, T, 4C)
        return self.c_proj(F.relu(h).square() if self.relu2 else F.gelu(h, approximate="tanh"))


class ModernBlock(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ModernConfig, rotary: Rotary | None, has_value_embed: bool, recompute: int):
        super().__init__()
        self.norm_1, self.norm_2 = Norm(config), Norm(config)
        self.attn = ModernAttention(config, rotary, has_value_embed)
        self.mlp = ModernMLP(config)
        self.recompute = recompute

    def forward(self, x: torch.Tensor, value_embed, start: int, kv_cache=None, mask=None) -> torch.Tensor:
        if self.recompute >= 3 and kv_cache is None and torch.is_grad_enabled():  # -r 3: keep only the input
            return checkpoint(self._forward, x, value_embed, start, None, mask, use_reentrant=False)
        return self._forward(x, value_embed, start, kv_cache, mask)

    def _forward(self, x, value_embed, start: int, kv_cache=None, mask=None) -> torch.Tensor:
        x = x + self.attn(self.norm_1(x), value_embed, start, kv_cache, mask)
        return x + self.mlp(self.norm_2(x))


class SoftcapHead(nn.Linear):
    """The output head with logit soft-capping: cap * tanh(W h / cap) (cap 0: a plain linear head); `fp8`: its
    matmul in FP8 where the GPU has FP8 tensor cores."""

    def __init__(self, in_features: int, out_features: int, cap: float, fp8: bool = False):
        super().__init__(in_features, out_features, bias=False)
        self.cap, self.fp8 = cap, fp8
        if fp8:
            fp8_kernels.fp8_matmul_available  # made now (see llmpy.kernels.fp8.__getattr__), not while being compiled

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if (self.fp8 and hidden.is_cuda and fp8_kernels.fp8_matmul_available(hidden.device.index or 0)
                and fp8_shapes_fit(hidden, self.weight)):
            logits = fp8_linear(hidden, self.weight)
        else:
            logits = super().forward(hidden)
        if not self.cap:
            return logits
        wide = torch.promote_types(logits.dtype, torch.float32)  # at least fp32: tanh saturates coarsely in bf16
        return self.cap * torch.tanh(logits.to(wide) / self.cap)


class ModernGPT(nn.Module):
    """Token embedding (+ learned positions when rotary=0), n_layer ModernBlocks with optional U-net skips and
    value embeddings, a final norm, and an untied (or tied) soft-capped head. `recompute`: 3 recomputes whole blocks
    in the backward pass; 0-2 keep every activation (the selective levels name GPT-2's GELU and LayerNorm)."""

    config_class = ModernConfig

    def __init__(self, config: ModelConfig, recompute: int = 0):
        super().__init__()
        if not isinstance(config, ModernConfig):
            config = ModernConfig(**config.to_dict())
        self.config = config
        L, C, V = config.n_layer, config.n_embd, config.padded_vocab_size
        rotary = Rotary(C // config.n_head, config.block_size, config.rope_base) if config.rotary else None
        k = self.n_value_embeds = config.value_embeds  # <= L/2: a table serves a first and a last layer
        has_ve = [i < k or i >= L - k for i in range(L)] if k else [False] * L
        modules = dict(
            wte=nn.Embedding(V, C),
            h=nn.ModuleList([ModernBlock(config, rotary, has_ve[i], recompute) for i in range(L)]),
            norm_f=Norm(config),
        )
        if not config.rotary:
            modules["wpe"] = nn.Embedding(config.block_size, C)
        if k:
            modules["value_embeds"] = nn.ModuleList([nn.Embedding(V, C) for _ in range(k)])
        self.transformer = nn.ModuleDict(modules)
        self.rotary = rotary
        # decoder block L - 1 - i gets encoder block i's output (i < L/2), weighted: 1 at the start, learned
        self.skip_weights = nn.Parameter(torch.ones(L // 2)) if config.unet else None
        self.lm_head = SoftcapHead(C, V, config.softcap, bool(config.fp8_head))
        # the sliding window now, in tokens: set by training's schedule_window (a buffer, so compiled code reads the
        # new value), else the whole context, where the schedule ends (eval, sample, a loaded model)
        self.register_buffer("attention_window", torch.tensor(config.block_size), persistent=False)
        if config.tie:
            self.lm_head.weight = self.transformer.wte.weight
        if config.doc_mask or config.window:
            attention.flex_attention_mask  # made now (see llmpy.attention.__getattr__), not while being compiled
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Linear weights N(0, (0.5/sqrt(fan_in))^2); output projections and the untied head zero (zero_init=1; else
        GPT-2's 0.02/sqrt(2L) and 0.02); embeddings N(0, 1), as their outputs are normalised (0.02 when tied to
        the head); zero biases."""
        zero = bool(self.config.zero_init)
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for module in self.modules():
            if isinstance(module, nn.Linear) and module is not self.lm_head:
                if getattr(module, "residual_projection", False):
                    nn.init.zeros_(module.weight) if zero else nn.init.normal_(module.weight, std=residual_std)
                else:
                    nn.init.normal_(module.weight, std=0.5 / math.sqrt(module.in_features))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):  # a tied table is also the head: GPT-2's 0.02
                tied = self.config.tie and module is self.transformer.wte
                nn.init.normal_(module.weight, std=0.02 if tied else 1.0)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if not self.config.tie:
            nn.init.zeros_(self.lm_head.weight) if zero else nn.init.normal_(self.lm_head.weight, std=0.02)
        self.transformer.wte.weight[self.config.vocab_size:].zero_()  # padded rows: never a real token

    def forward(self, idx: torch.Tensor, kv_cache=None, output=None):
        """idx (B, T) token ids -> final hidden states (B, T, C), or `output(hidden)` (see GPT.forward)."""
        B, T = idx.shape
        L, k = self.config.n_layer, self.n_value_embeds
        start = kv_cache.length if kv_cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence length {start + T} exceeds block_size {self.config.block_size}")
        x = self.transformer.wte(idx)  # (B, T, C)
        if not self.config.rotary:
            x = x + self.transformer.wpe(torch.arange(start, start + T, device=idx.device))
        x = rms_norm(x)
        tables = [table(idx) for table in self.transformer.value_embeds] if k else []
        value_embeds = tables + [None] * (L - 2 * k) + tables if k else [None] * L
        if torch.is_autocast_enabled(idx.device.type):
            dtype = torch.get_autocast_dtype(idx.device.type)
            x = x.to(dtype)
            value_embeds = [None if ve is None else ve.to(dtype) for ve in value_embeds]
        mask = None
        window = self.attention_window if self.config.window else None
        flex = flex_attention_enabled() and idx.is_cuda and torch.compiler.is_compiling() and kv_cache is None
        if (self.config.doc_mask or self.config.window) and flex:
            mask = attention.flex_attention_mask(idx, EOT_TOKEN if self.config.doc_mask else None, window)
        elif self.config.doc_mask or self.config.window:
            documents = document_index(idx, EOT_TOKEN) if self.config.doc_mask else None
            if documents is not None and kv_cache is not None:  # numbered on from the cached positions
                documents = kv_cache.extend_documents(documents)
            mask = attention_mask(start + T, T, documents, window, idx.device)
        skips = []
        for layer, block in enumerate(self.transformer.h):
            if self.skip_weights is not None and layer >= L - L // 2:  # decoder half: the mirrored encoder output
                x = x + self.skip_weights[L - 1 - layer].to(x.dtype) * skips.pop()
            x = block(x, value_embeds[layer], start, kv_cache.layer(layer) if kv_cache is not None else None, mask)
            if self.skip_weights is not None and layer < L // 2:
                skips.append(x)
        if kv_cache is not None:
            kv_cache.advance(T)
        hidden = self.transformer.norm_f(x)
        return hidden if output is None else output(hidden)

    def schedule_window(self, progress: float, context: int) -> int:
        """Set the sliding window for training progress in [0, 1] (step / steps) and sequence length `context`:
        `window` tokens at 0, growing linearly to the whole context at 1. Returns it (`context` when off)."""
        start = min(self.config.window, context)
        if not start:
            return context
        window = round(start + (context - start) * min(max(progress, 0.0), 1.0))
        self.attention_window.fill_(window)
        return window

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, T, C) -> soft-capped logits over the real vocabulary (B, T, vocab_size)."""
        return self.lm_head(hidden)[..., : self.config.vocab_size]
