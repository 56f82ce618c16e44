"""Process-group set-up from torchrun's environment: nccl on GPU, gloo on CPU, one code path.

Run without torchrun (plain `python -m kubetune_trainer`), the process makes
itself a world of one, so the same program works on a laptop.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job, as torchrun describes it."""

    rank: int = 0
    """Global rank."""
    local_rank: int = 0
    """Rank on this node (selects the GPU)."""
    world_size: int = 1
    """Processes in the job."""

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that logs and writes shared outputs."""
        return self.rank == 0


def dist_env(environ: Mapping[str, str]) -> DistEnv:
    """Read RANK, LOCAL_RANK and WORLD_SIZE (absent: a world of one)."""
    return DistEnv(
        rank=int(environ.get("RANK", "0")),
        local_rank=int(environ.get("LOCAL_RANK", "0")),
        world_size=int(environ.get("WORLD_SIZE", "1")),
    )


def backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def device(env: DistEnv) -> torch.device:
    return torch.device("cuda", env.local_rank) if torch.cuda.is_available() else torch.device("cpu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_world() -> DistEnv:
    """This process's place as torchrun set it in the environment; outside torchrun, a world of
    one (whose rendezvous variables this sets, for init_distributed)."""
    if "RANK" not in os.environ:  # not under torchrun: a single process
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    return dist_env(os.environ)


def init_distributed(env: DistEnv, timeout_seconds: float | None = None) -> None:
    """Join the process group of `env` (torchrun's, or a world of one) through DeepSpeed; a
    collective fails after `timeout_seconds` (default: torch's, 30 minutes)."""
    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank)
    import deepspeed

    if not torch.cuda.is_available():
        _skip_shm_comm_op()
    kwargs = {} if timeout_seconds is None else {"timeout": timedelta(seconds=timeout_seconds)}
    deepspeed.init_distributed(dist_backend=backend(), auto_mpi_discovery=False, **kwargs)


def _skip_shm_comm_op() -> None:
    """Do not JIT-compile DeepSpeed's CPU shared-memory collective op.

    DeepSpeed's CPU backend compiles it (about a minute on two cores, with ninja and a C++
    compiler that a container may not have) when the process group starts, but uses it only
    for inference_all_reduce (tensor-parallel inference); training collectives go through
    torch.distributed (gloo) whether it exists or not.
    """
    import importlib

    # By module path: `from deepspeed.comm import torch` is the torch package itself.
    ds_torch_comm = importlib.import_module("deepspeed.comm.torch")
    if hasattr(ds_torch_comm, "build_shm_op"):
        setattr(ds_torch_comm, "build_shm_op", lambda: None)  # noqa: B010 - a module of DeepSpeed's


def destroy_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: Sequence[float], env: DistEnv) -> list[float]:
    """Element-wise sum of `values` over all ranks (identity in a world of one)."""
    if env.world_size == 1 or not dist.is_initialized():
        return [float(v) for v in values]
    tensor = torch.tensor(list(values), dtype=torch.float64, device=device(env))
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return [float(v) for v in tensor.tolist()]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(value: T, env: DistEnv) -> T:
    """Rank 0's `value` on every rank (a picklable object)."""
    if env.world_size == 1 or not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
