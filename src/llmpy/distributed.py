"""Process groups from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT): NCCL on CUDA, gloo
on CPU; a world of one needs no process group at all, so single-device runs pay nothing."""

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


def init_distributed(use_cuda: bool) -> Distributed:
    """Join the job torchrun started (if any). A dead rank surfaces as an error after the timeout, not a hang."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
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
    if job.enabled:
        dist.barrier()
