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

from dataclasses import dataclass

import torch
import torch.distributed as dist

from llmpy.distributed import Distributed
from llmpy.errors import LlmpyError
from llmpy.model import GPT
from llmpy.runtime import Runtime

ZERO_STAGES = {0: "DDP", 1: "ZeRO-1 (FSDP2, sharded optimizer state and gradients)", 3: "FSDP2 (full sharding)"}


@dataclass
class Parallelism:
    """The wrapped model for one job, and the operations whose form depends on the wrapping."""

    raw_model: GPT  # the GPT module (for FSDP: the same object, its parameters now sharded DTensors)
    model: torch.nn.Module  # what the training step calls: DDP wrapper or FSDP module, maybe compiled
    job: Distributed
    zero_stage: int = 0
    ddp: torch.nn.Module | None = None

    @property
    def sharded(self) -> bool:
        """FSDP: every rank must take part in every forward pass (evals, sampling) and in gathering state."""
        return self.zero_stage in (1, 3) and dist.is_initialized()

    @property
    def description(self) -> str:
        if not dist.is_initialized():
            return "single process"
        return f"{self.job.world_size} ranks, -z {self.zero_stage}: {ZERO_STAGES[self.zero_stage]}"

    def set_grad_sync(self, micro_step: int, accum_steps: int) -> None:
        """Synchronise gradients only where needed: DDP and -z 1 on the last micro-step, -z 3 on every one."""
        last = micro_step == accum_steps - 1
        if self.ddp is not None:
            self.ddp.require_backward_grad_sync = last
        elif self.sharded and self.zero_stage == 1:
            self.raw_model.set_requires_gradient_sync(last)

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        """The global (unclipped) gradient norm as a plain tensor, after clipping to `max_norm`."""
        norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), max_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def full_state(self, optimizer: torch.optim.Optimizer) -> tuple[dict | None, dict | None]:
        """(model state, optimizer state keyed by parameter name), whole, on rank 0's CPU; (None, None) elsewhere.
        A collective for FSDP: every rank calls it."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
        )

        if not self.sharded and not self.job.is_main:
            return None, None  # DDP: identical everywhere, rank 0 has it all
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(self.raw_model, options=options)
        optim_state = get_optimizer_state_dict(self.raw_model, optimizer, options=options)
        if not self.job.is_main:
            return None, None
        model_state.pop("lm_head.weight", None)  # tied to transformer.wte.weight
        return model_state, optim_state

    def load_full_state(self, optimizer: torch.optim.Optimizer, model_state: dict | None,
                        optim_state: dict | None) -> None:
        """Load whole state dicts (as `full_state` returns them) into this job's layout. For FSDP only rank 0 needs
        them (the others pass None) and the shards are broadcast from it."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions, set_model_state_dict, set_optimizer_state_dict,
        )

        if self.sharded:
            options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
            if model_state is not None:
                model_state = dict(model_state, **{"lm_head.weight": model_state["transformer.wte.weight"]})
            set_model_state_dict(self.raw_model, model_state or {}, options=options)
            set_optimizer_state_dict(self.raw_model, optimizer, optim_state or {}, options=options)
            return
        if model_state is None or optim_state is None:
            raise LlmpyError("internal: a non-sharded run needs the whole state on every rank")
        self.raw_model.load_state_dict(dict(model_state, **{"lm_head.weight": model_state["transformer.wte.weight"]}))
        if all(isinstance(key, int) for key in optim_state.get("state", {})):  # llmpy 0.1 checkpoints: index-keyed
            optimizer.load_state_dict(optim_state)
        else:
            set_optimizer_state_dict(self.raw_model, optimizer, optim_state,
                                     options=StateDictOptions(full_state_dict=True))


def compiled(module: torch.nn.Module, mode: str | None) -> torch.nn.Module:
    """torch.compile(module) in --compile-mode `mode` (None: not compiled). "tuned" is the default mode with
    Inductor's coordinate-descent tuning of the block sizes of its generated kernels (a longer first step)."""
    if mode is None:
        return module
    if mode == "tuned":  # an Inductor option for this model's compilation only
        return torch.compile(module, options={"coordinate_descent_tuning": True})
    return torch.compile(module, mode=None if mode == "default" else mode)


def parallelize(raw_model: GPT, runtime: Runtime, job: Distributed, zero_stage: int,
                compile_mode: str | None) -> Parallelism:
    """Wrap `raw_model` (already on its device) for this job and `-z`; compile in `compile_mode` (None: eager)."""
    if not dist.is_initialized():
        return Parallelism(raw_model, compiled(raw_model, compile_mode), job, zero_stage)
    if zero_stage == 0:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(raw_model, device_ids=[runtime.device.index] if runtime.is_cuda else None)
        return Parallelism(raw_model, compiled(ddp, compile_mode), job, 0, ddp)
    if zero_stage not in (1, 3):
        raise LlmpyError(f"-z {zero_stage}: use 0 (DDP), 1 (sharded optimizer state) or 3 (full sharding)")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(runtime.device.type, (job.world_size,))
    policy = MixedPrecisionPolicy()  # fp32 throughout
    if runtime.is_cuda and runtime.precision == "bf16":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    reshard = zero_stage == 3
    for block in raw_model.transformer.h:
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
    # the root unit holds the embeddings, the tied head and the final LayerNorm
    fully_shard(raw_model, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard)
    return Parallelism(raw_model, compiled(raw_model, compile_mode), job, zero_stage)
