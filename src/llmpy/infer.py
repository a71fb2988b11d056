"""Autoregressive sampling from a GPT model with a KV cache: temperature, top-k, top-p, seeded."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from llmpy.model import GPT


class _LayerCache:
    """One layer's view of the cache: appends this step's keys/values and returns all of them so far."""

    def __init__(self, parent: "KVCache", index: int):
        self.parent, self.index = parent, index

    @property
    def state(self) -> dict:
        """What the layer keeps between forward passes besides keys and values (e.g. the key offset's last keys)."""
        return self.parent.layer_state.setdefault(self.index, {})

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.parent.store(self.index, k, v)


class KVCache:
    """Keys and values of every layer for the positions processed so far, (L, B, nh, max_len, hs) each."""

    def __init__(self, n_layer: int, max_len: int):
        self.n_layer, self.max_len = n_layer, max_len
        self.length = 0
        self.keys: torch.Tensor | None = None  # allocated on first use, in the dtype autocast produces
        self.values: torch.Tensor | None = None
        self.documents: torch.Tensor | None = None  # (B, length): document numbers, for models that mask by them
        self.last_tokens: torch.Tensor | None = None  # (B,): the newest position's token, for models that read it
        self.layer_state: dict[int, dict] = {}  # per layer: anything else a layer carries to the next position

    def layer(self, index: int) -> _LayerCache:
        return _LayerCache(self, index)

    def store(self, index: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, nh, T, hs = k.shape
        if self.keys is None:
            shape = (self.n_layer, B, nh, self.max_len, hs)
            self.keys = torch.empty(shape, dtype=k.dtype, device=k.device)
            self.values = torch.empty(shape, dtype=v.dtype, device=v.device)
        end = self.length + T
        self.keys[index, :, :, self.length:end] = k
        self.values[index, :, :, self.length:end] = v
        return self.keys[index, :, :, :end], self.values[index, :, :, :end]

    def extend_documents(self, new: torch.Tensor) -> torch.Tensor:
        """Append the document numbers of this forward pass's tokens (numbered from 0 within them) after the cached
        positions', continuing their count; returns those of every position so far (B, length + T)."""
        if self.documents is not None:
            new = new + self.documents[:, -1:]
        self.documents = new if self.documents is None else torch.cat([self.documents, new], dim=1)
        return self.documents

    def advance(self, steps: int) -> None:
        """Called by the model once all layers have stored this forward pass."""
        self.length += steps


def check_sampling(temperature: float, top_k: int, top_p: float) -> None:
    """A ValueError naming the setting no sampler can use: a NaN, an infinity, a negative, a top_p above 1."""
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if not 0 <= top_p <= 1:  # also false for NaN
        raise ValueError(f"top_p must be in [0, 1] (1 = off), got {top_p}")


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Keep the top_k most likely tokens and the smallest set whose probability reaches top_p; -inf elsewhere.
    The most likely token always stays (top_p 0 keeps only it), so a sampler never sees a row with nothing left."""
    check_sampling(1.0, top_k, top_p)
    if top_k > 0 and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the tokens ranked above it already reach top_p (the top token always stays)
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= top_p
        drop_sorted[..., 0] = False  # at top_p 0 the rule above would drop every token
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


@torch.no_grad()
def generate_tokens(
    model: GPT,
    prompt: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    autocast: Callable[[], object] | None = None,
) -> Iterator[torch.Tensor]:
    """Yield one (B,) tensor of new token ids per step for a (B, T0) prompt; temperature 0 means greedy.

    The prompt is processed once into a KV cache, then each step feeds one token. Once the context window is full,
    every step recomputes the last block_size tokens (the same result a cache-less loop gives).
    """
    check_sampling(temperature, top_k, top_p)
    idx = prompt
    block_size = model.config.block_size
    cache = KVCache(model.config.n_layer, block_size)
    feed = idx[:, -block_size:]
    for _ in range(max_new_tokens):
        use_cache = cache is not None and cache.length + feed.size(1) <= block_size
        if not use_cache:
            cache, feed = None, idx[:, -block_size:]
        with autocast() if autocast is not None else contextlib.nullcontext():
            # the head on the last position only
            logits = model(feed, kv_cache=cache, output=lambda hidden: model.logits(hidden[:, -1]))
        logits = logits.float()
        if temperature <= 0:
            next_token = logits.argmax(-1)
        else:
            probs = F.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)
            next_token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        idx = torch.cat([idx, next_token[:, None]], dim=1)
        feed = next_token[:, None]
        yield next_token


def generate(model: GPT, prompt: torch.Tensor, max_new_tokens: int, **options) -> torch.Tensor:
    """The prompt followed by max_new_tokens sampled tokens, (B, T0 + max_new_tokens)."""
    new = list(generate_tokens(model, prompt, max_new_tokens, **options))
    if not new:
        return prompt
    return torch.cat([prompt, torch.stack(new, dim=1)], dim=1)
