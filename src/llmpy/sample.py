"""`llmpy sample`: load a trained model and stream generated text to the terminal."""

from __future__ import annotations

import math
import sys

import torch

from llmpy.errors import LlmpyError
from llmpy.infer import generate, generate_tokens
from llmpy.runtime import select_runtime
from llmpy.tokenizer import get_tokenizer
from llmpy.convert.load import load_any_model


def check_sample_flags(*, num_samples: int, max_new_tokens: int, temperature: float, top_k: int,
                       top_p: float) -> None:
    """A one-line LlmpyError naming the first flag with a value sampling cannot use (before any model is loaded)."""
    problems = (
        ("--temperature", temperature, not (math.isfinite(temperature) and temperature >= 0),
         "a finite number >= 0 (0 = greedy)"),
        ("--top-p", top_p, not 0 < top_p <= 1, "in (0, 1] (1 = off)"),  # `not` also catches NaN
        ("--top-k", top_k, top_k < 0, ">= 0 (0 = off)"),
        ("--num-samples", num_samples, num_samples < 1, ">= 1"),
        ("--max-new-tokens", max_new_tokens, max_new_tokens < 1, ">= 1"),
    )
    for flag, value, bad, wanted in problems:
        if bad:
            raise LlmpyError(f"sample: {flag} must be {wanted}, got {value}")


def run_sample(
    model_path: str, prompt: str, *, num_samples: int = 1, max_new_tokens: int = 128, temperature: float = 1.0,
    top_k: int = 50, top_p: float = 1.0, seed: int = 1337, device: str = "auto", tokenizer_path: str | None = None,
    out=None,
) -> int:
    """Print `num_samples` continuations of `prompt`, token by token as they are generated; a sample ends at
    <|endoftext|> (the end of a document), which is not printed."""
    out = out or sys.stdout
    check_sample_flags(num_samples=num_samples, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                       top_p=top_p)
    runtime = select_runtime(device)
    runtime.activate(tf32=True)
    model = load_any_model(model_path)
    model.to(runtime.device).eval()
    tokenizer = get_tokenizer(tokenizer_path, flag="--tokenizer")
    prompt_ids = tokenizer.encode(prompt) if prompt else [tokenizer.eot_token]
    if len(prompt_ids) >= model.config.block_size:
        prompt_ids = prompt_ids[-(model.config.block_size - 1):]
    generator = torch.Generator(device=runtime.device).manual_seed(seed)
    options = dict(temperature=temperature, top_k=top_k, top_p=top_p, generator=generator, autocast=runtime.autocast)
    context = torch.tensor([prompt_ids] * num_samples, dtype=torch.long, device=runtime.device)
    if num_samples == 1:
        _stream(model, context, max_new_tokens, tokenizer, prompt, out, options)
        return 0
    # several samples of one prompt: one batched generation (each row its own random stream), printed at the end
    tokens = generate(model, context, max_new_tokens, **options)[:, len(prompt_ids):].tolist()
    for index, row in enumerate(tokens):
        row = row[: row.index(tokenizer.eot_token)] if tokenizer.eot_token in row else row
        print(f"--- sample {index + 1}/{num_samples} ---\n{prompt}{tokenizer.decode(row)}", file=out)
    return 0


def _stream(model, context, max_new_tokens, tokenizer, prompt, out, options) -> None:
    """Print one sample token by token as it is generated."""
    out.write(prompt)
    ids: list[int] = []
    shown = ""
    for token in generate_tokens(model, context, max_new_tokens, **options):
        if int(token[0]) == tokenizer.eot_token:  # the end of the document: a sample ends there
            break
        ids.append(int(token[0]))
        text = tokenizer.decode(ids)
        if not text.endswith("\ufffd"):  # hold back a multi-byte character until it is complete
            out.write(text[len(shown):])
            out.flush()
            shown = text
    out.write(tokenizer.decode(ids)[len(shown):] + "\n")
