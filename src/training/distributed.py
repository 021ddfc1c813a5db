"""Process-group set-up from torchrun's environment, and the few collectives the loop needs.

Everything here is a no-op in a single process, so tasks call these unconditionally.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

from src.errors import DataError, TrainingError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when present; under torchrun each rank takes ``cuda:LOCAL_RANK``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
            raise DataError(f"{name}: CUDA is not available on this machine (use cpu)", param="device")
    if name == "cuda":
        name = f"cuda:{local_rank}"
    return torch.device(name)


def init_distributed(device: str) -> DistInfo:
    """Join the process group when started by torchrun (``WORLD_SIZE`` > 1); gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world, local_rank)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (a one-item list in a single process)."""
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few floats over ranks (one collective)."""
    if not is_dist():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True if ``flag`` is true on any rank; keeps ranks in lock-step when one must skip a step."""
    if not is_dist():
        return flag
    return all_reduce_sum([float(flag)], device)[0] > 0


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Every rank takes rank ``src``'s buffers (BatchNorm running statistics): DDP keeps parameters
    equal, but each rank's last forward updated its own statistics from its own batch."""
    if not is_dist():
        return
    for buf in module.buffers():
        dist.broadcast(buf.data, src)


def on_rank0(fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0 alone (building a cache, generating demo data, making the run directory);
    every rank gets its result. When it raises :class:`DataError` or :class:`TrainingError`, every
    rank raises the same error, so each exits with the same one line instead of the waiting ranks
    dying on a closed connection."""
    if not is_dist():
        return fn()
    payload: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            payload = [("ok", fn())]
        except (DataError, TrainingError) as exc:
            payload = [("error", type(exc) is TrainingError, str(exc), getattr(exc, "param", None))]
        except BaseException:
            payload = [("error", True, "rank 0 failed (its traceback is above)", None)]
            dist.broadcast_object_list(payload, src=0)
            raise
    dist.broadcast_object_list(payload, src=0)
    if payload[0][0] == "ok":
        return payload[0][1]
    _, training, message, param = payload[0]
    raise TrainingError(message) if training else DataError(message, param=param)


def barrier() -> None:
    if is_dist():
        dist.barrier()
