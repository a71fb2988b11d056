"""GPT-2 exactly as OpenAI released it and llm.c trains it: the model only (no I/O, devices or optimizers).

Pre-LayerNorm transformer blocks, learned absolute positions, GELU with the tanh approximation, biases everywhere,
and the output head tied to the token embedding. The vocabulary is padded from 50257 to 50304 rows (llm.c's
choice, so the head's matmul tiles evenly); the padded rows are zero and their logits are never returned.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from llmpy.config import ModelConfig

# activation recompute (-r), llm.c's levels plus whole blocks: what the backward pass recomputes instead of storing
RECOMPUTE_LEVELS = {0: "nothing", 1: "GELU", 2: "GELU and LayerNorm", 3: "whole blocks"}
_aten = torch.ops.aten
# the cheap ops each selective level recomputes; every other result (matmuls, attention) is kept as usual.
# Dtype casts are recomputed too: under autocast they are the bf16 copies feeding the matmuls.
_RECOMPUTED_OPS = {
    1: {_aten.gelu.default},
    2: {_aten.gelu.default, _aten.native_layer_norm.default, _aten._to_copy.default},
}


def _policy(level: int, ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.PREFER_RECOMPUTE if op in _RECOMPUTED_OPS[level] else CheckpointPolicy.MUST_SAVE


def _recomputed(fn, x: torch.Tensor, level: int) -> torch.Tensor:
    """fn(x), keeping for the backward pass only what recompute `level` keeps."""
    if level == 0 or not torch.is_grad_enabled():
        return fn(x)
    if level >= 3:
        return checkpoint(fn, x, use_reentrant=False)
    context = functools.partial(create_selective_checkpoint_contexts, functools.partial(_policy, level))
    return checkpoint(fn, x, use_reentrant=False, context_fn=context)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with a causal mask, through `scaled_dot_product_attention`."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.c_proj.residual_projection = True  # scaled at init (GPT-2 paper, section 2.3)

    def forward(self, x: torch.Tensor, cache=None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if cache is not None:  # inference: keys/values of earlier positions come from the cache
            k, v = cache.update(k, v)  # (B, nh, T_past + T, hs)
            if T != 1 and T != k.size(2):
                raise ValueError("a KV cache takes a whole prompt first, then one token at a time")
        # one new token attends to every cached position; otherwise the usual causal mask
        y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    """Position-wise feed-forward: C -> 4C -> GELU(tanh) -> C."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.c_proj.residual_projection = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))  # (B, T, 4C) inside


class Block(nn.Module):
    """Pre-LN residual block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)
        self.recompute = 0  # -r level, see RECOMPUTE_LEVELS (training memory only; the math is the same)

    def forward(self, x: torch.Tensor, cache=None) -> torch.Tensor:
        if cache is not None:  # inference
            return self._forward(x, cache)
        return _recomputed(self._forward, x, self.recompute)

    def _forward(self, x: torch.Tensor, cache=None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """GPT-2: token + position embeddings, n_layer blocks, final LayerNorm, tied output head."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying (GPT-2 paper)
        # added to the logits before the softmax: 0 for real tokens, -inf for the padded rows, so the loss can use the
        # padded (tile-friendly) logits directly instead of a sliced copy
        vocab_mask = torch.zeros(config.padded_vocab_size)
        vocab_mask[config.vocab_size:] = float("-inf")
        self.register_buffer("vocab_mask", vocab_mask, persistent=False)
        # training loss through llmpy.kernels.cross_entropy (head + loss + its gradient in one pass over the logits);
        # the same math as the plain path, set by --fused-loss
        self.fused_loss = False
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, 0.02), residual projections N(0, 0.02/sqrt(2L)), zero biases, unit LayerNorm."""
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for module in self.modules():
            if isinstance(module, nn.Linear) and module is not self.lm_head:
                std = residual_std if getattr(module, "residual_projection", False) else 0.02
                nn.init.normal_(module.weight, mean=0.0, std=std)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        self.transformer.wte.weight[self.config.vocab_size:].zero_()  # padded rows: never a real token

    def set_recompute(self, level: int) -> None:
        """-r: 0 keep every activation, 1 recompute GELU, 2 GELU and LayerNorm, 3 whole blocks (least memory)."""
        if level not in RECOMPUTE_LEVELS:
            raise ValueError(f"recompute level must be one of {sorted(RECOMPUTE_LEVELS)}, got {level}")
        for block in self.transformer.h:
            block.recompute = level

    def num_parameters(self) -> int:
        """Parameter count as llm.c prints it: padded wte and wpe included, the tied head counted once."""
        return sum(p.numel() for p in self.parameters())

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, return_logits: bool = True, kv_cache=None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """idx (B, T) token ids -> (logits (B, T, vocab_size) or None, mean cross-entropy loss or None).

        `kv_cache` (inference only, see llmpy.infer.KVCache) holds the keys and values of the positions before idx.
        """
        B, T = idx.shape
        start = kv_cache.length if kv_cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence length {start + T} exceeds block_size {self.config.block_size}")
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, C)
        if torch.is_autocast_enabled(idx.device.type):  # the residual stream in bf16, as llm.c keeps it
            x = x.to(torch.get_autocast_dtype(idx.device.type))
        for layer, block in enumerate(self.transformer.h):
            x = block(x, kv_cache.layer(layer) if kv_cache is not None else None)
        if kv_cache is not None:
            kv_cache.advance(T)
        x = self.transformer.ln_f(x)
        if self.fused_loss and targets is not None and not return_logits and torch.is_grad_enabled():
            from llmpy.kernels.cross_entropy import head_loss

            dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
            return None, head_loss(x.to(dtype), self.lm_head.weight.to(dtype), targets, self.config.vocab_size)
        logits = self.lm_head(x)  # (B, T, padded V)
        loss = None
        if targets is not None:
            # the softmax runs in fp32 even under bf16 autocast, as llm.c's fused classifier does; the padded rows'
            # logits are -inf, so this is the softmax over the real vocabulary
            masked = logits.float() + self.vocab_mask
            loss = F.cross_entropy(masked.view(-1, masked.size(-1)), targets.reshape(-1), ignore_index=-1)
        return (logits[..., : self.config.vocab_size] if return_logits else None), loss  # (B, T, V)
