"""GPT-2 exactly as OpenAI released it and llm.c trains it: the model only (no I/O, devices, losses or optimizers).

Pre-LayerNorm transformer blocks, learned absolute positions, GELU with the tanh approximation, biases everywhere,
and the output head tied to the token embedding. The vocabulary is padded from 50257 to 50304 rows (llm.c's
choice, so the head's matmul tiles evenly); the padded rows are zero and their logits are never returned.

`GPT.forward` returns the final hidden states; the head and the loss over them are a separate component
(llmpy.loss), handed `GPT.lm_head` explicitly and run through forward's `output` argument.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from llmpy.attention import qkv_attention
from llmpy.config import RECOMPUTE_LEVELS, ModelConfig
from llmpy.kernels.cublaslt import fused_mlp

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
    """Multi-head self-attention with a causal mask, through llmpy.attention."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.c_proj.residual_projection = True  # scaled at init (GPT-2 paper, section 2.3)

    def forward(self, x: torch.Tensor, kv_cache=None) -> torch.Tensor:
        B, T, C = x.shape
        # (B, T, 3C) -> (B, T, 3, nh, hs): q is the first C columns, as in OpenAI's checkpoint
        y = qkv_attention(self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head), kv_cache)  # (B, T, nh, hs)
        return self.c_proj(y.reshape(B, T, C))


class MLP(nn.Module):
    """Position-wise feed-forward: C -> 4C -> GELU(tanh) -> C. With `gelu_fusion` (llm.c's -ge: 1 forward, 2 forward
    and backward; set by GPT.set_gelu_fusion) the same math runs under autocast with GELU inside the matmuls'
    cuBLASLt epilogues (llmpy.kernels.cublaslt); `keep_gelu` False recomputes GELU(h) in the backward pass (-r 1)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.c_proj.residual_projection = True
        self.gelu_fusion, self.keep_gelu = 0, True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gelu_fusion and torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
            return fused_mlp(x, self.c_fc, self.c_proj, self.gelu_fusion, self.keep_gelu, dtype)
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))  # (B, T, 4C) inside


class Block(nn.Module):
    """Pre-LN residual block: x + attn(ln(x)), then x + mlp(ln(x)). `recompute`: the -r level (config.RECOMPUTE_LEVELS:
    what the backward pass recomputes instead of storing: 0 nothing, 1 GELU, 2 GELU and LayerNorm, 3 whole blocks)."""

    def __init__(self, config: ModelConfig, recompute: int = 0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)
        self.recompute = recompute  # training memory only: the math is the same at every level

    def forward(self, x: torch.Tensor, kv_cache=None) -> torch.Tensor:
        if kv_cache is not None:  # inference: nothing to recompute
            return self._forward(x, kv_cache)
        # -r 1 with GELU fusion: the fused MLP recomputes GELU itself, and nothing else is recomputed
        fused = self.mlp.gelu_fusion and torch.is_autocast_enabled(x.device.type)
        level = 0 if self.recompute == 1 and fused else self.recompute
        return _recomputed(self._forward, x, level)

    def _forward(self, x: torch.Tensor, kv_cache=None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), kv_cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """GPT-2: token + position embeddings, n_layer blocks, final LayerNorm; `lm_head` is tied to the embedding."""

    def __init__(self, config: ModelConfig, recompute: int = 0):
        super().__init__()
        if recompute not in RECOMPUTE_LEVELS:
            raise ValueError(f"recompute level must be one of {sorted(RECOMPUTE_LEVELS)}, got {recompute}")
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                h=nn.ModuleList([Block(config, recompute) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying (GPT-2 paper)
        self.gelu_fusion = 0  # see set_gelu_fusion
        self.reset_parameters()

    def set_gelu_fusion(self, level: int) -> int:
        """GELU inside the MLP matmuls' epilogues (llm.c's -ge: 0 off, 1 forward, 2 forward and backward) in every
        block whose recompute level allows it (-r 2's selective recompute keeps GELU its own op). Returns the level
        the blocks got."""
        for block in self.transformer.h:
            block.mlp.gelu_fusion = level if block.recompute != 2 else 0
            block.mlp.keep_gelu = block.recompute != 1
        self.gelu_fusion = level if all(block.mlp.gelu_fusion for block in self.transformer.h) else 0
        return self.gelu_fusion

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

    def forward(self, idx: torch.Tensor, kv_cache=None, output=None):
        """idx (B, T) token ids -> final hidden states (B, T, C), after the last LayerNorm, or `output(hidden)`.

        `output` (e.g. a loss component bound to the targets and `self.lm_head`, or `self.logits`) runs inside this
        forward: under FSDP that is where the embedding and the tied head are gathered.
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
        hidden = self.transformer.ln_f(x)
        return hidden if output is None else output(hidden)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, T, C) -> logits over the real vocabulary (B, T, vocab_size), for inference and evals."""
        return self.lm_head(hidden)[..., : self.config.vocab_size]
