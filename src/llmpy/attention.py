"""The attention seam: every model calls `causal_attention`, so a new kernel (FlashAttention-3/4, FlexAttention) is a
new branch here, not an edit of the model. Inputs and outputs are (B, T, n_head, head_dim), the layout the
FlashAttention kernels take; PyTorch's SDPA wants (B, n_head, T, head_dim), so this is where the transposes live.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AttentionMask:
    """Causal attention narrowed further, built once per forward pass (before the blocks, so nothing is built inside
    a recomputed region) and shared by the layers: a dense boolean mask for SDPA, or a FlexAttention block mask
    (inside torch.compile on CUDA unless LLMPY_FLEX_ATTENTION=0), where tiles with nothing to attend are skipped."""

    block: object = None  # a FlexAttention BlockMask
    dense: torch.Tensor | None = None  # (B or 1, 1, queries, keys) booleans, True where attention is allowed


def attention_mask(length: int, queries: int, documents: torch.Tensor | None, window: torch.Tensor | None,
                   device: torch.device) -> AttentionMask:
    """The dense mask for the last `queries` of `length` positions (all of them without a KV cache) attending to all
    `length`: a position sees earlier positions of its own document (`documents`, (B, length): the document number
    of each position; None = no document mask) that are among its last `window` (a 0-dim integer tensor, itself
    included; None = no limit)."""
    rows = documents.size(0) if documents is not None else 1
    q_idx = torch.arange(length - queries, length, device=device)[:, None]  # the queries' positions
    kv_idx = torch.arange(length, device=device)[None, :]
    allowed = q_idx >= kv_idx
    if documents is not None:
        allowed = allowed & (documents[:, q_idx] == documents[:, None, :])  # (B, queries, length)
    if window is not None:
        allowed = allowed & (q_idx - kv_idx < window)
    return AttentionMask(dense=allowed.expand(rows, queries, length)[:, None])


def joined_block_mask(rows: int, length: int, documents: torch.Tensor | None, window: torch.Tensor | None,
                      device: torch.device) -> AttentionMask:
    """The FlexAttention mask of `rows` rows of `length` positions laid end to end as one sequence (the layout of
    the speedrun's FlexAttention, one long row, which keeps the batch out of the mask), each row's documents
    (`documents` (rows, length), None = one per row) numbered apart from the others', so no row sees another."""
    in_row = documents if documents is not None else torch.zeros(rows, length, dtype=torch.long, device=device)
    # row r's documents become r (length + 1) + their number: never decreasing along the joined sequence
    joined = (in_row + torch.arange(rows, device=device)[:, None] * (length + 1)).reshape(1, rows * length)

    def joined_mask(b, h, q_idx, kv_idx):
        ok = (q_idx >= kv_idx) & (joined[0, q_idx] == joined[0, kv_idx])
        return ok if window is None else ok & (q_idx - kv_idx < window)

    return AttentionMask(block=block_mask(rows * length, joined, window, device, joined_mask))


def flex_attention_enabled() -> bool:
    """Whether a compiled CUDA model takes FlexAttention block masks (the default; LLMPY_FLEX_ATTENTION=0 for a dense
    mask through SDPA instead). On one H200 (torch 2.11, 2026-12-02) masks built inside the compiled graph failed
    (create_block_mask's: illegal memory access; from tile bounds: wrong outputs); the rows joined into one sequence
    with the mask built at a graph break (`flex_attention_mask`) gave the dense mask's losses (val 5.5326 vs 5.5324
    after 30 steps) at 469K tok/s against its 439K (benchmarks/RESULTS.md)."""
    return os.environ.get("LLMPY_FLEX_ATTENTION", "1") != "0"


def _flex_attention_mask(idx: torch.Tensor, boundary_token: int | None, window: torch.Tensor | None) -> AttentionMask:
    """The FlexAttention mask of a batch `idx` (B, T), with documents starting at `boundary_token` (None: no document
    mask) and `window`, built outside torch.compile's graph: a graph break, so the mask's tensors enter the compiled
    attention as inputs rather than as intermediates captured by its mask function (on the CPU, Inductor refuses the
    joined rows' document numbers as a captured intermediate; on an H200 the in-graph masks failed, see
    `flex_attention_enabled`). A new closure per call does not recompile (checked with TORCH_LOGS=recompiles)."""
    documents = document_index(idx, boundary_token) if boundary_token is not None else None
    return joined_block_mask(idx.size(0), idx.size(1), documents, window, idx.device)


def __getattr__(name: str):
    """`flex_attention_mask` is `_flex_attention_mask` under torch.compiler.disable, made at first use: the decorator
    imports torch._dynamo (1.7 s of CPU on a 2-core machine), which no eager run, no classic model and no CLI
    command other than a compiled one needs. A model that may take the mask (ModernGPT with a document mask or a
    window) asks for it when built, so a compiled forward finds a plain module attribute."""
    if name == "flex_attention_mask":
        built = torch.compiler.disable(_flex_attention_mask)
        built.__doc__ = _flex_attention_mask.__doc__
        globals()[name] = built
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


FLEX_BLOCK = 128  # FlexAttention's default tile: the block mask's granularity


def block_mask(length: int, documents: torch.Tensor | None, window: torch.Tensor | None, device: torch.device,
               mask_mod):
    """The FlexAttention BlockMask of causal attention within documents and a window, built from block bounds rather
    than by evaluating `mask_mod` on every (query, key) pair as `create_block_mask` does (a B x T x T grid per
    forward). Document numbers never decrease along a row, so a query tile and an earlier key tile share a document
    iff the query tile's first document is at most the key tile's last; they are all one document iff the key tile's
    first equals the query tile's last. A tile pair is skipped when nothing in it is allowed, computed without the
    mask (full) when everything is and both tiles are whole, and masked element-wise by `mask_mod` otherwise."""
    from torch.nn.attention.flex_attention import BlockMask

    n = -(-length // FLEX_BLOCK)
    tile = torch.arange(n, device=device)
    ends = (tile + 1).mul(FLEX_BLOCK).clamp(max=length) - 1
    q_tile, kv_tile = tile[:, None], tile[None, :]
    some = kv_tile <= q_tile  # (n, n): causal, before the document and window bounds
    whole = ends - tile * FLEX_BLOCK == FLEX_BLOCK - 1  # a short last tile is always masked element-wise
    every = (kv_tile < q_tile) & whole[:, None] & whole[None, :]
    if documents is not None:
        first, last = documents[:, tile * FLEX_BLOCK], documents[:, ends]  # (B, n)
        some = some & (first[:, :, None] <= last[:, None, :])
        every = every & (first[:, None, :] == last[:, :, None])
    if window is not None:  # a query q sees keys q - window + 1 .. q
        gap = (q_tile - kv_tile) * FLEX_BLOCK
        some = some & (gap - FLEX_BLOCK + 1 < window)
        every = every & (gap + FLEX_BLOCK - 1 < window)
    some, every = (mask.expand(documents.size(0) if documents is not None else 1, n, n) for mask in (some, every))
    partial = some & ~every

    def ordered(chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per query tile: how many key tiles are chosen, and their indices first, in order (the rest of the row,
        unread, holds the others). A scatter to computed slots, not a sort: no reliance on a sort's stability."""
        count = chosen.sum(dim=-1)
        slot = torch.where(chosen, chosen.cumsum(dim=-1) - 1, count[..., None] + (~chosen).cumsum(dim=-1) - 1)
        indices = torch.empty_like(slot).scatter_(-1, slot, tile.expand_as(slot))
        return count.to(torch.int32)[:, None], indices.to(torch.int32)[:, None]  # (B, 1 head, n), (B, 1, n, n)

    return BlockMask.from_kv_blocks(*ordered(partial), *ordered(every), BLOCK_SIZE=FLEX_BLOCK, mask_mod=mask_mod,
                                    seq_lengths=(length, length))


def document_index(idx: torch.Tensor, boundary_token: int) -> torch.Tensor:
    """(B, T) tokens -> (B, T) document number of each position, counting from the row's start: a document begins at
    each `boundary_token` (llm.c's shards put EOT before every document, so the EOT belongs to the one it opens)."""
    return (idx == boundary_token).cumsum(dim=1)


_fa4_forward: str | None = None  # set by activate_attention: qkv_attention's forward kernel when it calls FA4 itself
_fa4_hook = False  # whether activate_attention rerouted SDPA's flash kernels to FA4


def _fa4_applies(qkv: torch.Tensor, kv_cache) -> bool:
    """FA4's direct path: activated, on CUDA in bf16/fp16, no KV cache, a head size its sm90 kernels take."""
    head = qkv.size(-1)
    return (_fa4_forward is not None and kv_cache is None and qkv.is_cuda
            and qkv.dtype in (torch.bfloat16, torch.float16) and 8 <= head <= 256 and head % 8 == 0)


def qkv_attention(qkv: torch.Tensor, kv_cache=None) -> torch.Tensor:
    """Causal attention over one packed (B, T, 3, nh, hs) q/k/v tensor -> (B, T, nh, hs). Under --attention fa4 or
    cudnn+fa4, on CUDA in bf16/fp16 and without a KV cache, FlashAttention-4's backward pass runs on the packed
    views and writes the q/k/v gradient as one tensor (llmpy.kernels.fa4; the forward kernel FA4's or cuDNN's);
    otherwise `causal_attention` on its three slices."""
    if _fa4_applies(qkv, kv_cache):
        from llmpy.kernels.fa4 import fa4_causal

        return fa4_causal(qkv, _fa4_forward)[0]
    q, k, v = qkv.unbind(2)
    return causal_attention(q, k, v, kv_cache)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_cache=None,
                     mask: AttentionMask | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v with a causal mask; q, k, v (B, T, nh, hs) -> (B, T, nh, hs).

    `kv_cache` (inference, see llmpy.infer.KVCache's layer view) holds the keys and values of earlier positions; a
    cached forward takes a whole prompt first, then one token at a time. `mask` (see `attention_mask`) replaces the
    plain causal mask."""
    T = q.size(1)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, nh, T, hs)
    if kv_cache is not None:
        k, v = kv_cache.update(k, v)  # (B, nh, T_past + T, hs)
        if T != 1 and T != k.size(2):
            raise ValueError("a KV cache takes a whole prompt first, then one token at a time")
    if mask is not None and mask.block is not None:  # the rows joined into one sequence (joined_block_mask)
        from torch.nn.attention.flex_attention import flex_attention

        B, nh, hs = q.size(0), q.size(1), q.size(3)
        y = flex_attention(*(t.transpose(1, 2).reshape(1, B * T, nh, hs).transpose(1, 2) for t in (q, k, v)),
                           block_mask=mask.block)  # (1, nh, B T, hs)
        return y.transpose(1, 2).reshape(B, T, nh, hs)
    if mask is not None:
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.dense)
    else:  # one new token attends to every cached position; otherwise the usual causal mask
        y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)  # (B, nh, T, hs)
    return y.transpose(1, 2)


def backend_context(backend: str) -> contextlib.AbstractContextManager:
    """The SDPA kernel preference for the forward passes run inside it (entered outside torch.compile's region)."""
    if backend in ("auto", "cudnn+fa4"):  # cudnn+fa4: the calls qkv_attention leaves to SDPA get PyTorch's choice
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if backend == "fa4":  # activate_attention() rerouted the flash kernels (Runtime.activate)
        backend = "flash"
    kernels = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
               "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    # the chosen kernel first; the others stay as fallbacks for shapes it cannot take (e.g. KV-cache decode)
    order = [kernels[backend]] + [kernel for name, kernel in kernels.items() if name != backend]
    return sdpa_kernel(order, set_priority=True)


FA4_BACKENDS = ("fa4", "cudnn+fa4")
_FA4_INSTALL = "pip install -e \".[fa4]\": flash-attn-4 4.0.0b18"


def activate_attention(device: torch.device, backend: str) -> None:
    """Make `backend` (--attention) the process's attention, undoing what an earlier one set (the FA4 paths are
    process-wide: a notebook or test may run several configurations in one process).

    fa4 / cudnn+fa4: `qkv_attention` calls FlashAttention-4 (the flash-attn-4 package, CuTe DSL kernels for Hopper
    and Blackwell) directly, for both passes (fa4) or for the backward pass after cuDNN's forward kernel
    (cudnn+fa4). Under fa4, SDPA's flash kernels, which the other attention calls take (masks, KV caches, the modern
    recipe's q/k/v), are rerouted to FA4 too, through PyTorch 2.11's hook; under cudnn+fa4 they get PyTorch's own
    choice. One-line errors where it cannot be."""
    global _fa4_forward, _fa4_hook
    from llmpy.errors import LlmpyError

    _fa4_forward = None
    if _fa4_hook and backend != "fa4":
        import torch.nn.attention as sdpa

        sdpa.restore_flash_attention_impl()  # PyTorch's own flash kernels again
        _fa4_hook = False
    if backend not in FA4_BACKENDS:
        return
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (9, 0):
        raise LlmpyError(f"--attention {backend} needs a Hopper or Blackwell GPU "
                         "(FlashAttention-4's kernels are sm_90/sm_100)")
    from llmpy.kernels import fa4

    try:
        fa4.load()
    except Exception as exc:  # not installed, or an install that does not import
        raise LlmpyError(f"--attention {backend} needs the flash-attn-4 package ({_FA4_INSTALL}); importing it "
                         f"failed: {type(exc).__name__}: {exc}") from None
    if backend == "fa4" and not _fa4_hook:
        _activate_fa4_hook()
        _fa4_hook = True
    _fa4_forward = "cudnn" if backend == "cudnn+fa4" else "fa4"


def _activate_fa4_hook() -> None:
    """SDPA's flash kernels rerouted to FlashAttention-4 (PyTorch 2.11's hook)."""
    from llmpy.errors import LlmpyError

    try:
        from torch.nn.attention import activate_flash_attention_impl
    except ImportError:
        raise LlmpyError(f"--attention fa4: torch {torch.__version__} has no FlashAttention-4 hook "
                         "(torch.nn.attention.activate_flash_attention_impl, torch >= 2.11)") from None
    try:
        activate_flash_attention_impl("FA4")
    except Exception as exc:  # a version of flash-attn-4 this torch's hook does not match
        raise LlmpyError(f"--attention fa4: torch could not activate FlashAttention-4 ({type(exc).__name__}: {exc})") from None
