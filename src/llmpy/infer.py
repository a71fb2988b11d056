"""Autoregressive sampling from a GPT model: temperature, top-k, top-p, seeded."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from llmpy.model import GPT


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Keep the top_k most likely tokens and the smallest set whose probability reaches top_p; -inf elsewhere."""
    if top_k > 0 and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the tokens ranked above it already reach top_p (the top token always stays)
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= top_p
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
    """Yield one (B,) tensor of new token ids per step for a (B, T0) prompt; temperature 0 means greedy."""
    idx = prompt
    block_size = model.config.block_size
    for _ in range(max_new_tokens):
        context = idx[:, -block_size:]
        if autocast is not None:
            with autocast():
                logits, _ = model(context)
        else:
            logits, _ = model(context)
        logits = logits[:, -1, :].float()
        if temperature <= 0:
            next_token = logits.argmax(-1)
        else:
            probs = F.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)
            next_token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        idx = torch.cat([idx, next_token[:, None]], dim=1)
        yield next_token


def generate(model: GPT, prompt: torch.Tensor, max_new_tokens: int, **options) -> torch.Tensor:
    """The prompt followed by max_new_tokens sampled tokens, (B, T0 + max_new_tokens)."""
    new = list(generate_tokens(model, prompt, max_new_tokens, **options))
    if not new:
        return prompt
    return torch.cat([prompt, torch.stack(new, dim=1)], dim=1)
