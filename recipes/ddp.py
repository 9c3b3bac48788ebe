"""What the training recipes need to run under `torchrun --nproc_per_node N` (DistributedDataParallel).

`setup` reads torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK): without it, or with WORLD_SIZE 1,
nothing is initialised and every helper is a no-op, so a plain `python recipes/train_bundled.py` runs
exactly as it did before. With it, the process group uses NCCL on CUDA devices (one GPU per local
rank) and gloo on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

#: How long a rank waits in a collective. Rank 0 evaluates on its own while the others wait in the next
#: step's all-reduce, so this must cover the longest evaluation (minutes on the CPU), not just a step.
TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class Context:
    """Where this process stands in the run.

    Attributes:
        rank: Global rank (0 alone evaluates, logs and writes files).
        world: Number of processes; 1 means no process group.
        device: This process's training device (``cuda:LOCAL_RANK`` under DDP on GPUs).
    """

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: str) -> Context:
    """Initialise the process group when started by torchrun with more than one process.

    Args:
        device: ``"cpu"`` or ``"cuda"``; under DDP ``"cuda"`` becomes ``cuda:LOCAL_RANK``.

    Returns:
        The process's `Context` (rank 0 of 1 on ``device`` when not distributed).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context(device=torch.device(device))
    if not dist.is_available():
        raise SystemExit("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    rank, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda but no CUDA GPU is available")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)  # NCCL collectives and *_object helpers use the current device
        dist.init_process_group("nccl", timeout=TIMEOUT)
    else:
        dev = torch.device("cpu")
        dist.init_process_group("gloo", timeout=TIMEOUT)
    return Context(rank=rank, world=world, device=dev)


def rank_seed(seed: int, rank: int) -> int:
    """A seed of its own for each rank's data stream; rank 0 keeps `seed` (the single-process stream)."""
    return seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def wrap(model: torch.nn.Module, ctx: Context) -> torch.nn.Module:
    """`model` inside DistributedDataParallel (which broadcasts rank 0's weights), or `model` itself.

    BatchNorm stays plain BatchNorm with DDP's default `broadcast_buffers`: each forward starts from
    rank 0's running statistics, and each rank normalises with its own batch, which is the recipe's
    per-rank batch as in a single process. SyncBatchNorm would normalise over the global batch, but
    it does not run on the CPU (gloo), and the per-rank batch already gives the statistics the
    single-process recipe was tuned with.
    """
    if not ctx.distributed:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def broadcast_float(value: float, ctx: Context) -> float:
    """Rank 0's `value` on every rank (a float64 on the device the backend expects)."""
    if not ctx.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.broadcast(t, src=0)
    return float(t.item())


def gather(obj, ctx: Context) -> list:
    """Every rank's picklable `obj`, in rank order, on every rank (``[obj]`` when not distributed)."""
    if not ctx.distributed:
        return [obj]
    out: list = [None] * ctx.world
    dist.all_gather_object(out, obj)
    return out


def sync_buffers(model: torch.nn.Module, ctx: Context) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    The parameters agree after every optimizer step (the gradients are all-reduced), but each rank's
    last forward updated its running statistics from its own batch; this is the broadcast DDP would do
    at the next forward, so that every rank ends with the same state.
    """
    if not ctx.distributed:
        return
    for b in model.buffers():
        dist.broadcast(b.data, src=0)


def barrier(ctx: Context) -> None:
    """Wait for every rank (no-op when not distributed)."""
    if ctx.distributed:
        dist.barrier()


def teardown(ctx: Context) -> None:
    """Leave the process group (no-op when not distributed)."""
    if ctx.distributed:
        dist.destroy_process_group()
