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

The frontier's switches (the speedrun's 2025-2026 records; the code of each is a module of llmpy.frontier):
bigram (0)           a hashed (previous token, token) embedding table of bigram x padded-vocab rows, with the sign
                     trick, added to the first bigram_dim (0 = all) dims of the residual stream before the first block
                     and after every attention sub-layer, with learned weights (llmpy.frontier.bigram)
smear (0)            each token's embedding plus a gated copy of the previous token's (llmpy.frontier.smear)
sigmoid_cap (0)      logits -> cap * sigmoid((logits + 5) / 7.5) instead of the tanh softcap; 0 = off
                     (llmpy.frontier.logit_cap)
attn_gate (0)        a per-head sigmoid gate on each attention output, read from 12 dims of its input
ve_gate (0)          value embeddings added to v with a per-head gate read from the input and the embedding, instead of
                     the learned mixing scalars (layers with value embeddings only)
skip_gate (0)        each U-net skip times a per-token gate read from the input embedding (with unet=1 only)
                     (gates: llmpy.frontier.gates)
rope_dims (0)        rotary positions on the first rope_dims dims of each head only (0 = all); the rest are stationary
key_offset (0)       the keys' stationary dims taken from the previous position (llmpy.frontier.key_offset); needs
                     0 < rope_dims < head size
backout (0)          the residual stream after the first 2L/3 blocks, times a learned weight (0.5 at the start), is
                     subtracted before the final norm (the speedrun's "backout", 2025-10-04)
untie_at (0)         the head and the token embedding start equal (std 0.005) and train as one tied weight in the
                     head's Adam group until this fraction of the run, then apart (llmpy.frontier.untie); 0 = off

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
from llmpy.frontier.bigram import INITIAL_WEIGHT, BigramEmbedding, table_rows
from llmpy.frontier.gates import AttentionGate, SkipGate, ValueEmbedGate
from llmpy.frontier.key_offset import offset_keys
from llmpy.frontier.logit_cap import sigmoid_cap
from llmpy.frontier.smear import Smear
from llmpy.frontier.untie import HEAD_INIT_STD
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
    bigram: float = 0.0
    bigram_dim: int = 0
    smear: int = 0
    sigmoid_cap: float = 0.0
    attn_gate: int = 0
    ve_gate: int = 0
    skip_gate: int = 0
    rope_dims: int = 0
    key_offset: int = 0
    backout: int = 0
    untie_at: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("rotary", "qk_norm", "relu2", "rmsnorm", "bias", "zero_init", "tie", "unet", "doc_mask", "fp8_head", "smear",
                     "attn_gate", "ve_gate", "skip_gate", "key_offset", "backout"):
            if getattr(self, name) not in (0, 1):
                raise LlmpyError(f"--arch {name} must be 0 or 1, got {getattr(self, name)}")
        if self.softcap < 0 or not math.isfinite(self.softcap):
            raise LlmpyError(f"--arch softcap must be >= 0 (0 = off), got {self.softcap}")
        for name in ("sigmoid_cap", "bigram"):
            if getattr(self, name) < 0 or not math.isfinite(getattr(self, name)):
                raise LlmpyError(f"--arch {name} must be >= 0 (0 = off), got {getattr(self, name)}")
        if not 0 <= self.untie_at < 1 or (self.untie_at and self.tie):
            raise LlmpyError(f"--arch untie_at must be a fraction of the run in [0, 1) (0 = off), with tie=0; got "
                             f"untie_at={self.untie_at}, tie={self.tie}")
        if not 0 <= self.bigram_dim <= self.n_embd:
            raise LlmpyError(f"--arch bigram_dim must be 0 (the width) to n_embd={self.n_embd}, got {self.bigram_dim}")
        if self.value_embeds < 0:
            raise LlmpyError(f"--arch value_embeds must be >= 0, got {self.value_embeds}")
        # a table serves a first and a last layer: at most L/2 of them (the config says what the model has)
        object.__setattr__(self, "value_embeds", min(self.value_embeds, self.n_layer // 2))
        if not 0 <= self.window <= self.block_size:
            raise LlmpyError(f"--arch window must be 0 (off) to {self.block_size} tokens, got {self.window}")
        if self.rope_base <= 0:
            raise LlmpyError(f"--arch rope_base must be positive, got {self.rope_base}")
        head_dim = self.n_embd // self.n_head
        if self.rotary and head_dim % 2:
            raise LlmpyError(f"rotary positions need an even head size, got {head_dim}")
        if not (0 <= self.rope_dims <= head_dim and self.rope_dims % 2 == 0):
            raise LlmpyError(f"--arch rope_dims must be an even number of a head's {head_dim} dims (0 = all), got "
                             f"{self.rope_dims}")
        if self.key_offset and not (self.rotary and 0 < self.rope_dims < head_dim):
            raise LlmpyError("--arch key_offset=1 shifts the dims that rotary leaves stationary: it needs rotary=1 and "
                             f"rope_dims between 0 and the head's {head_dim} dims (e.g. rope_dims={head_dim // 2})")

    SWITCHES = ("rotary", "rope_base", "qk_norm", "relu2", "rmsnorm", "bias", "zero_init", "tie", "softcap",
                "value_embeds", "unet", "doc_mask", "window", "fp8_head",
                "bigram", "bigram_dim", "smear", "sigmoid_cap", "attn_gate", "ve_gate", "skip_gate", "rope_dims",
                "key_offset", "backout", "untie_at")

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
    """Rotary position embedding: channel pair (i, i + r/2) of the vector at position m is rotated by the angle
    m * base^(-2i/r), for the first r = `rotated` channels (default: all hs; the rest keep no position). Then
    q_m . k_n depends on the positions only through m - n."""

    def __init__(self, head_dim: int, max_positions: int, base: float, rotated: int = 0):
        super().__init__()
        self.rotated = rotated or head_dim
        inv_freq = base ** (-torch.arange(0, self.rotated // 2, dtype=torch.float64) * 2 / self.rotated)  # (r/2,)
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float64), inv_freq)  # (T_max, hs/2)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """x (B, T, nh, hs) at positions start..start+T-1 -> the rotated x, same shape and dtype."""
        T = x.size(1)
        cos = self.cos[start:start + T, None, :].to(x.dtype)  # (T, 1, r/2), broadcast over heads
        sin = self.sin[start:start + T, None, :].to(x.dtype)
        x1, x2 = x[..., : self.rotated].chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos, x[..., self.rotated:]), dim=-1)


class ModernAttention(nn.Module):
    """Causal self-attention with separate q, k, v projections, optional QK-norm, rotary positions, a value
    embedding mixed into v (for the layers that have one), and optionally a gate on each head's output."""

    def __init__(self, config: ModernConfig, rotary: Rotary | None, has_value_embed: bool):
        super().__init__()
        C, bias = config.n_embd, bool(config.bias)
        self.n_head, self.qk_norm, self.rotary = config.n_head, bool(config.qk_norm), rotary
        self.key_offset_from = rotary.rotated if config.key_offset else None  # stationary dims shifted (frontier)
        self.c_q, self.c_k, self.c_v = (nn.Linear(C, C, bias=bias) for _ in range(3))
        self.c_q.muon_row_blocks = self.c_k.muon_row_blocks = 2 * (C // config.n_head)  # Muon's qk_pairs: 2 heads
        self.c_proj = nn.Linear(C, C, bias=bias)
        self.c_proj.residual_projection = True
        # v <- a * v + b * value_embedding(tokens): (1, 0.5) at the start, learned; or v + gate * value_embedding
        self.value_mix = nn.Parameter(torch.tensor([1.0, 0.5])) if has_value_embed and not config.ve_gate else None
        self.value_gate = ValueEmbedGate(config.n_head, C) if has_value_embed and config.ve_gate else None
        self.output_gate = AttentionGate(config.n_head, C) if config.attn_gate else None

    def forward(self, x: torch.Tensor, value_embed: torch.Tensor | None, start: int, kv_cache=None,
                mask: AttentionMask | None = None) -> torch.Tensor:
        B, T, C = x.shape
        shape = (B, T, self.n_head, C // self.n_head)
        q, k, v = self.c_q(x).view(shape), self.c_k(x).view(shape), self.c_v(x).view(shape)  # (B, T, nh, hs)
        if self.value_mix is not None:
            v = self.value_mix[0] * v + self.value_mix[1] * value_embed.view(shape)
        elif self.value_gate is not None:
            v = self.value_gate(v, value_embed, x)
        if self.qk_norm:
            q, k = rms_norm(q), rms_norm(k)
        if self.rotary is not None:
            q, k = self.rotary(q, start), self.rotary(k, start)
        if self.key_offset_from is not None:
            previous = kv_cache.state.get("key_offset") if kv_cache is not None and start > 0 else None
            k, newest = offset_keys(k, self.key_offset_from, previous)
            if kv_cache is not None:
                kv_cache.state["key_offset"] = newest
        y = causal_attention(q, k, v, kv_cache, mask)  # (B, T, nh, hs)
        if self.output_gate is not None:
            y = self.output_gate(y, x)
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

    def forward(self, x: torch.Tensor, value_embed, start: int, kv_cache=None, mask=None,
                bigram: torch.Tensor | None = None) -> torch.Tensor:
        """`bigram`: what to add to the residual stream after the attention sub-layer (the weighted bigram
        embedding, llmpy.frontier.bigram), or None."""
        if self.recompute >= 3 and kv_cache is None and torch.is_grad_enabled():  # -r 3: keep only the input
            return checkpoint(self._forward, x, value_embed, start, None, mask, bigram, use_reentrant=False)
        return self._forward(x, value_embed, start, kv_cache, mask, bigram)

    def _forward(self, x, value_embed, start: int, kv_cache=None, mask=None, bigram=None) -> torch.Tensor:
        x = x + self.attn(self.norm_1(x), value_embed, start, kv_cache, mask)
        if bigram is not None:
            x = x + bigram
        return x + self.mlp(self.norm_2(x))


class SoftcapHead(nn.Linear):
    """The output head with logit soft-capping: cap * tanh(W h / cap) (cap 0: a plain linear head), or with
    `sigmoid_cap` > 0 the frontier's sigmoid_cap * sigmoid((W h + 5) / 7.5) (llmpy.frontier.logit_cap); `fp8`: its
    matmul in FP8 where the GPU has FP8 tensor cores."""

    def __init__(self, in_features: int, out_features: int, cap: float, fp8: bool = False, sigmoid_cap: float = 0.0):
        super().__init__(in_features, out_features, bias=False)
        self.cap, self.fp8, self.sigmoid_cap = cap, fp8, sigmoid_cap
        if fp8:
            fp8_kernels.fp8_matmul_available  # made now (see llmpy.kernels.fp8.__getattr__), not while being compiled

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if (self.fp8 and hidden.is_cuda and fp8_kernels.fp8_matmul_available(hidden.device.index or 0)
                and fp8_shapes_fit(hidden, self.weight)):
            logits = fp8_linear(hidden, self.weight)
        else:
            logits = super().forward(hidden)
        if self.sigmoid_cap:
            return sigmoid_cap(logits, self.sigmoid_cap)
        if not self.cap:
            return logits
        wide = torch.promote_types(logits.dtype, torch.float32)  # at least fp32: tanh saturates coarsely in bf16
        return self.cap * torch.tanh(logits.to(wide) / self.cap)


BACKOUT_INITIAL = 0.5  # the backout's weight at the start


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
        rotary = (Rotary(C // config.n_head, config.block_size, config.rope_base, config.rope_dims)
                  if config.rotary else None)
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
        self.skip_gate = SkipGate(L // 2, C) if config.unet and config.skip_gate and L // 2 else None
        self.smear = Smear(C) if config.smear else None
        self.bigram = None
        if config.bigram:
            self.bigram = BigramEmbedding(table_rows(config.bigram, V), config.bigram_dim or C)
            # its weight before block 0 and after each block's attention
            self.bigram_lambdas = nn.Parameter(torch.full((L + 1,), INITIAL_WEIGHT))
        # backout: the stream after the first 2L/3 blocks, weighted, is taken out again before the final norm
        self.backout_after = max(1, 2 * L // 3) if config.backout else None
        if config.backout:
            self.backout_lambda = nn.Parameter(torch.full((1,), BACKOUT_INITIAL))  # (1,): FSDP2 takes no 0-d
        self.lm_head = SoftcapHead(C, V, config.softcap, bool(config.fp8_head), config.sigmoid_cap)
        # the sliding window now, in tokens: set by training's schedule_window (a buffer, so compiled code reads the
        # new value), else the whole context, where the schedule ends (eval, sample, a loaded model)
        self.register_buffer("attention_window", torch.tensor(config.block_size), persistent=False)
        if config.tie:
            self.lm_head.weight = self.transformer.wte.weight
        if config.untie_at:  # tied by the training step until untie_at (llmpy.frontier.untie): trains as the head
            self.transformer.wte.optimizer_group = "head"
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
        if self.config.untie_at:  # two equal weights, trained as one until untie_at (padded rows zero in both)
            nn.init.normal_(self.lm_head.weight, std=HEAD_INIT_STD)
            self.lm_head.weight[self.config.vocab_size:].zero_()
            self.transformer.wte.weight.copy_(self.lm_head.weight)
        elif not self.config.tie:
            nn.init.zeros_(self.lm_head.weight) if zero else nn.init.normal_(self.lm_head.weight, std=0.02)
        self.transformer.wte.weight[self.config.vocab_size:].zero_()  # padded rows: never a real token
        for module in (self.skip_gate, self.smear, self.bigram, *(m for m in self.modules()
                                                                   if isinstance(m, (AttentionGate, ValueEmbedGate)))):
            if module is not None:  # the frontier's components start where the model is as without them
                module.reset_parameters()
        if self.bigram is not None:
            self.bigram_lambdas.fill_(INITIAL_WEIGHT)
        if self.backout_after is not None:
            self.backout_lambda.fill_(BACKOUT_INITIAL)

    def forward(self, idx: torch.Tensor, kv_cache=None, output=None):
        """idx (B, T) token ids -> final hidden states (B, T, C), or `output(hidden)` (see GPT.forward)."""
        B, T = idx.shape
        L, k = self.config.n_layer, self.n_value_embeds
        start = kv_cache.length if kv_cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence length {start + T} exceeds block_size {self.config.block_size}")
        # the token before idx[:, 0]: in the KV cache when decoding on, else none (the smear and bigram need it)
        previous = kv_cache.last_tokens if kv_cache is not None and start > 0 else None
        x = self.transformer.wte(idx)  # (B, T, C)
        if self.smear is not None:
            x = self.smear(x, None if previous is None else self.transformer.wte(previous))
        if not self.config.rotary:
            x = x + self.transformer.wpe(torch.arange(start, start + T, device=idx.device))
        x = rms_norm(x)
        tables = [table(idx) for table in self.transformer.value_embeds] if k else []
        value_embeds = tables + [None] * (L - 2 * k) + tables if k else [None] * L
        bigram = None if self.bigram is None else self.bigram(idx, previous)  # (B, T, bigram_dim)
        if bigram is not None and self.bigram.dim < x.size(-1):  # into the first bigram_dim dims of the stream
            bigram = F.pad(bigram, (0, x.size(-1) - self.bigram.dim))
        if torch.is_autocast_enabled(idx.device.type):
            dtype = torch.get_autocast_dtype(idx.device.type)
            x = x.to(dtype)
            value_embeds = [None if ve is None else ve.to(dtype) for ve in value_embeds]
            bigram = None if bigram is None else bigram.to(dtype)
        skip_gates = None if self.skip_gate is None else self.skip_gate(x)  # (B, T, L // 2), from the input x0
        if bigram is not None:
            x = x + self.bigram_lambdas[0].to(x.dtype) * bigram
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
                skip = L - 1 - layer
                weight = self.skip_weights[skip].to(x.dtype)
                x = x + (weight if skip_gates is None else weight * skip_gates[..., skip, None]) * skips.pop()
            added = None if bigram is None else self.bigram_lambdas[layer + 1].to(x.dtype) * bigram
            x = block(x, value_embeds[layer], start, kv_cache.layer(layer) if kv_cache is not None else None, mask,
                      added)
            if self.skip_weights is not None and layer < L // 2:
                skips.append(x)
            if layer + 1 == self.backout_after:
                saved = x
        if self.backout_after is not None:
            x = x - self.backout_lambda.to(x.dtype) * saved
        if kv_cache is not None:
            kv_cache.last_tokens = idx[:, -1]
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
