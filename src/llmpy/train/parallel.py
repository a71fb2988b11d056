"""How the model is spread over the ranks (`-z`), and everything that depends on it: wrapping, gradient sync during
accumulation, the gradient norm, and full (world-size independent) state dicts for checkpoints.

- `-z 0`: DistributedDataParallel. Every rank holds the whole model and optimizer; gradients are all-reduced in
  buckets that overlap the backward pass, only on the last micro-step of an accumulation (no_sync before).
- `-z 1`: FSDP2 `fully_shard(reshard_after_forward=False)`: optimizer state (and gradients) sharded over the ranks,
  the parameters stay gathered from forward to backward, gradients are reduce-scattered once per step (on the last
  micro-step). This is llm.c's `-z 1` memory saving (optimizer state / N) and a little more (gradients / N).
- `-z 3`: FSDP2 full sharding: parameters, gradients and optimizer state are sharded, each block's parameters are
  all-gathered for its forward and again for its backward; gradients are reduce-scattered every micro-step, so no
  rank ever holds a whole model's gradient. For the large models.

On CUDA in bf16, FSDP keeps fp32 master weights and optimizer state, gathers parameters in bf16 for compute and
reduces gradients in fp32 (MixedPrecisionPolicy). On CPU (gloo) everything is fp32, which is what makes the tests'
"2 ranks = 1 rank with accumulation 2 within 1e-6" checks possible for every mode.

Checkpoints always hold full state dicts (weights as one `model_%08d.pt`, optimizer state keyed by parameter name),
gathered on rank 0. A run can therefore resume with another number of GPUs or another `-z`: the loader's position
is counted in whole `-d` batches, which do not depend on the world size.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from llmpy.distributed import Distributed, is_dtensor
from llmpy.errors import LlmpyError
from llmpy.families import is_tied
from llmpy.loss import CrossEntropyLoss, ModelWithLoss
from llmpy.runtime import Runtime

ZERO_STAGE_NAMES = {0: "DDP", 1: "ZeRO-1 (FSDP2, sharded optimizer state and gradients)", 3: "FSDP2 (full sharding)"}
_TIED = ("lm_head.weight", "transformer.wte.weight")  # (tied copy, stored name)


@dataclass
class ParallelModel:
    """One handle on the model of a job: the plain module and what the steps run, and the operations whose form
    depends on how it is spread over the ranks."""

    module: nn.Module  # the model itself (for FSDP: the same object, its parameters now sharded DTensors)
    train_module: nn.Module  # ModelWithLoss, wrapped in DDP and maybe compiled: (idx, targets) -> mean loss
    job: Distributed
    zero_stage: int = 0
    ddp: nn.Module | None = None

    @property
    def sharded(self) -> bool:
        """FSDP: every rank must take part in every forward pass (evals, sampling) and in gathering state."""
        return self.zero_stage in (1, 3) and dist.is_initialized()

    @property
    def description(self) -> str:
        if not dist.is_initialized():
            return "single process"
        return f"{self.job.world_size} ranks, -z {self.zero_stage}: {ZERO_STAGE_NAMES[self.zero_stage]}"

    def set_grad_sync(self, micro_step: int, accum_steps: int) -> None:
        """Synchronise gradients only where needed: DDP and -z 1 on the last micro-step, -z 3 on every one."""
        last = micro_step == accum_steps - 1
        if self.ddp is not None:
            self.ddp.require_backward_grad_sync = last
        elif self.sharded and self.zero_stage == 1:
            self.module.set_requires_gradient_sync(last)

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        """The global (unclipped) gradient norm as a plain fp32 tensor on the device, after scaling the gradients
        down to norm `max_norm` where it is above. Under FSDP each rank sums the squares of its shards and one
        all-reduce adds them up: the same number as one rank's, whatever the shard sizes.

        On the CPU the norms are taken in fp64: PyTorch's CPU fp32 norm kernel accumulates without a cascade, which
        puts a 2M-element gradient's norm ~4e-5 (relative) off, and differently for every shard size (so 2 FSDP
        ranks disagreed with 1 rank by 8e-6). CUDA's fp32 reduction is a tree, accurate to ~1e-7: it stays fp32."""
        grads = [p.grad for p in self.module.parameters() if p.grad is not None]
        local = [g.to_local() if is_dtensor(g) else g for g in grads]  # FSDP: this rank's shard
        dtype = torch.float64 if local[0].device.type == "cpu" else torch.float32
        squares = torch.stack(torch._foreach_norm(local, 2, dtype=dtype)).square().sum()
        if any(is_dtensor(g) for g in grads):
            dist.all_reduce(squares)  # the shards' sums of squares (every parameter is sharded over all ranks)
        norm = squares.sqrt()
        if math.isfinite(max_norm):
            scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
            torch._foreach_mul_(local, scale.to(local[0].dtype))
        return norm.float()

    def full_state(self, optimizer: torch.optim.Optimizer | None = None) -> dict | None:
        """The whole model state dict (or, with `optimizer`, its state keyed by parameter name) on rank 0's CPU;
        None elsewhere. A collective for FSDP: every rank calls it."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
        )

        if not self.sharded and not self.job.is_main:
            return None  # DDP: identical everywhere, rank 0 has it all
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        if optimizer is None:
            state = get_model_state_dict(self.module, options=options)
            if is_tied(self.module.config):
                state.pop(_TIED[0], None)
        else:
            with _float_learning_rates(optimizer):
                state = get_optimizer_state_dict(self.module, optimizer, options=options)
        return state if self.job.is_main else None

    def load_full_state(self, model_state: dict | None, optimizer: torch.optim.Optimizer | None = None,
                        optim_state: dict | None = None) -> None:
        """Load a whole state dict (as `full_state` returns it) into this job's layout: the model's, or with
        `optimizer`, the optimizer's. For FSDP only rank 0 needs it (the others pass None): it is broadcast."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        if optimizer is None and model_state is not None and is_tied(self.module.config):
            model_state = dict(model_state, **{_TIED[0]: model_state[_TIED[1]]})
        if optimizer is not None:
            # a checkpoint brings the moments and step counts; the hyperparameters stay this run's: the LR is the
            # schedule's device tensor (a saved float would detach it), betas, decay and `fused` come from the flags
            settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
            self._load_optimizer(optimizer, optim_state)
            for group, kept in zip(optimizer.param_groups, settings):
                group.update(kept)
            return
        if self.sharded:
            options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
            set_model_state_dict(self.module, model_state or {}, options=options)
            return
        if model_state is None:
            raise LlmpyError("internal: a non-sharded run needs the whole state on every rank")
        self.module.load_state_dict(model_state)

    def _load_optimizer(self, optimizer: torch.optim.Optimizer, optim_state: dict | None) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        if not self.sharded and optim_state is None:
            raise LlmpyError("internal: a non-sharded run needs the whole state on every rank")
        if not self.sharded and all(isinstance(key, int) for key in optim_state.get("state", {})):
            optimizer.load_state_dict(optim_state)  # keyed by index, as llmpy 0.1 saved it
            return
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=self.sharded)
        with _float_learning_rates(optimizer):
            set_optimizer_state_dict(self.module, optimizer, optim_state or {}, options=options)


@contextlib.contextmanager
def _float_learning_rates(optimizer: torch.optim.Optimizer):
    """While torch.distributed.checkpoint's helpers run: plain-float learning rates. They may take a zero-LR step to
    create missing optimizer state, putting a CPU tensor where a CUDA tensor belongs; floats avoid that, and the
    saved state holds floats as llmpy 0.1's did. (Reading the tensor is a host sync, at checkpoint time only.)"""
    kept = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"] = float(group["lr"])
    try:
        yield
    finally:
        for group, lr in zip(optimizer.param_groups, kept):
            group["lr"] = lr


class ModelState:
    """The model's weights as a Stateful piece for the checkpoint manager (whole, on rank 0)."""

    def __init__(self, model: ParallelModel):
        self.model = model

    def state_dict(self) -> dict | None:
        return self.model.full_state()

    def load_state_dict(self, state: dict | None) -> None:
        self.model.load_full_state(state)


class OptimizerState:
    """The optimizer's state, keyed by parameter name (so it loads on any world size or -z), as a Stateful piece."""

    def __init__(self, model: ParallelModel, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict | None:
        return self.model.full_state(self.optimizer)

    def load_state_dict(self, state: dict | None) -> None:
        self.model.load_full_state(None, self.optimizer, state)


def compiled(module: nn.Module, mode: str | None) -> nn.Module:
    """torch.compile(module) in --compile-mode `mode` (None: not compiled), with static shapes: each micro-batch
    shape (auto-batch probes several) gets its own graph, and training never runs dynamic-shape kernels.
    "tuned" is the default mode with Inductor's coordinate-descent tuning of its generated kernels."""
    if mode is None:
        return module
    if mode == "tuned":  # an Inductor option for this model's compilation only
        return torch.compile(module, dynamic=False, options={"coordinate_descent_tuning": True})
    return torch.compile(module, dynamic=False, mode=None if mode == "default" else mode)


def parallelize(module: nn.Module, loss: CrossEntropyLoss, runtime: Runtime, job: Distributed, zero_stage: int,
                compile_mode: str | None) -> ParallelModel:
    """Wrap `module` (already on its device) and its loss for this job and `-z`; compile in `compile_mode`."""
    train_module = ModelWithLoss(module, loss)
    if not dist.is_initialized():
        return ParallelModel(module, compiled(train_module, compile_mode), job, zero_stage)
    if zero_stage == 0:
        from torch.nn.parallel import DistributedDataParallel

        # every buffer is computed alike on each rank (masks, rotary tables, the bigram signs, a schedule's values set
        # by the step): nothing to broadcast before each forward pass (the bigram's signs alone are 25 MB at d12)
        ddp = DistributedDataParallel(train_module, device_ids=[runtime.device.index] if runtime.is_cuda else None,
                                      broadcast_buffers=False)
        return ParallelModel(module, compiled(ddp, compile_mode), job, 0, ddp)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(runtime.device.type, (job.world_size,))
    policy = MixedPrecisionPolicy()  # fp32 throughout
    if runtime.is_cuda and runtime.precision == "bf16":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    reshard = zero_stage == 3
    for block in module.transformer.h:
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
    # the root unit holds the embeddings, the tied head and the final LayerNorm: whatever uses the head (the loss,
    # logits for sampling) runs inside the root's forward, through its `output` argument, where they are gathered
    fully_shard(module, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
    return ParallelModel(module, compiled(train_module, compile_mode), job, zero_stage)
