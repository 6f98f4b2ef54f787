"""Scale-out with ``torchrun`` (torch.distributed): two modes.

* ``ddp`` — data parallel: every rank holds every dictionary, reads its own disjoint share of
  the data (store shards dealt by rank; streamed buffer refills taken in turn), and torch's
  ``DistributedDataParallel`` averages the gradients, so all ranks keep identical weights.
  Dead-latent counters and the BatchTopK threshold are all-reduced too.
* ``per_rank`` — many hook points: dictionary ``i`` is trained on rank ``i % world_size``
  over all the data; ranks do not talk until the end.

    torchrun --nproc_per_node 2 -m mechscope train --store runs/acts --hooks ... --distributed ddp

Gloo on CPU, NCCL on GPU. Nothing here is needed for a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as tdist

from mechscope.errors import ConfigError

MODES = ("single", "ddp", "per_rank")


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    mode: str = "single"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(f"distributed mode must be one of {', '.join(MODES)}; found {self.mode!r}")

    @property
    def data_rank(self) -> int:
        """The data shard this rank reads (only data-parallel ranks split the data)."""
        return self.rank if self.mode == "ddp" else 0

    @property
    def data_world(self) -> int:
        return self.world_size if self.mode == "ddp" else 1


def current(mode: str = "ddp") -> Dist:
    """The setting of an already initialised process group, else a single process."""
    if tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1:
        return Dist(tdist.get_rank(), tdist.get_world_size(), mode)
    return Dist()


def init_from_env(mode: str = "ddp", backend: str | None = None) -> Dist:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...);
    a single process when those are absent."""
    Dist(mode=mode)  # validates the name
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not tdist.is_initialized():
        use_cuda = torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        tdist.init_process_group(backend or ("nccl" if use_cuda else "gloo"))
    return Dist(tdist.get_rank(), tdist.get_world_size(), mode)


def assign(n: int, dist: Dist) -> list[int]:
    """Indices of the dictionaries rank ``dist.rank`` trains in ``per_rank`` mode."""
    if dist.mode != "per_rank":
        return list(range(n))
    if n < dist.world_size:
        raise ConfigError(f"per_rank mode trains one dictionary per rank: expected at least {dist.world_size} dictionaries, found {n}")
    return [i for i in range(n) if i % dist.world_size == dist.rank]


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """All-reduce a copy of ``t`` with ``sum``, ``mean`` or ``max``."""
    t = t.clone()
    red = {"sum": tdist.ReduceOp.SUM, "mean": tdist.ReduceOp.SUM, "max": tdist.ReduceOp.MAX}[op]
    tdist.all_reduce(t, op=red)
    return t / tdist.get_world_size() if op == "mean" else t


def broadcast(t: torch.Tensor, src: int = 0) -> None:
    tdist.broadcast(t, src)


def barrier(dist: Dist) -> None:
    if dist.world_size > 1 and tdist.is_initialized():
        tdist.barrier()


def train_distributed(dictionaries: Sequence, source, cfg, *, mode: str = "ddp", **kwargs):
    """:func:`~mechscope.dictionaries.trainer.train` under torchrun in ``mode``; returns the
    dictionaries this rank trained (all of them in ``ddp`` mode)."""
    from mechscope.dictionaries.dictionary import Dictionary
    from mechscope.dictionaries.trainer import train

    dist = init_from_env(mode)
    items = list(dictionaries)
    mine = assign(len(items), dist)
    # seeds follow the global index, so a dictionary starts the same whichever rank trains it
    chosen = [items[i] if isinstance(items[i], Dictionary) else Dictionary(items[i], seed=cfg.seed + i) for i in mine]
    return train(chosen, source, cfg, dist=dist, **kwargs)
