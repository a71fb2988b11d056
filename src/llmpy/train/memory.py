"""The seed's OOM advice, automated: when a micro-batch (-b) does not fit in GPU memory, halve it and accumulate
more, so the optimizer still sees the same -d tokens per step (the math is unchanged), and say so."""

from __future__ import annotations

import gc
from typing import Callable

import torch

from llmpy.errors import LlmpyError


def step_fits(train_module: torch.nn.Module, autocast, device: torch.device, batch_size: int, seq_len: int,
              reserve_bytes: int) -> bool:
    """One forward and backward of a (batch_size, seq_len) batch through `train_module` ((idx, targets) -> loss)
    while `reserve_bytes` more are held (the optimizer state that the first step will allocate). Leaves no
    gradients behind; the weights are untouched."""
    fitted = True
    try:
        reserve = torch.empty(reserve_bytes, dtype=torch.uint8, device=device)
        tokens = torch.zeros((batch_size, seq_len), dtype=torch.long, device=device)
        with autocast():
            loss = train_module(tokens, tokens)
        loss.backward()
        del reserve, tokens, loss
    except torch.OutOfMemoryError:
        fitted = False  # leave the except block first: its traceback holds the failed step's tensors
    train_module.zero_grad(set_to_none=True)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return fitted


def find_micro_batch(fits: Callable[[int], bool], batch_size: int, tokens_per_sample: int, total_batch: int,
                     print_fn=print) -> int:
    """The largest micro-batch <= `batch_size` that `fits`, halving, keeping `total_batch` (tokens per step over all
    ranks) a multiple of micro-batch x `tokens_per_sample` (seq_len x world size)."""
    tried = batch_size
    while not fits(tried):
        smaller = tried // 2
        while smaller > 0 and total_batch % (smaller * tokens_per_sample):
            smaller -= 1  # an odd -b: the next size that still divides -d
        if smaller == 0:
            raise LlmpyError(f"-b {tried} does not fit in memory and there is no smaller micro-batch; "
                             "try -r 3 (recompute whole blocks), -z 3 on several GPUs, or a shorter -t")
        print_fn(f"out of memory with -b {tried}: using -b {smaller} with grad accumulation "
                 f"{total_batch // (smaller * tokens_per_sample)} (same -d {total_batch:,} tokens per step)")
        tried = smaller
    return tried
