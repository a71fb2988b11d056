"""Process groups from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) or, for `srun`
without torchrun, SLURM's (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, with MASTER_ADDR/MASTER_PORT set by the job
script): NCCL on CUDA, gloo on CPU. A world of one needs no process group at all, so single-device runs pay nothing
(unless a sharded `-z` asks for one under torchrun, which lets FSDP run, and be checked, on one GPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from llmpy.errors import LlmpyError


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _from_slurm() -> None:
    """`srun python -m llmpy train ...` (one task per GPU, no torchrun): take rank and size from SLURM."""
    if "WORLD_SIZE" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1 or "SLURM_PROCID" not in os.environ:
        return
    if "MASTER_ADDR" not in os.environ:
        raise LlmpyError("srun without torchrun: export MASTER_ADDR (the first node, e.g. from `scontrol show "
                         "hostnames $SLURM_JOB_NODELIST | head -n1`) and MASTER_PORT in the job script")
    os.environ.setdefault("MASTER_PORT", "29500")
    os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")


def init_distributed(use_cuda: bool, group_of_one: bool = False) -> Distributed:
    """Join the job torchrun (or srun) started, if any. `group_of_one`: make a process group even for a world of one
    when launched by torchrun (FSDP needs one). A dead rank surfaces as an error after the timeout, not a hang."""
    _from_slurm()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size < 1 or (world_size == 1 and not (group_of_one and "RANK" in os.environ)):
        return Distributed()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        timeout = timedelta(seconds=int(os.environ.get("LLMPY_DIST_TIMEOUT", "600")))
        try:
            dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout)
        except Exception as exc:
            raise LlmpyError(f"rank {rank}: cannot join the process group ({type(exc).__name__}: {exc})") from None
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank)


def all_reduce_mean(value: torch.Tensor, job: Distributed) -> torch.Tensor:
    """The mean of `value` over all ranks (itself in a world of one)."""
    if job.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= job.world_size
    return value


def barrier(job: Distributed) -> None:
    if dist.is_initialized():
        dist.barrier()


def check_same_everywhere(value: dict, what: str) -> None:
    """Every rank must have been started with the same `value` (e.g. the training config): a rank with other flags
    would train something else silently or hang in a collective. Names the first differing rank and keys."""
    if not dist.is_initialized():
        return
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    for rank, other in enumerate(gathered):
        if other != gathered[0]:
            keys = sorted(k for k in set(other) | set(gathered[0]) if other.get(k) != gathered[0].get(k))
            raise LlmpyError(f"rank {rank} was started with another {what} than rank 0 (differs in: "
                             f"{', '.join(keys)}); launch every rank with the same arguments")



def broadcast_object(value):
    """Rank 0's `value` on every rank (picklable objects; itself without a process group)."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
