"""The output head and the cross-entropy in one autograd step, as llm.c's fused classifier does it.

The usual path writes the (B*T, padded V) logits, reads them in a softmax/cross-entropy forward kernel, and in the
backward reads them again to write their gradient. Here one kernel reads each row of logits once (an online
softmax over chunks of the row, then a second pass over the same row, which is still in L2) and writes, in the
forward pass, both the row's loss and the gradient of the loss with respect to the logits: softmax - one_hot(target).
The backward pass is then only the two matmuls of the head, scaled by the incoming gradient / the number of targets.

Math: the softmax runs in fp32 over the real vocabulary only (the padded columns get zero gradient); targets equal
to `ignore_index` contribute neither loss nor gradient; the loss is the mean over the other targets, as
`F.cross_entropy(..., ignore_index=-1)` computes it. A target outside [0, vocab_size) (a shard from another
tokenizer) gives an infinite loss and no gradient, as the plain path's -inf mask does, so the trainer's non-finite
check skips that step instead of training the padded rows. The gradient with respect to the logits is stored in the logits'
dtype (bf16 under autocast, as llm.c stores it) and unscaled: the 1/count factor is applied to the head's two matmul
outputs, which are 65x smaller than the logits.

On CUDA the kernel is Triton; everywhere else (and as the reference the Triton kernel is tested against) it is the
same computation in PyTorch ops, row block by row block so the fp32 copy of the logits never exists whole.
"""

from __future__ import annotations

import torch

try:  # Triton ships with CUDA builds of torch; CPU builds may lack it (the PyTorch path is used then)
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None

IGNORE_INDEX = -1
_REFERENCE_ROWS = 1024  # rows per block in the PyTorch path: bounds its fp32 temporaries


def reference_loss_and_grad(logits: torch.Tensor, targets: torch.Tensor, vocab_size: int,
                            ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row losses (fp32, or fp64 for fp64 logits) and d(sum of losses)/d(logits) in the logits' dtype, in plain
    PyTorch ops. logits (N, V_padded), targets (N,) int64; columns >= vocab_size are padding.
    """
    n_rows, n_cols = logits.shape
    math_dtype = torch.promote_types(logits.dtype, torch.float32)
    losses = torch.zeros(n_rows, dtype=math_dtype, device=logits.device)
    grad = torch.zeros_like(logits)
    for start in range(0, n_rows, _REFERENCE_ROWS):
        rows = slice(start, min(start + _REFERENCE_ROWS, n_rows))
        real = logits[rows, :vocab_size].to(math_dtype)
        target = targets[rows]
        counted = target != ignore_index
        valid = counted & (target >= 0) & (target < vocab_size)
        safe_target = torch.where(valid, target, torch.zeros_like(target))
        lse = torch.logsumexp(real, dim=-1)
        picked = real.gather(1, safe_target[:, None]).squeeze(1)
        invalid_loss = torch.where(counted, torch.full_like(lse, float("inf")), torch.zeros_like(lse))
        losses[rows] = torch.where(valid, lse - picked, invalid_loss)
        probs = torch.exp(real - lse[:, None])
        probs.scatter_add_(1, safe_target[:, None], -torch.ones_like(picked)[:, None])
        grad[rows, :vocab_size] = (probs * valid[:, None]).to(logits.dtype)
    return losses, grad


if triton is not None:

    @triton.jit
    def _loss_and_grad_kernel(logits_ptr, grad_ptr, targets_ptr, losses_ptr, n_rows, row_stride, n_cols,
                              vocab_size, ignore_index, BLOCK: tl.constexpr, LANEWISE: tl.constexpr,
                              STAGES: tl.constexpr):
        """Persistent: each program takes rows pid, pid + programs, ... For each row, the log-sum-exp first, then a
        last pass writes softmax - one_hot. Few rows are in flight at once, so the later passes read the row back
        from L2, not from memory. The log-sum-exp either takes one pass with an online max (reducing across the
        program at every chunk) or, LANEWISE 1, two passes (max, then sum of exp) that each reduce only at the end.
        LANEWISE 2 holds the whole row in one program (BLOCK >= the row's columns) and reads it once from memory;
        for GPT-2's 50304 columns that is more than the registers hold (ptxas spills 208 bytes a thread at 32 warps
        for sm_90), so whether it beats two passes is for `llmpy bench --check`'s timings to say.
        STAGES > 1 lets Triton prefetch the next chunks while the current one is reduced (software pipelining)."""
        for row in range(tl.program_id(0), n_rows, tl.num_programs(0)):
            offset = tl.cast(row, tl.int64) * row_stride  # past 2**31 elements for B*T*V logits
            row_logits = logits_ptr + offset
            row_grad = grad_ptr + offset
            target = tl.load(targets_ptr + row)
            if LANEWISE == 2:  # constexpr: only the taken branch is compiled, so x is still there for the gradient
                cols = tl.arange(0, BLOCK)
                x = tl.load(row_logits + cols, mask=cols < vocab_size, other=-float("inf")).to(tl.float32)
                row_max = tl.max(x, axis=0)
                lse = row_max + tl.log(tl.sum(tl.exp(x - row_max), axis=0))
            elif LANEWISE == 1:
                lane_max = tl.full([BLOCK], -float("inf"), tl.float32)
                for start in tl.range(0, vocab_size, BLOCK, num_stages=STAGES):
                    cols = start + tl.arange(0, BLOCK)
                    x = tl.load(row_logits + cols, mask=cols < vocab_size, other=-float("inf"),
                                eviction_policy="evict_last").to(tl.float32)
                    lane_max = tl.maximum(lane_max, x)
                row_max = tl.max(lane_max, axis=0)
                lane_sum = tl.zeros([BLOCK], tl.float32)
                for start in tl.range(0, vocab_size, BLOCK, num_stages=STAGES):
                    cols = start + tl.arange(0, BLOCK)
                    x = tl.load(row_logits + cols, mask=cols < vocab_size, other=-float("inf"),
                                eviction_policy="evict_last").to(tl.float32)
                    lane_sum += tl.exp(x - row_max)
                lse = row_max + tl.log(tl.sum(lane_sum, axis=0))
            else:
                running_max = -float("inf")
                running_sum = 0.0
                for start in tl.range(0, vocab_size, BLOCK, num_stages=STAGES):
                    cols = start + tl.arange(0, BLOCK)
                    x = tl.load(row_logits + cols, mask=cols < vocab_size, other=-float("inf"),
                                eviction_policy="evict_last").to(tl.float32)
                    new_max = tl.maximum(running_max, tl.max(x, axis=0))
                    running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(x - new_max), axis=0)
                    running_max = new_max
                lse = running_max + tl.log(running_sum)
            counted = target != ignore_index
            valid = counted & (target >= 0) & (target < vocab_size)
            safe_target = tl.where(valid, target, 0)
            picked = tl.load(row_logits + safe_target).to(tl.float32)
            tl.store(losses_ptr + row, tl.where(valid, lse - picked, tl.where(counted, float("inf"), 0.0)))
            keep = tl.where(valid, 1.0, 0.0)
            if LANEWISE == 2:
                g = tl.exp(x - lse) - tl.where(cols == safe_target, 1.0, 0.0)
                tl.store(row_grad + cols, (g * keep).to(row_grad.dtype.element_ty), mask=cols < n_cols)
            else:
                for start in tl.range(0, n_cols, BLOCK, num_stages=STAGES):
                    cols = start + tl.arange(0, BLOCK)
                    x = tl.load(row_logits + cols, mask=cols < vocab_size, other=-float("inf"),
                                eviction_policy="evict_first").to(tl.float32)
                    g = tl.exp(x - lse) - tl.where(cols == safe_target, 1.0, 0.0)
                    tl.store(row_grad + cols, (g * keep).to(row_grad.dtype.element_ty), mask=cols < n_cols)


def kernel_launch_config(columns: int | None = None) -> tuple[int, int, int, int, int]:
    """(columns per chunk, warps per program, programs per SM, lanewise 0/1/2, pipeline stages); the environment
    variable LLMPY_LOSS_KERNEL="B,W,P,L,S" overrides it (for tuning; `llmpy bench --check` times several on CUDA).
    Read once, by the loss component that launches the kernel (llmpy.loss), which passes it to every launch."""
    import os

    text = os.environ.get("LLMPY_LOSS_KERNEL", "")
    return parse_launch(text, columns) if text else DEFAULT_LAUNCH


def parse_launch(text: str, columns: int | None = None) -> tuple[int, int, int, int, int]:
    """LLMPY_LOSS_KERNEL's value, checked: a power-of-two chunk, positive counts, lanewise 0, 1 or 2 (2: a chunk
    that covers the logits' `columns`, where they are known)."""
    from llmpy.errors import LlmpyError

    problem = f"LLMPY_LOSS_KERNEL={text!r}: expected BLOCK,WARPS,PROGRAMS_PER_SM,LANEWISE,STAGES"
    try:
        block, warps, per_sm, lanewise, stages = (int(v) for v in text.split(","))
    except ValueError:
        raise LlmpyError(f"{problem} (five integers, e.g. {','.join(map(str, DEFAULT_LAUNCH))})") from None
    if block < 16 or block & (block - 1) or warps not in (1, 2, 4, 8, 16, 32) or per_sm < 1 or stages < 1 \
            or lanewise not in (0, 1, 2):
        raise LlmpyError(f"{problem}; BLOCK must be a power of two >= 16, WARPS a power of two <= 32, "
                         "PROGRAMS_PER_SM and STAGES >= 1, LANEWISE 0, 1 or 2 (2: BLOCK covers the whole row)")
    if lanewise == 2 and columns is not None and block < columns:
        raise LlmpyError(f"{problem}; LANEWISE 2 holds a whole row: BLOCK must be >= the {columns} logit columns")
    return block, warps, per_sm, lanewise, stages


# the fastest of the launches `llmpy bench --check` timed on an H100 (2026-11-25): 0.91 ms for 8192 x 50304 bf16
DEFAULT_LAUNCH = (4096, 8, 4, 0, 1)


def triton_loss_and_grad_(logits: torch.Tensor, targets: torch.Tensor, vocab_size: int,
                          ignore_index: int = IGNORE_INDEX, out: torch.Tensor | None = None,
                          launch: tuple[int, int, int, int, int] | None = None) -> torch.Tensor:
    """The Triton kernel: per-row losses, with the gradient written to `out` (default: over `logits` itself; the
    kernel reads each row fully before writing it). The same result as `reference_loss_and_grad`; it runs on CPU
    under TRITON_INTERPRET=1."""
    if triton is None:
        raise RuntimeError("Triton is not installed")
    if logits.stride(1) != 1:
        raise ValueError("the loss kernel needs logits with contiguous rows")
    out = logits if out is None else out
    if out.shape != logits.shape or out.stride() != logits.stride() or out.dtype != logits.dtype:
        raise ValueError("the loss kernel's `out` must have the logits' shape, strides and dtype")
    block, num_warps, programs_per_sm, lanewise, stages = launch or DEFAULT_LAUNCH
    n_rows, n_cols = logits.shape
    if lanewise == 2 and block < n_cols:
        raise ValueError(f"the loss kernel's whole-row launch needs BLOCK >= the {n_cols} columns, not {block}")
    losses = torch.empty(n_rows, dtype=torch.float32, device=logits.device)
    if n_rows:
        processors = torch.cuda.get_device_properties(logits.device).multi_processor_count if logits.is_cuda else 2
        grid = (max(1, min(n_rows, processors * programs_per_sm)),)
        _loss_and_grad_kernel[grid](logits, out, targets.contiguous(), losses, n_rows, logits.stride(0), n_cols,
                                    vocab_size, ignore_index, BLOCK=block, LANEWISE=lanewise, STAGES=stages,
                                    num_warps=num_warps)
    return losses


@torch.library.custom_op("llmpy::loss_and_grad_", mutates_args=("logits",))
def loss_and_grad_(logits: torch.Tensor, targets: torch.Tensor, vocab_size: int, launch: list[int]) -> torch.Tensor:
    """Per-row cross-entropy losses; `logits` is overwritten with their gradient (see the module docstring).
    `launch`: the Triton kernel's launch configuration (see kernel_launch_config)."""
    if logits.is_cuda and triton is not None and logits.dtype != torch.float64:
        return triton_loss_and_grad_(logits, targets, vocab_size, launch=tuple(launch))
    losses, grad = reference_loss_and_grad(logits, targets, vocab_size)
    logits.copy_(grad)
    return losses


@loss_and_grad_.register_fake
def _(logits, targets, vocab_size, launch):
    return logits.new_empty(logits.shape[0], dtype=torch.promote_types(logits.dtype, torch.float32))


class _HeadLoss(torch.autograd.Function):
    """mean cross-entropy of (x @ weight.T) against targets; the backward reuses the gradient the forward wrote."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, vocab_size: int,
                launch: list[int]) -> torch.Tensor:
        grad_logits = x @ weight.t()  # (N, V_padded) logits in the inputs' dtype; the kernel turns them into their grad
        losses = loss_and_grad_(grad_logits, targets, vocab_size, launch)
        count = (targets != IGNORE_INDEX).sum()
        ctx.save_for_backward(x, weight, grad_logits, count)
        return losses.sum() / count

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        x, weight, grad_logits, count = ctx.saved_tensors
        # in fp32: a scale rounded to bf16 would bias the whole gradient the same way; no targets at all gives
        # zero gradient (the loss is nan then, as F.cross_entropy's, and the trainer skips the step)
        scale = (grad_loss / count.clamp(min=1)).float()
        grad_x = ((grad_logits @ weight).float() * scale).to(x.dtype)
        grad_weight = ((grad_logits.t() @ x).float() * scale).to(weight.dtype)
        return grad_x, grad_weight, None, None, None


class _ChunkedHeadLoss(torch.autograd.Function):
    """_HeadLoss a block of `rows` rows at a time: each block's logits are turned into their gradient and, still in
    the forward pass, into that block's share of the head's two gradients (grad_x rows, grad_weight accumulated in
    fp32), so only one block of (rows, V_padded) logits ever exists, not all N rows' (6.6 GB for GPT-2 124M at
    B=64, T=1024 in bf16). The backward only scales what the forward kept."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, vocab_size: int,
                launch: list[int], rows: int) -> torch.Tensor:
        grad_x, total = [], torch.zeros((), dtype=torch.float32, device=x.device)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        for start in range(0, x.size(0), rows):
            block = x[start:start + rows]
            grad_logits = block @ weight.t()
            total = total + loss_and_grad_(grad_logits, targets[start:start + rows], vocab_size, launch).sum()
            grad_x.append(grad_logits @ weight)
            grad_weight += (grad_logits.t() @ block).float()
        count = (targets != IGNORE_INDEX).sum()
        ctx.save_for_backward(torch.cat(grad_x), grad_weight, count)
        ctx.dtypes = x.dtype, weight.dtype
        return total / count

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_x, grad_weight, count = ctx.saved_tensors
        scale = (grad_loss / count.clamp(min=1)).float()  # as _HeadLoss: fp32 scale, zero without targets
        return (grad_x.float() * scale).to(ctx.dtypes[0]), (grad_weight * scale).to(ctx.dtypes[1]), None, None, None, None


def head_loss(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, vocab_size: int,
              launch: tuple[int, int, int, int, int] = DEFAULT_LAUNCH, chunk_rows: int = 0) -> torch.Tensor:
    """Mean cross-entropy of the head's logits x @ weight.T (rows >= vocab_size of weight are padding).

    x (..., C) and weight (V_padded, C) must share a dtype (the caller casts them under autocast); targets (...,)
    int64 with -1 for positions without a target. `chunk_rows` > 0: the logits of that many rows at a time
    (_ChunkedHeadLoss), for memory; 0: all rows at once.
    """
    x, targets = x.reshape(-1, x.size(-1)), targets.reshape(-1)
    if 0 < chunk_rows < x.size(0):
        return _ChunkedHeadLoss.apply(x, weight, targets, vocab_size, list(launch), chunk_rows)
    return _HeadLoss.apply(x, weight, targets, vocab_size, list(launch))
