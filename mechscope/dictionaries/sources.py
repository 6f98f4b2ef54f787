"""Where training rows come from: an activation store on disk, or a model streamed through a
shuffle buffer. Both yield ``{hook: [batch, d]}`` with rows aligned across hooks (so one
pass serves several dictionaries, and a transcoder's input and output rows match), both are
deterministic given ``seed``, ``rank`` and ``world_size``, and both can restart at batch
``skip`` — which is how a resumed run gets exactly the data it would have seen."""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch

from mechscope.errors import ConfigError, StoreError


class TensorSource:
    """Rows held in memory, ``{hook: [rows, d]}`` (row-aligned across hooks): reshuffled every
    epoch with a generator seeded by ``(seed, epoch)``; rank ``i`` of ``n`` takes rows ``i::n``
    of each permutation."""

    def __init__(self, rows: dict[str, torch.Tensor], act_shapes: dict[str, list[int]] | None = None, name: str = "tensors"):
        if not rows:
            raise ConfigError("TensorSource needs at least one hook's rows; found none")
        lengths = {h: t.shape[0] for h, t in rows.items()}
        if len(set(lengths.values())) != 1:
            raise ConfigError(f"TensorSource rows must be aligned across hooks; found row counts {lengths}")
        self.rows = {h: t.reshape(t.shape[0], -1) for h, t in rows.items()}
        self.hooks = list(rows)
        self._shapes = {h: list(act_shapes[h]) if act_shapes and h in act_shapes else list(t.shape[1:]) for h, t in rows.items()}
        self.name = name

    def d(self, hook: str) -> int:
        return self.rows[hook].shape[1]

    def act_shape(self, hook: str) -> list[int]:
        return self._shapes[hook]

    def describe(self) -> str:
        return f"in-memory rows {self.name!r}"

    def iterate(self, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1, skip: int = 0,
                device: str | torch.device = "cpu") -> Iterator[dict[str, torch.Tensor]]:
        n = next(iter(self.rows.values())).shape[0] // world_size
        per_epoch = n // batch_size
        if per_epoch < 1:
            raise ConfigError(f"expected at least one batch of {batch_size} rows per rank, found {n}")
        epoch, offset = divmod(skip, per_epoch)
        while True:
            perm = torch.randperm(n * world_size, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))[rank::world_size]
            for b in range(offset, per_epoch):
                idx = perm[b * batch_size : (b + 1) * batch_size]
                yield {h: t[idx].to(device) for h, t in self.rows.items()}
            epoch, offset = epoch + 1, 0


class StoreSource:
    """Rows from an :class:`~mechscope.activations.ActivationStore` (``store.batches``):
    shards shuffled per epoch and dealt to ranks, so ranks see disjoint rows."""

    def __init__(self, store, hooks: Sequence[str] | None = None):
        from mechscope.activations import ActivationStore

        self.store = store if isinstance(store, ActivationStore) else ActivationStore(store)
        self.hooks = list(hooks) if hooks is not None else self.store.hooks
        for h in self.hooks:
            self.store.d(h)  # UnknownHookError naming the store's hooks

    def d(self, hook: str) -> int:
        return self.store.d(hook)

    def act_shape(self, hook: str) -> list[int]:
        return self.store.act_shape(hook)

    def describe(self) -> str:
        return f"store {self.store.root}"

    def iterate(self, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1, skip: int = 0,
                device: str | torch.device = "cpu") -> Iterator[dict[str, torch.Tensor]]:
        rows = self.store.n_rows // world_size
        if rows < batch_size:
            raise StoreError(f"{self.store.root}: expected at least one batch of {batch_size} rows per rank, found {rows} rows per rank ({world_size} rank(s))")
        epochs = 1 << 20  # the trainer stops; the store supplies new epochs as long as asked
        it = self.store.batches(self.hooks, batch_size, seed=seed, rank=rank, world_size=world_size, epochs=epochs, device=device)
        for i, batch in enumerate(it):
            if i >= skip:
                yield dict(zip(self.hooks, batch))


class ModelSource:
    """Rows streamed from a model over a :class:`~mechscope.data.TokenStream`.

    Refill ``r`` of the shuffle buffer runs the model over the next block of contexts (about
    ``buffer_tokens`` rows), permutes the rows with a generator seeded by ``(seed, r)`` and
    yields its full batches (the few rows past the last full batch are dropped). Rank ``i``
    of ``n`` takes refills ``i, i + n, ...``; contexts wrap around when the stream ends.
    All hooks come from one forward pass.
    """

    def __init__(self, model, stream, hooks: Sequence[str], *, buffer_tokens: int = 262_144, model_batch_size: int = 16,
                 skip_bos: bool = True):
        from mechscope.models import resolve_hooks, run_with_cache
        from mechscope.models.model import as_model

        self.model = as_model(model)
        self.model.module.eval()
        self.stream = stream
        self.hooks = resolve_hooks(self.model, list(hooks))
        self.skip_bos = skip_bos and stream.prepend_bos
        self.model_batch_size = model_batch_size
        probe = run_with_cache(self.model, stream.batch(0, 1).to(self.model.device), self.hooks)
        self._shapes = {h: list(a.shape[2:]) for h, a in probe.items()}
        positions = stream.context_len - (1 if self.skip_bos else 0)
        self.contexts_per_refill = max(1, min(len(stream), math.ceil(buffer_tokens / positions)))
        self.rows_per_refill = self.contexts_per_refill * positions

    def d(self, hook: str) -> int:
        return math.prod(self._shapes[hook])

    def act_shape(self, hook: str) -> list[int]:
        return self._shapes[hook]

    def describe(self) -> str:
        return f"model {self.model.name} streamed over {self.stream.corpus.name}"

    @torch.no_grad()
    def _refill(self, r: int, device) -> dict[str, torch.Tensor]:
        from mechscope.models import run_with_cache

        n = len(self.stream)
        start = (r * self.contexts_per_refill) % n
        ids = [(start + i) % n for i in range(self.contexts_per_refill)]
        parts: dict[str, list[torch.Tensor]] = {h: [] for h in self.hooks}
        pos0 = 1 if self.skip_bos else 0
        for b in range(0, len(ids), self.model_batch_size):
            chunk = ids[b : b + self.model_batch_size]
            tokens = torch.stack([torch.as_tensor(self.stream[i]) for i in chunk]).to(self.model.device)
            cache = run_with_cache(self.model, tokens, self.hooks)
            for h in self.hooks:
                a = cache[h][:, pos0:]
                parts[h].append(a.reshape(-1, self.d(h)).to(device=device, dtype=torch.float32))
        return {h: torch.cat(p) for h, p in parts.items()}

    def iterate(self, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1, skip: int = 0,
                device: str | torch.device = "cpu") -> Iterator[dict[str, torch.Tensor]]:
        per_refill = self.rows_per_refill // batch_size
        if per_refill < 1:
            raise ConfigError(f"the shuffle buffer holds {self.rows_per_refill} rows, fewer than one batch of {batch_size}; raise buffer_tokens")
        j, offset = divmod(skip, per_refill)
        while True:
            r = j * world_size + rank
            rows = self._refill(r, device)
            gen = torch.Generator().manual_seed(seed * 1_000_003 + r)
            perm = torch.randperm(self.rows_per_refill, generator=gen).to(device)
            for b in range(offset, per_refill):
                idx = perm[b * batch_size : (b + 1) * batch_size]
                yield {h: t.index_select(0, idx) for h, t in rows.items()}
            j, offset = j + 1, 0
