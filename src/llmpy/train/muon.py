"""Muon for the hidden weight matrices and AdamW for the rest, as one optimizer (`build_muon`).

Muon (Keller Jordan, 2024: MomentUm Orthogonalized by Newton-Schulz) is SGD with Nesterov momentum whose update, for
each weight matrix, is replaced by the nearest semi-orthogonal matrix: the orthogonal polar factor U V^T of the
momentum M = U S V^T, approximated by Polar Express's quintic steps (llmpy.train.polar). NorMuon (Li et al. 2025), optional: the orthogonalized update's rows
(output neurons) are divided by a running RMS of their own, so that no neuron's update is much larger than another's.
The NanoGPT speedrun's later settings, all off by default: NorMuon per column of wide matrices, Q/K weights
orthogonalized per pair of heads (row blocks), and cautious weight decay (arXiv 2510.12402) tied to lr^2.

Embeddings, the output head and every vector or scalar are not matrices Muon should whiten: they take AdamW, in the
same optimizer (modded-nanogpt's split), so that one `state_dict()` (and torch.distributed.checkpoint's name-keyed
one) holds everything.

Like the fused AdamW of `optim.build_adamw`, a step never waits for the GPU: the learning rate is read from the
tensor `lr_tensor` (each group's `lr` is a multiplier of it), step counts are device tensors, and the `found_inf`
protocol of `optim.masked_step` is honoured (a flagged step changes no weight, moment or count). Under DDP each rank
orthogonalizes every world-th matrix and the results are all-gathered (in masked steps, which every rank takes);
under FSDP2 the momentum stays sharded, each matrix is gathered whole on one rank (all-to-all), orthogonalized there,
and its rows are sent back to their shards (another all-to-all).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn as nn
from torch import Tensor
from torch.optim.adamw import adamw as functional_adamw

from llmpy.distributed import is_dtensor
from llmpy.errors import LlmpyError
from llmpy.train.polar import orthogonalize


def _local(t: Tensor) -> Tensor:
    """This rank's shard of an FSDP2 DTensor (a view: in-place ops change the DTensor), or the tensor itself."""
    return t.to_local() if is_dtensor(t) else t


def _shard_rows(rows: int, world: int, rank: int) -> tuple[int, int]:
    """(start, count) of rank's rows under Shard(0): torch.chunk's split, as DTensor and FSDP2 use it."""
    per_rank = -(-rows // world)
    start = min(rows, rank * per_rank)
    return start, min(rows, start + per_rank) - start



def _split_columns(packed: Tensor, shapes: list[torch.Size]) -> list[Tensor]:
    """(count, sum of the shapes' sizes) -> one (count, *shape) tensor per shape."""
    sizes = [math.prod(shape) for shape in shapes]
    return [part.reshape(-1, *shape) for part, shape in zip(packed.split(sizes, dim=1), shapes)]


class _SingleProcess:
    """Where the matrices of one bucket (same shape, stacked as (count, *shape)) are orthogonalized. Here every
    matrix is whole on this rank, which does them all. `gather`: the ranks' local pieces -> the whole matrices this
    rank `owned`; `scatter`: the owners' results (the update, then any per-matrix extras) -> this rank's local piece
    of each, over the whole bucket again."""

    def owned(self, count: int) -> range:
        return range(count)

    def gather(self, pieces: Tensor, shape: torch.Size) -> Tensor:
        return pieces

    def scatter(self, results: list[Tensor], count: int, shapes: list[torch.Size]) -> list[Tensor]:
        return results


class _Replicated(_SingleProcess):
    """DDP: every rank holds every whole matrix. Rank r orthogonalizes matrices r, r + world, ...; one all-gather per
    bucket gives every rank every result."""

    def __init__(self, group=None):
        self.group, self.rank, self.world = group, dist.get_rank(group), dist.get_world_size(group)

    def owned(self, count: int) -> range:
        return range(self.rank, count, self.world)

    def gather(self, pieces: Tensor, shape: torch.Size) -> Tensor:
        return pieces[self.rank::self.world]

    def scatter(self, results: list[Tensor], count: int, shapes: list[torch.Size]) -> list[Tensor]:
        slots, length = -(-count // self.world), sum(math.prod(shape) for shape in shapes)
        packed = torch.cat([result.reshape(result.size(0), -1) for result in results], dim=1)  # (owned, length)
        send = packed.new_zeros(slots, length)  # a rank owning one matrix fewer leaves its last slot zero
        send[:packed.size(0)] = packed
        received = packed.new_empty(self.world, slots, length)
        all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # renamed in 2.13
        all_gather(received.view(-1), send.view(-1), group=self.group)
        ordered = received.transpose(0, 1).reshape(slots * self.world, length)[:count]  # matrix slot * world + rank
        return _split_columns(ordered, shapes)


class _Sharded(_SingleProcess):
    """FSDP2: every rank holds rows of every matrix (Shard(0) over a 1-D mesh). Rank r gathers matrices r, r + world,
    ... whole (one all-to-all), orthogonalizes them and sends each rank its rows back (another): each matrix crosses
    the network twice, instead of every rank gathering and orthogonalizing every matrix."""

    def __init__(self, mesh):
        self.group, self.rank, self.world = mesh.get_group(), mesh.get_local_rank(), mesh.size()

    def owned(self, count: int) -> range:
        return range(self.rank, count, self.world)

    def _rows(self, rows: int) -> list[tuple[int, int]]:
        return [_shard_rows(rows, self.world, rank) for rank in range(self.world)]

    def gather(self, pieces: Tensor, shape: torch.Size) -> Tensor:
        rows, owned = self._rows(shape[0]), len(self.owned(pieces.size(0)))
        if pieces.size(1) != rows[self.rank][1]:
            raise LlmpyError(f"internal: Muon expected FSDP shards of {rows[self.rank][1]} rows of {tuple(shape)}, "
                             f"got {pieces.size(1)}")
        to_rank = [pieces[rank::self.world].reshape(-1) for rank in range(self.world)]
        out_splits = [owned * n * math.prod(shape[1:]) for _, n in rows]
        received = pieces.new_empty(sum(out_splits))
        dist.all_to_all_single(received, torch.cat(to_rank), out_splits, [t.numel() for t in to_rank],
                               group=self.group)
        blocks = [block.view(owned, n, *shape[1:]) for block, (_, n) in zip(received.split(out_splits), rows)]
        return torch.cat(blocks, dim=1)  # (owned, *shape): every source's rows in order

    def scatter(self, results: list[Tensor], count: int, shapes: list[torch.Size]) -> list[Tensor]:
        update, extras = results[0], results[1:]
        shape, owned = shapes[0], results[0].size(0)
        rows = self._rows(shape[0])
        to_rank = [torch.cat([update[:, start:start + n].reshape(owned, -1),
                              *(extra.reshape(owned, -1) for extra in extras)], dim=1).reshape(-1)
                   for start, n in rows]  # each rank's rows of the update, and the whole extras
        local_shapes = [torch.Size((rows[self.rank][1], *shape[1:])), *shapes[1:]]
        length = sum(math.prod(s) for s in local_shapes)
        from_rank = [len(range(rank, count, self.world)) for rank in range(self.world)]
        out_splits = [n * length for n in from_rank]
        received = update.new_empty(count * length)
        dist.all_to_all_single(received, torch.cat(to_rank), out_splits, [t.numel() for t in to_rank],
                               group=self.group)
        ordered = update.new_empty(count, length)
        for rank, block in enumerate(received.split(out_splits)):
            ordered[rank::self.world] = block.view(from_rank[rank], length)
        return _split_columns(ordered, local_shapes)


class _Gathered(_SingleProcess):
    """A DTensor laid out other than Shard(0) over a 1-D mesh: every rank gathers every matrix whole and does all
    of them (right for any placement, but the work is repeated on every rank)."""

    def __init__(self, like: Tensor):  # a DTensor
        self.mesh, self.placements, self.stride = like.device_mesh, like.placements, like.stride()

    def gather(self, pieces: Tensor, shape: torch.Size) -> Tensor:
        from torch.distributed.tensor import DTensor

        return torch.stack([DTensor.from_local(piece, self.mesh, self.placements, shape=shape,
                                               stride=self.stride).full_tensor() for piece in pieces.unbind(0)])

    def scatter(self, results: list[Tensor], count: int, shapes: list[torch.Size]) -> list[Tensor]:
        from torch.distributed.tensor import distribute_tensor

        # src_data_rank=None: each rank keeps its own slice of its own (identical) copy; nothing is sent
        local = [distribute_tensor(u, self.mesh, self.placements, src_data_rank=None).to_local()
                 for u in results[0].unbind(0)]
        return [torch.stack(local), *results[1:]]


def _exchange_for(param: Tensor, split_replicated: bool) -> _SingleProcess:
    """How a bucket like `param` is shared out. `split_replicated`: whether plain tensors on several ranks (DDP:
    the same averaged gradient everywhere) split the work; if not, each rank does every matrix, alone."""
    if is_dtensor(param):
        from torch.distributed.tensor import Shard

        if param.device_mesh.ndim == 1 and tuple(param.placements) == (Shard(0),):
            return _Sharded(param.device_mesh)
        return _Gathered(param)
    if split_replicated and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return _Replicated()
    return _SingleProcess()


def _buckets(params: list[Tensor]) -> list[list[Tensor]]:
    """The parameters grouped by shape, dtype and layout (each group one batched orthogonalization), in order."""
    buckets: dict[tuple, list[Tensor]] = {}
    for p in params:
        layout = (id(p.device_mesh), tuple(p.placements)) if is_dtensor(p) else None
        buckets.setdefault((tuple(p.shape), p.dtype, layout), []).append(p)
    return list(buckets.values())


def _momentum_at(steps: Tensor, group: dict, dtype: torch.dtype) -> Tensor:
    """beta after `steps` steps (a device tensor): linear from momentum_start to momentum over momentum_warmup."""
    start, end, warmup = group["momentum_start"], group["momentum"], group["momentum_warmup"]
    frac = torch.ones_like(steps, dtype=dtype) if warmup <= 0 else (steps.to(dtype) / warmup).clamp(max=1.0)
    return start * (1 - frac) + end * frac


def _matrices(shape: torch.Size, group: dict) -> torch.Size:
    """How Muon sees a parameter of `shape`: as it is, or with row_block N as rows // N matrices of N rows."""
    n = group["row_block"]
    return shape if not n else torch.Size((*shape[:-2], shape[-2] // n, n, shape[-1]))


def _per_row(view: torch.Size, group: dict) -> bool:
    """Whether NorMuon keeps one statistic per row of matrices shaped `view` (else one per column)."""
    return group["normuon_axis"] == "rows" or view[-2] >= view[-1]


def _moment_shape(shape: torch.Size, group: dict) -> torch.Size:
    """The shape of NorMuon's second moment for a parameter of `shape` (its matrices' rows or columns)."""
    view = _matrices(shape, group)
    return view[:-1] if _per_row(view, group) else view[:-2] + view[-1:]


def _decay_(params: list[Tensor], updates: list[Tensor], group: dict, lr: Tensor, strict: bool) -> None:
    """The group's decoupled weight decay, before the step p <- p - lr u: p <- p (1 - c), c = lr wd or wd lr^2
    (WD_SCHEDULES); with cautious_wd only where u p >= 0 (`strict`: > 0, as for Adam), p exactly kept elsewhere."""
    wd = group["weight_decay"]
    if wd == 0.0:
        return
    decay = lr * wd if group["wd_schedule"] == "lr" else lr.square() * wd
    if not group["cautious_wd"]:
        torch._foreach_mul_(params, 1 - decay)
        return
    products = torch._foreach_mul(updates, params)
    masks = [product > 0 if strict else product >= 0 for product in products]
    torch._foreach_mul_(params, [1 - decay * mask for mask in masks])


def _check_group(owner: str, group: dict) -> None:
    """The new group settings' values (the others are checked where they are read or by optim's settings table)."""
    if group.get("normuon_axis", "rows") not in NORMUON_AXES:
        raise ValueError(f"{owner}: normuon_axis must be one of {', '.join(NORMUON_AXES)}, got "
                         f"{group['normuon_axis']!r}")
    if group["wd_schedule"] not in WD_SCHEDULES:
        raise ValueError(f"{owner}: wd_schedule must be one of {', '.join(WD_SCHEDULES)}, got "
                         f"{group['wd_schedule']!r}")
    n = group.get("row_block", 0)
    if not isinstance(n, int) or n < 0 or (n and any(p.shape[-2] % n for p in group["params"])):
        raise ValueError(f"{owner}: row_block must be a whole number >= 0 dividing the rows of every matrix of its "
                         f"group, got {n!r}")


MUON_DEFAULTS = {
    "lr": 1.0,  # a multiplier of the optimizer's lr_tensor, as every group's lr
    "weight_decay": 0.0,
    "momentum": 0.95,  # Jordan's Muon and modded-nanogpt
    "momentum_start": 0.85,  # modded-nanogpt's warmup: 0.85 -> 0.95 over the first 300 steps
    "momentum_warmup": 300,
    "nesterov": True,
    "ns_steps": 5,
    "orthogonalizer": "polar_express",  # or "jordan" (ORTHOGONALIZERS)
    "normuon": False,
    "normuon_beta": 0.95,  # NorMuon's beta2 for the rows' second moment
    "normuon_axis": "rows",  # one statistic per row; "auto": per row if rows >= cols, else per column (the speedrun's)
    "row_block": 0,  # > 0: each matrix is rows // row_block matrices of row_block rows (Q/K per pair of heads)
    "cautious_wd": False,  # decay only where the update and the weight have the same sign
    "wd_schedule": "lr",  # WD_SCHEDULES
}
ADAM_DEFAULTS = {"lr": 1.0, "weight_decay": 0.0, "betas": (0.8, 0.95), "eps": 1e-10,  # modded-nanogpt's Adam
                 "cautious_wd": False, "wd_schedule": "lr"}
NORMUON_EPS = 1e-10
NORMUON_AXES = ("rows", "auto")
# Decoupled weight decay p <- p (1 - c) with lr = lr_tensor * group lr: c = lr wd ("lr", AdamW's), or wd lr^2 ("lr2",
# the speedrun's LR-tied decay: with Muon's lr 0.023 and wd 1.2 it is modded-nanogpt's eta lambda_t)
WD_SCHEDULES = ("lr", "lr2")


class Muon(torch.optim.Optimizer):
    """Muon for weight matrices (every parameter of dim >= 2; leading dims beyond 2 are a batch of matrices).

    Per step and matrix: m <- beta m + (1 - beta) g; u = orthogonalize(lerp(g, m, beta)) (Nesterov; m without it),
    optionally NorMuon's row normalisation, times sqrt(max(1, rows / cols)); then p <- p (1 - lr wd) - lr u, with
    lr = lr_tensor * group['lr']. beta warms up from momentum_start to momentum over momentum_warmup steps.
    Group settings beyond that: `normuon_axis` "auto" (per column when cols > rows), `row_block` N (each matrix as
    rows // N matrices of N rows: its own polar factor, NorMuon statistics and shape factor sqrt(max(1, N / cols))),
    `wd_schedule` "lr2" (decay wd lr^2) and `cautious_wd` (decay only where u p >= 0).
    Set `found_inf` (a 0-d float tensor, 1 = skip) before step() to skip on the device (optim.masked_step)."""

    def __init__(self, params, lr_tensor: Tensor, **muon_settings):
        self._init(params, lr_tensor, {"muon": _settings("muon", MUON_DEFAULTS, muon_settings)})

    def _init(self, params, lr_tensor: Tensor, kind_defaults: dict[str, dict]) -> None:
        if not isinstance(lr_tensor, Tensor) or lr_tensor.ndim != 0:
            raise TypeError("Muon: lr_tensor must be a 0-d tensor on the device (the trainer fills it every step)")
        self.lr_tensor, self._kind_defaults = lr_tensor, kind_defaults
        super().__init__(params, {})

    def add_param_group(self, param_group: dict) -> None:
        group = dict(param_group)
        kind = group.setdefault("kind", "muon")
        if kind not in self._kind_defaults:
            raise ValueError(f"{type(self).__name__}: group kind must be one of {', '.join(self._kind_defaults)}, "
                             f"got {kind!r}")
        defaults = self._kind_defaults[kind]
        unknown = set(group) - {"params", "kind", "name"} - set(defaults)
        if unknown:
            raise ValueError(f"{type(self).__name__}: unknown {kind} group settings {sorted(unknown)}")
        for key, value in defaults.items():
            group.setdefault(key, value)
        if isinstance(group["lr"], Tensor):
            raise ValueError(f"{type(self).__name__}: a group's lr is a float multiplier of lr_tensor, not a tensor")
        params = group["params"]
        group["params"] = [params] if isinstance(params, Tensor) else list(params)
        if kind == "muon" and any(p.dim() < 2 for p in group["params"]):
            raise ValueError(f"{type(self).__name__}: muon groups take matrices; give vectors and scalars to AdamW")
        _check_group(type(self).__name__, group)
        super().add_param_group(group)

    @torch.no_grad()
    def step(self, closure=None) -> None:
        if closure is not None:
            raise ValueError(f"{type(self).__name__} takes no closure")
        if getattr(self, "grad_scale", None) is not None:
            raise ValueError(f"{type(self).__name__}: gradients are never loss-scaled here (grad_scale must be None)")
        found_inf = getattr(self, "found_inf", None)  # set by masked_step; absent when others call step()
        skip = torch.zeros((), device=self.lr_tensor.device) if found_inf is None else found_inf.float()
        # DDP ranks split the orthogonalizations only in the trainer's (masked) steps, which every rank takes: a bare
        # step() may run on one rank alone (torch.distributed.checkpoint's state initialisation, on rank 0 under DDP)
        self._step_groups(skip, split_replicated=found_inf is not None)

    def _step_groups(self, skip: Tensor, split_replicated: bool) -> None:
        for group in self.param_groups:
            if group["kind"] == "muon":
                self._muon_group_step(group, skip, split_replicated)

    def _muon_group_step(self, group: dict, skip: Tensor, split_replicated: bool) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        keep = 1.0 - skip  # 0 on a skipped step: no weight, moment or count moves
        lr = self.lr_tensor * group["lr"] * keep
        for bucket in _buckets(params):  # same-shaped matrices, stacked: one kernel each step instead of one each
            states = [self._muon_state(p, group) for p in bucket]
            exchange, shape = _exchange_for(bucket[0], split_replicated), bucket[0].shape
            directions = self._momentum_update(bucket, states, group, keep, skip > 0)  # (count, *local shape)
            owned = [states[i] for i in exchange.owned(len(bucket))]
            shapes = [shape] + ([_moment_shape(shape, group)] if group["normuon"] else [])
            results = self._updates(group, owned, exchange.gather(directions, shape), keep, shapes)
            update, *extras = exchange.scatter(results, len(bucket), shapes)
            if group["normuon"]:  # the owners' new moments, now on every rank (checkpoints read rank 0's)
                torch._foreach_copy_([s["normuon_second_moment"] for s in states], list(extras[0].unbind(0)))
            local, updates = [_local(p) for p in bucket], list(update.unbind(0))
            _decay_(local, updates, group, lr, strict=False)
            # p <- p - lr u; lr is 0 on a skipped step, which leaves p exactly as it was
            torch._foreach_add_(local, list((update * -lr).unbind(0)))

    def _muon_state(self, p: Tensor, group: dict) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["momentum_buffer"] = torch.zeros_like(p)  # FSDP: a DTensor sharded like p
        if group["normuon"] and "normuon_second_moment" not in state:
            # one per row (or column) of each whole matrix, a plain tensor on every rank (small: not rows x cols)
            state["normuon_second_moment"] = torch.zeros(_moment_shape(p.shape, group), dtype=p.dtype,
                                                         device=p.device)
        return state

    def _momentum_update(self, bucket: list[Tensor], states: list[dict], group: dict, keep: Tensor,
                         skipped: Tensor) -> Tensor:
        """Update the bucket's momenta (this rank's shards) and step counts; return what is to be orthogonalized,
        stacked: lerp(g, m, beta) with Nesterov, else m."""
        grads = torch.where(skipped, 0.0, torch.stack([_local(p.grad) for p in bucket]))  # NaN/inf stay out
        buffers = [_local(s["momentum_buffer"]) for s in states]
        momentum = torch.stack(buffers)
        steps = torch.stack([s["step"] for s in states])
        beta = _momentum_at(steps, group, momentum.dtype).view(-1, *[1] * (momentum.ndim - 1))
        momentum.lerp_(grads, ((1 - beta) * keep).to(momentum.dtype))  # m <- beta m + (1 - beta) g; kept if skipped
        torch._foreach_copy_(buffers, list(momentum.unbind(0)))
        # (not _foreach_add_(steps, keep): with a tensor scalar it reads it on the host, a sync on CUDA)
        torch._foreach_copy_([s["step"] for s in states], list((steps + keep).unbind(0)))
        return grads.lerp(momentum, beta) if group["nesterov"] else momentum

    def _updates(self, group: dict, states: list[dict], matrices: Tensor, keep: Tensor,
                 shapes: list[torch.Size]) -> list[Tensor]:
        """The whole updates of the matrices this rank owns (stacked; with NorMuon: and their new moments). With
        row_block N each (rows, cols) matrix is seen as rows // N matrices (N, cols) from here to the end."""
        if matrices.size(0) == 0:
            return [matrices.new_empty(0, *shape) for shape in shapes]
        view = _matrices(shapes[0], group)
        updates = orthogonalize(matrices.reshape(-1, *view), group["ns_steps"], method=group["orthogonalizer"])
        results = []
        if group["normuon"]:
            old = torch.stack([s["normuon_second_moment"] for s in states])  # (owned, *_moment_shape)
            axis = -1 if _per_row(view, group) else -2  # reduced: one statistic per row, or per column
            moments = old.lerp(updates.square().mean(axis), ((1 - group["normuon_beta"]) * keep).to(old.dtype))
            normalized = updates / (moments.sqrt() + NORMUON_EPS).unsqueeze(axis)
            # NorMuon evens out the rows; each matrix keeps the Frobenius norm Muon gave it, so the LR means the same
            ratio = torch.linalg.vector_norm(updates, dim=(-2, -1), keepdim=True) / torch.linalg.vector_norm(
                normalized, dim=(-2, -1), keepdim=True).clamp_min(NORMUON_EPS)
            updates, results = normalized * ratio, [moments]
        rows, cols = view[-2], view[-1]  # rows: the fan-out of an (out, in) weight
        return [(updates * math.sqrt(max(1.0, rows / cols))).reshape(matrices.shape), *results]

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        for group in self.param_groups:  # settings saved before they existed: this optimizer's
            for key, value in self._kind_defaults[group.get("kind", "muon")].items():
                group.setdefault(key, value)
        for group in self.param_groups:  # step counts are fp32 device tensors (torch leaves them where they were)
            for p in group["params"]:
                state = self.state.get(p)
                if state and "step" in state:
                    state["step"] = state["step"].to(dtype=torch.float32, device=p.device)


def _settings(kind: str, defaults: dict, overrides: dict) -> dict:
    unknown = set(overrides) - set(defaults)
    if unknown:
        raise ValueError(f"unknown {kind} settings {sorted(unknown)}: use {', '.join(defaults)}")
    return {**defaults, **overrides}


class MuonAdamW(Muon):
    """One optimizer with two kinds of param groups: group['kind'] 'muon' (Muon above) and 'adam' (AdamW: betas,
    eps, weight_decay per group, PyTorch's fused kernel). Every group's lr multiplies lr_tensor. One optimizer, so
    that state_dict() and torch.distributed.checkpoint's name-keyed optimizer state dicts hold everything.
    An Adam group with weight decay and cautious_wd or wd_schedule "lr2" steps by the same AdamW written out, as the
    decay then needs the step u (bias-corrected): p <- p (1 - c [u p > 0]) - lr u (Muon's _decay_)."""

    def __init__(self, params, lr_tensor: Tensor, *, muon: dict | None = None, adam: dict | None = None):
        self._init(params, lr_tensor, {"muon": _settings("muon", MUON_DEFAULTS, muon or {}),
                                       "adam": _settings("adam", ADAM_DEFAULTS, adam or {})})

    def _step_groups(self, skip: Tensor, split_replicated: bool) -> None:
        super()._step_groups(skip, split_replicated)
        for group in self.param_groups:
            if group["kind"] == "adam":
                self._adam_group_step(group, skip)

    def _adam_group_step(self, group: dict, skip: Tensor) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        states = [self._adam_state(p) for p in params]
        if group["weight_decay"] != 0.0 and (group["cautious_wd"] or group["wd_schedule"] != "lr"):
            self._adam_written_out(group, params, states, skip)
            return
        beta1, beta2 = group["betas"]
        # the fused kernel skips the whole update where found_inf is 1, and the step counts are put back
        functional_adamw(
            [_local(p) for p in params], [_local(p.grad) for p in params],
            [_local(s["exp_avg"]) for s in states], [_local(s["exp_avg_sq"]) for s in states], [],
            [s["step"] for s in states], fused=True, grad_scale=None, found_inf=skip, amsgrad=False,
            beta1=beta1, beta2=beta2, lr=self.lr_tensor * group["lr"], weight_decay=group["weight_decay"],
            eps=group["eps"], maximize=False)

    def _adam_written_out(self, group: dict, params: list[Tensor], states: list[dict], skip: Tensor) -> None:
        """AdamW as the fused kernel computes it, with the group's decay rule; a skipped step (skip = 1) changes no
        weight, moment or count, as there."""
        skipped, keep = skip > 0, 1.0 - skip
        beta1, beta2 = group["betas"]
        updates = []
        for p, state in zip(params, states):
            grad = torch.where(skipped, 0.0, _local(p.grad))  # NaN/inf stay out
            exp_avg, exp_avg_sq = _local(state["exp_avg"]), _local(state["exp_avg_sq"])
            # the moments as the kernel computes them (float betas), kept as they were on a skipped step
            exp_avg.copy_(torch.where(skipped, exp_avg, exp_avg.lerp(grad, 1 - beta1)))
            exp_avg_sq.copy_(torch.where(skipped, exp_avg_sq, exp_avg_sq.mul(beta2).addcmul_(grad, grad,
                                                                                             value=1 - beta2)))
            state["step"].add_(keep)
            steps = state["step"].clamp(min=1)  # a skipped first step's bias corrections stay finite
            u = (exp_avg / (1 - beta1 ** steps)) / (exp_avg_sq.sqrt() / (1 - beta2 ** steps).sqrt() + group["eps"])
            updates.append(torch.where(skipped, 0.0, u))
        local, lr = [_local(p) for p in params], self.lr_tensor * group["lr"] * keep
        _decay_(local, updates, group, lr, strict=True)
        torch._foreach_add_(local, torch._foreach_mul(updates, -lr))

    def _adam_state(self, p: Tensor) -> dict:
        state = self.state[p]
        if not state:  # the keys and layout of torch.optim.AdamW's state
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        return state


# Adam groups' LR multipliers, relative to Muon's LR (-l): modded-nanogpt's record settings, Muon 0.05 with
# embeddings 0.6, head 0.008 and scalars 0.04, each divided by 0.05.
ADAM_LR_SCALES = {"embedding": 12.0, "head": 0.16, "scalar": 0.8}
# always all four, in this order, possibly empty (with qk_pairs, Muon groups of row blocks come after "muon")
MUON_GROUPS = ("muon", "embedding", "head", "scalar")


def muon_param_groups(model: nn.Module, weight_decay: float, adam_lr_scales: dict | None = None,
                      normuon: bool = False, *, qk_pairs: bool = False, embedding_wd: float = 0.0,
                      head_wd: float = 0.0) -> list[dict]:
    """The four groups of MUON_GROUPS: Muon for the matrices inside the transformer blocks (model.transformer.h),
    AdamW for every nn.Embedding weight (a head tied to one is listed once, as the embedding), the untied output
    head (lm_head.weight) and every parameter of dim < 2. A module marked `optimizer_group = "scalar"` (or another
    Adam group's name) has all its parameters in that group, whatever their shape. Weight decay on the Muon group,
    and `embedding_wd` / `head_wd` on those two. With `qk_pairs`, the weights of modules marked
    `muon_row_blocks = N` are Muon matrices of N-row blocks, in a group of their own after "muon"."""
    scales = _settings("adam_lr_scales", ADAM_LR_SCALES, adam_lr_scales or {})
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    head = getattr(getattr(model, "lm_head", None), "weight", None)
    blocks = getattr(getattr(model, "transformer", None), "h", None)
    in_blocks = {id(p) for p in blocks.parameters()} if blocks is not None else set()
    marked, row_blocks = _marked(model, qk_pairs)
    members: dict[str, list[Tensor]] = {name: [] for name in MUON_GROUPS}
    blocked: dict[int, list[Tensor]] = {}  # row_block -> its matrices
    for name, p in model.named_parameters():  # a tied tensor once
        if not p.requires_grad:
            continue
        if id(p) in marked:
            members[marked[id(p)]].append(p)
        elif id(p) in embeddings:
            members["embedding"].append(p)
        elif p is head:
            members["head"].append(p)
        elif p.dim() < 2:
            members["scalar"].append(p)
        elif id(p) in in_blocks or ".h." in name:
            (blocked.setdefault(row_blocks[id(p)], []) if id(p) in row_blocks else members["muon"]).append(p)
        else:
            raise LlmpyError(f"--optimizer muon: parameter {name} {tuple(p.shape)} is a matrix outside the "
                             f"transformer blocks that is neither an embedding nor lm_head; give it a group")
    if not any(members.values()) and not blocked:
        raise LlmpyError("optimizer: the model has no trainable parameters")
    muon = {"name": "muon", "kind": "muon", "params": members["muon"], "lr": 1.0, "weight_decay": weight_decay,
            "normuon": bool(normuon)}
    groups = [muon, *({**muon, "name": f"muon_row_blocks_{n}", "params": params, "row_block": n}
                      for n, params in blocked.items())]
    decay = {"embedding": embedding_wd, "head": head_wd, "scalar": 0.0}
    for name in MUON_GROUPS[1:]:
        groups.append({"name": name, "kind": "adam", "params": members[name], "lr": scales[name],
                       "weight_decay": decay[name]})
    return groups


def _marked(model: nn.Module, qk_pairs: bool) -> tuple[dict[int, str], dict[int, int]]:
    """The Adam group of each parameter of a module marked `optimizer_group = name` (by id); with `qk_pairs`, the
    row block of each weight whose module is marked `muon_row_blocks = N`."""
    marked, row_blocks = {}, {}
    for name, module in model.named_modules():
        group = getattr(module, "optimizer_group", None)
        if group is not None:
            if group not in MUON_GROUPS[1:]:
                raise LlmpyError(f"--optimizer muon: module {name or type(module).__name__} has optimizer_group "
                                 f"{group!r}; the markers are {', '.join(MUON_GROUPS[1:])}")
            marked.update((id(p), group) for p in module.parameters())
        n = getattr(module, "muon_row_blocks", None)
        if qk_pairs and n is not None:
            weight = getattr(module, "weight", None)
            if not isinstance(n, int) or isinstance(n, bool) or n <= 0 or weight is None or weight.dim() != 2 \
                    or (weight.shape[0] > n and weight.shape[0] % n):
                raise LlmpyError(f"--optimizer-args qk_pairs=1: module {name} has muon_row_blocks {n!r}, which must "
                                 f"be a whole number > 0 dividing the rows of its 2-D weight (else use qk_pairs=0)")
            if weight.shape[0] > n:  # a matrix of at most N rows (a single head) is one block: as it is
                row_blocks[id(weight)] = n
    return marked, row_blocks


def build_muon(model: nn.Module, lr: Tensor, weight_decay: float, *, adam_lr_scales: dict | None = None,
               normuon: bool = False, qk_pairs: bool = False, embedding_wd: float = 0.0, head_wd: float = 0.0,
               **muon_settings) -> MuonAdamW:
    """Muon (LR = `lr`, the schedule's tensor) for the blocks' matrices, AdamW for the rest (muon_param_groups).
    `muon_settings`: MUON_DEFAULTS' settings; cautious_wd and wd_schedule are the Adam groups' too."""
    groups = muon_param_groups(model, weight_decay, adam_lr_scales, normuon, qk_pairs=qk_pairs,
                               embedding_wd=embedding_wd, head_wd=head_wd)
    shared = {key: muon_settings[key] for key in ("cautious_wd", "wd_schedule") if key in muon_settings}
    return MuonAdamW(groups, lr, muon=muon_settings, adam=shared)
