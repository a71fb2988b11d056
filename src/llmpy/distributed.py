"""Process groups from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) or, for `srun`
without torchrun, SLURM's (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, with MASTER_ADDR/MASTER_PORT set by the job
script): NCCL on CUDA, gloo on CPU. A world of one needs no process group at all, so single-device runs pay nothing
(unless a sharded `-z` asks for one under torchrun, which lets FSDP run, and be checked, on one GPU)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from llmpy.errors import LlmpyError

DEFAULT_MASTER_PORT = "29500"  # torchrun's default too


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


@dataclass(frozen=True)
class Launch:
    """What the launcher told this process: its place in the job and where the ranks meet."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False  # a launcher (torchrun or srun) gave this process a rank
    init_method: str | None = None  # None: torchrun's env://; srun: tcp://MASTER_ADDR:MASTER_PORT


def _from_slurm(environ: Mapping[str, str]) -> Launch | None:
    """`srun python -m llmpy train ...` (one task per GPU, no torchrun): rank and size from SLURM's variables."""
    if "WORLD_SIZE" in environ or int(environ.get("SLURM_NTASKS", "1")) <= 1 or "SLURM_PROCID" not in environ:
        return None
    if "MASTER_ADDR" not in environ:
        raise LlmpyError("srun without torchrun: export MASTER_ADDR (the first node, e.g. from `scontrol show "
                         "hostnames $SLURM_JOB_NODELIST | head -n1`) and MASTER_PORT in the job script")
    return Launch(rank=int(environ["SLURM_PROCID"]), world_size=int(environ["SLURM_NTASKS"]),
                  local_rank=int(environ.get("SLURM_LOCALID", "0")), launched=True,
                  init_method=f"tcp://{environ['MASTER_ADDR']}:{environ.get('MASTER_PORT', DEFAULT_MASTER_PORT)}")


def launch_from_env(environ: Mapping[str, str] = os.environ) -> Launch:
    """This process's Launch from torchrun's variables, else SLURM's; a world of one when neither is set."""
    slurm = _from_slurm(environ)
    if slurm is not None:
        return slurm
    return Launch(rank=int(environ.get("RANK", "0")), world_size=int(environ.get("WORLD_SIZE", "1")),
                  local_rank=int(environ.get("LOCAL_RANK", "0")), launched="RANK" in environ)


def init_distributed(use_cuda: bool, group_of_one: bool = False) -> Distributed:
    """Join the job torchrun (or srun) started, if any. `group_of_one`: make a process group even for a world of one
    when launched by torchrun (FSDP needs one). A dead rank surfaces as an error after the timeout, not a hang."""
    launch = launch_from_env()
    if launch.world_size < 1 or (launch.world_size == 1 and not (group_of_one and launch.launched)):
        return Distributed()
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(launch.local_rank)
        timeout = timedelta(seconds=int(os.environ.get("LLMPY_DIST_TIMEOUT", "600")))
        backend = "nccl" if use_cuda else "gloo"
        try:
            if launch.init_method is None:
                dist.init_process_group(backend, timeout=timeout)  # env://: torchrun's MASTER_ADDR, RANK, ...
            else:
                dist.init_process_group(backend, init_method=launch.init_method, rank=launch.rank,
                                        world_size=launch.world_size, timeout=timeout)
        except Exception as exc:
            raise LlmpyError(
                f"rank {launch.rank}: cannot join the process group ({type(exc).__name__}: {exc})") from None
    return Distributed(rank=launch.rank, world_size=launch.world_size, local_rank=launch.local_rank)


def leave_distributed(code: int) -> None:
    """End a rank of a finished (or preempted) job now, with exit status `code`, once its output is flushed; a
    process that is not in a process group just returns. PyTorch's gloo process group cannot be torn down safely
    by the interpreter: left to exit, its threads can abort the rank ("terminate called without an active
    exception"); destroyed from Python, its destructor joins a thread that waits for the GIL the destructor holds
    (both seen on 2 CPU ranks, torch 2.13). Every file is closed by then: checkpoints are written, logs closed."""
    if not dist.is_initialized():
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def is_dtensor(t: object) -> bool:
    """isinstance(t, DTensor) without importing torch.distributed.tensor (0.6 s of a CLI start on 2 cores): while
    nothing has imported it, as FSDP2 does, nothing can be a DTensor."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


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
