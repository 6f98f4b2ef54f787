"""Read an activation store: checks, memory-mapped shards, and seeded shuffled batches."""

from __future__ import annotations

import hashlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from mechscope.activations.manifest import DTYPES, Manifest, Shard
from mechscope.errors import StoreError

BLOCK_BYTES, BLOCK_MAX_ROWS = 1 << 17, 128  # default shuffling block: 128 KiB of the widest hook's rows, at most 128 rows


def shard_problem(root: Path, manifest: Manifest, hook: str, shard: Shard, full: bool) -> str | None:
    """What is wrong with one shard file (missing, truncated, checksum), or ``None``."""
    path = manifest.shard_path(root, hook, shard.index)
    if not path.exists():
        return f"shard {shard.index} of hook {hook!r} is missing ({path})"
    want, got = manifest.shard_bytes(hook, shard), path.stat().st_size
    if got != want:
        return f"shard {shard.index} of hook {hook!r} is truncated or padded: expected {want:,} bytes, found {got:,} ({path})"
    if full:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while b := f.read(1 << 24):
                h.update(b)
        if h.hexdigest() != shard.sha256.get(hook):
            return f"shard {shard.index} of hook {hook!r} is corrupt: its sha256 does not match the manifest ({path})"
    return None


class ActivationStore:
    """A store written by :func:`~mechscope.activations.cache_activations`.

    Opening checks the manifest and every shard file's size (a truncated shard is named);
    :meth:`verify` also checks every checksum (a corrupt shard is named).
    """

    def __init__(self, path: str | Path, allow_incomplete: bool = False):
        self.root = Path(path)
        self.manifest = Manifest.load(self.root)
        if not self.manifest.complete and not allow_incomplete:
            raise StoreError(f"{self.root}: the caching run has not finished ({len(self.manifest.shards)} of {self.manifest.n_shards_planned} shards); rerun it to resume, or open with allow_incomplete=True (`mechscope store info` shows an unfinished store)")
        self._check(full=False)

    # -- facts -------------------------------------------------------------------------
    @property
    def hooks(self) -> list[str]:
        return list(self.manifest.hooks)

    @property
    def n_rows(self) -> int:
        return self.manifest.n_rows

    def d(self, hook: str) -> int:
        return self.manifest.hooks[self._hook(hook)].d

    def act_shape(self, hook: str) -> list[int]:
        return self.manifest.hooks[self._hook(hook)].act_shape

    def __repr__(self) -> str:
        return f"ActivationStore({str(self.root)!r}, hooks={self.hooks}, rows={self.n_rows:,}, dtype={self.manifest.dtype})"

    def _hook(self, hook: str) -> str:
        if hook not in self.manifest.hooks:
            from mechscope.errors import UnknownHookError

            raise UnknownHookError(hook, self.manifest.hooks)
        return hook

    # -- checks ------------------------------------------------------------------------
    def _check(self, full: bool) -> None:
        problems = [p for s in self.manifest.shards for h in self.manifest.hooks if (p := shard_problem(self.root, self.manifest, h, s, full))]
        if problems:
            raise StoreError(f"{self.root}: {len(problems)} bad shard file(s): " + "; ".join(problems[:5]))

    def verify(self) -> None:
        """Check every shard file's checksum against the manifest; raises StoreError naming bad shards."""
        self._check(full=True)

    # -- reading -----------------------------------------------------------------------
    def shard(self, hook: str, index: int) -> torch.Tensor:
        """Shard ``index`` of ``hook`` as a ``[rows, d]`` tensor in the store dtype (memory-mapped)."""
        hook = self._hook(hook)
        s = self.manifest.shards[index]
        np_dtype, torch_dtype, _ = DTYPES[self.manifest.dtype]
        arr = np.memmap(self.manifest.shard_path(self.root, hook, s.index), dtype=np_dtype, mode="c", shape=(s.n_rows, self.d(hook)))
        t = torch.from_numpy(np.asarray(arr))
        return t.view(torch_dtype) if self.manifest.dtype == "bfloat16" else t

    def _read_shard(self, hook: str, index: int) -> torch.Tensor:
        """Shard read fully into memory (one sequential read)."""
        s = self.manifest.shards[index]
        np_dtype, torch_dtype, _ = DTYPES[self.manifest.dtype]
        arr = np.fromfile(self.manifest.shard_path(self.root, hook, s.index), dtype=np_dtype).reshape(s.n_rows, self.d(hook))
        t = torch.from_numpy(arr)
        return t.view(torch_dtype) if self.manifest.dtype == "bfloat16" else t

    def load_all(self, hook: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Every row of ``hook`` in order: ``[n_rows, d]``."""
        hook = self._hook(hook)
        return torch.cat([self._read_shard(hook, i) for i in range(len(self.manifest.shards))]).to(dtype)

    def batches(
        self,
        hooks: str | Sequence[str],
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        epochs: int = 1,
        buffer_shards: int = 4,
        block_rows: int | None = None,
        read_threads: int | None = None,
        drop_last: bool = True,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> Iterator[torch.Tensor | tuple[torch.Tensor, ...]]:
        """Seeded, shuffled batches ``[batch, d]`` (a tuple, row-aligned, when several hooks
        are asked for — e.g. a transcoder's input and output).

        Shards are permuted per epoch and dealt round-robin to ranks, so ranks see disjoint
        rows. Each group of ``buffer_shards`` shards is cut into blocks of ``block_rows``
        consecutive rows (default: 128 KiB of the widest hook's rows, at most 128 rows — 128 rows of a
        256-wide fp32 residual; on 2 cores 64-row blocks read at 0.81-0.87x a sequential numpy read
        of the same files, 128-row ones at 0.98-1.07x); the blocks are permuted and read straight from the files into
        the batch with ``preadv`` by ``read_threads`` threads (default: 2, or 1 on a single core)
        — one copy per byte, like a plain sequential read. Batch memory is reused once the caller
        has dropped every reference to an earlier batch (see ``_BufferPool``), so a training loop
        does not pay page faults on each batch. ``benchmarks/activation_cache.py`` measures it
        against ``numpy.fromfile`` of the same files.
        A batch of 4096 such rows mixes 32 random blocks from ``buffer_shards`` shards;
        ``block_rows=1`` shuffles single rows, at one system call per row. Rows left over at
        the end of a group start the next one. The same seed, rank, world size and block size
        give the same batches.
        """
        single = isinstance(hooks, str)
        hooks = [self._hook(h) for h in ([hooks] if single else hooks)]
        if not 0 <= rank < world_size:
            raise StoreError(f"rank must be in [0, {world_size}), found {rank}")
        if block_rows is None:
            block_rows = min(BLOCK_MAX_ROWS, max(1, BLOCK_BYTES // max(self.d(h) * DTYPES[self.manifest.dtype][2] for h in hooks)))
        if read_threads is None:
            read_threads = min(2, os.cpu_count() or 1)
        if min(batch_size, block_rows, buffer_shards, read_threads) < 1:
            raise StoreError(f"batch_size, block_rows, buffer_shards and read_threads must be >= 1; found {batch_size}, {block_rows}, "
                             f"{buffer_shards}, {read_threads}")
        n_shards = len(self.manifest.shards)
        if n_shards < world_size:
            raise StoreError(f"{self.root}: {n_shards} shards cannot be split over {world_size} ranks; cache with smaller contexts_per_shard")
        gen = torch.Generator().manual_seed(seed)
        files = _ShardFiles(self, hooks, read_threads)
        try:
            for _ in range(epochs):
                order = torch.randperm(n_shards, generator=gen).tolist()[rank::world_size]
                carry: list[tuple[int, int, int]] = []  # (shard, first row, rows)
                for g in range(0, len(order), buffer_shards):
                    blocks = [(i, r, min(block_rows, self.manifest.shards[i].n_rows - r))
                              for i in order[g : g + buffer_shards] for r in range(0, self.manifest.shards[i].n_rows, block_rows)]
                    queue = carry + [blocks[k] for k in torch.randperm(len(blocks), generator=gen).tolist()]
                    pieces, n = [], 0
                    for shard, first, rows in queue:
                        while rows:
                            take = min(rows, batch_size - n)
                            pieces.append((shard, first, take))
                            n, first, rows = n + take, first + take, rows - take
                            if n == batch_size:
                                yield files.read(pieces, n, dtype, device, single)
                                pieces, n = [], 0
                    carry = pieces
                    files.close()  # at most buffer_shards shards' files open at a time (carried rows reopen theirs)
                if carry and not drop_last:
                    yield files.read(carry, sum(p[2] for p in carry), dtype, device, single)
        finally:
            files.close(final=True)


class _ShardFiles:
    """Open shard files of some hooks, read piecewise into batch tensors with ``preadv``."""

    def __init__(self, store: ActivationStore, hooks: list[str], threads: int = 1):
        self.store, self.hooks, self.fds = store, hooks, {}
        self.np_dtype, self.torch_dtype, self.itemsize = DTYPES[store.manifest.dtype]
        self.buffers = _BufferPool()
        self.threads = threads
        self.workers = ThreadPoolExecutor(threads - 1, thread_name_prefix="mechscope-reader") if threads > 1 else None

    def _fd(self, hook: str, shard: int) -> int:
        key = (hook, shard)
        if key not in self.fds:
            self.fds[key] = os.open(self.store.manifest.shard_path(self.store.root, hook, self.store.manifest.shards[shard].index), os.O_RDONLY)
        return self.fds[key]

    def read(self, pieces: list[tuple[int, int, int]], n: int, dtype: torch.dtype, device, single: bool):
        """Rows ``pieces`` = [(shard, first row, rows), ...] of each hook, stacked: ``[n, d]`` each."""
        outs = []
        for hook in self.hooks:
            row_bytes = self.store.d(hook) * self.itemsize
            raw = self.buffers.get((n, self.store.d(hook)), self.np_dtype)
            view = memoryview(raw).cast("B")
            jobs, a = [], 0  # (fd, destination, file offset, shard, first row)
            for shard, first, rows in pieces:
                b = a + rows * row_bytes
                jobs.append((self._fd(hook, shard), view[a:b], first * row_bytes, shard, first))
                a = b
            parts = min(self.threads, len(jobs) // 4) or 1  # preadv releases the GIL: threads copy at once
            step = max(1, -(-len(jobs) // parts))
            others = [self.workers.submit(self._read_jobs, hook, jobs[i : i + step]) for i in range(step, len(jobs), step)]
            try:
                self._read_jobs(hook, jobs[:step])
            finally:
                for other in others:
                    other.result()  # waits; raises a worker's error (chained to ours if both failed)
            del view, jobs
            out = torch.from_numpy(raw)
            if self.np_dtype is np.uint16:  # bfloat16 stored as its raw 16 bits
                out = out.view(self.torch_dtype)
            outs.append(out.to(device=device, dtype=dtype))
        return outs[0] if single else tuple(outs)

    def _read_jobs(self, hook: str, jobs: list) -> None:
        for fd, dest, offset, shard, first in jobs:
            got = _pread_into(fd, dest, offset)
            if got != len(dest):
                raise StoreError(f"shard {shard} of hook {hook!r} ended early: expected {len(dest):,} bytes at row {first}, read {got:,} "
                                 f"({self.store.manifest.shard_path(self.store.root, hook, shard)})")

    def close(self, final: bool = False) -> None:
        """Close the open files (``final``: and stop the reading threads)."""
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
        if final and self.workers is not None:
            self.workers.shutdown()


class _BufferPool:
    """Batch arrays, handed out again once nothing outside the pool refers to them.

    A fresh multi-MB array costs page faults (with transparent huge pages, compaction too) on
    every batch: a fresh 4 MB batch took a fifth of the time of reading it. A batch tensor
    (``torch.from_numpy``) keeps its array referenced for as long as it or any view of it
    lives, so an array whose only references are the pool's is free to refill: a caller
    that keeps its batches gets new memory, one that drops them gets warm memory.
    """

    def __init__(self, keep: int = 4):
        self.keep, self.arrays = keep, {}
        self.unheld = max(self._counts([np.empty(0)]))  # what an array nobody else holds counts, on this interpreter

    @staticmethod
    def _counts(arrays: list) -> list[int]:
        return [sys.getrefcount(a) for a in arrays]

    def get(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        arrays = self.arrays.setdefault((shape, np.dtype(dtype).str), [])
        for a, refs in zip(arrays, self._counts(arrays)):
            if refs <= self.unheld:
                return a
        a = np.empty(shape, dtype=dtype)
        if len(arrays) < self.keep:
            arrays.append(a)
        return a


def _pread_into(fd: int, buffer: memoryview, offset: int) -> int:
    """Read ``len(buffer)`` bytes at ``offset`` into ``buffer``; returns the bytes read."""
    if _PREADV is None:  # platforms without preadv (Windows)
        os.lseek(fd, offset, os.SEEK_SET)
        with os.fdopen(os.dup(fd), "rb", buffering=0) as f:
            return f.readinto(buffer) or 0
    total, want = _PREADV(fd, [buffer], offset), len(buffer)
    while 0 < total < want and (got := _PREADV(fd, [buffer[total:]], offset + total)):  # a short read: go on
        total += got
    return total


_PREADV = getattr(os, "preadv", None)
