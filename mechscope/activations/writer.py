"""Stream a model's activations over a token stream into a sharded store.

Shard ``k`` holds contexts ``[k*cps, (k+1)*cps)``, each processed in the same batches on
every run, so a resumed run writes byte-identical shards. Each shard file is written
atomically and its checksum recorded in the manifest only afterwards: a killed run leaves
either a complete shard that the manifest lists or nothing it trusts.
"""

from __future__ import annotations

import errno
import hashlib
import shutil
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from mechscope.activations.manifest import DTYPES, HookInfo, Manifest, Shard
from mechscope.data.stream import TokenStream
from mechscope.data.tokenizer import tokenizer_hash
from mechscope.errors import ConfigError, DiskQuotaError, NonFiniteError, PathError, StoreError
from mechscope.files import atomic_write
from mechscope.models.hooks import resolve_hooks, run_with_cache
from mechscope.models.model import Model, as_model


def _to_bytes(act: torch.Tensor, dtype: str) -> bytes:
    """``[rows, d]`` activations -> raw little-endian bytes in the store dtype."""
    _, torch_dtype, _ = DTYPES[dtype]
    t = act.to(torch_dtype).contiguous()
    if dtype == "bfloat16":
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def _check_finite(name: str, act: torch.Tensor, context_start: int, pos_offset: int) -> None:
    """``act``: ``[batch, pos, ...]``. Raises NonFiniteError naming hook, context and position."""
    bad = ~torch.isfinite(act.reshape(act.shape[0], act.shape[1], -1))
    if bad.any():
        b, p = (int(i) for i in bad.any(-1).nonzero()[0])
        value = act[b, p].flatten()[bad[b, p]][0].item()
        raise NonFiniteError(f"non-finite activation ({value}) at hook {name!r}, context {context_start + b}, position {p + pos_offset}")


def cache_activations(
    model: Model | torch.nn.Module,
    stream: TokenStream,
    hooks: str | Sequence[str],
    out_dir: str | Path,
    *,
    n_contexts: int | None = None,
    contexts_per_shard: int = 64,
    batch_size: int = 16,
    dtype: str = "float32",
    skip_bos: bool = True,
    max_bytes: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
):
    """Cache ``hooks`` of ``model`` over ``stream`` into ``out_dir``; resume if it exists.

    Args:
        n_contexts: contexts to cache (default: the whole stream).
        contexts_per_shard: contexts per shard; a multiple of ``batch_size`` is fastest.
        dtype: ``float32``, ``float16`` or ``bfloat16`` on disk.
        skip_bos: drop the BOS position (its activations are outliers that dictionaries should not fit).
        max_bytes: a size cap for the store's shard files (simulates a full disk).
        overwrite: delete an existing store at ``out_dir`` instead of resuming.

    Returns:
        the :class:`~mechscope.activations.reader.ActivationStore` for ``out_dir``.
    """
    from mechscope.activations.reader import ActivationStore

    model = as_model(model)
    model.module.eval()
    hooks = resolve_hooks(model, hooks)
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, found {dtype!r}")
    if contexts_per_shard < 1 or batch_size < 1:
        raise ConfigError(f"contexts_per_shard and batch_size must be >= 1, found {contexts_per_shard}, {batch_size}")
    if n_contexts is not None and n_contexts < 1:
        raise ConfigError(f"n_contexts must be a positive integer (or None for the whole stream); found {n_contexts}")
    if max_bytes is not None and max_bytes < 1:
        raise ConfigError(f"max_bytes must be a positive size cap (or None for none); found {max_bytes}")
    n_contexts = len(stream) if n_contexts is None else min(n_contexts, len(stream))
    if n_contexts < 1:
        raise ConfigError(f"nothing to cache: the stream has {len(stream)} contexts")
    n_ctx = getattr(getattr(model.module, "cfg", None), "n_ctx", None)
    if isinstance(n_ctx, int) and stream.context_len > n_ctx:
        raise ConfigError(f"stream contexts have {stream.context_len} tokens but model {model.name!r} takes at most n_ctx={n_ctx}")
    root = Path(out_dir)
    if overwrite and root.exists():
        shutil.rmtree(root)

    # One probe forward pass fixes each hook's per-position activation shape.
    probe = run_with_cache(model, stream.batch(0, 1), hooks)
    infos = {h: HookInfo(act_shape=list(a.shape[2:]), d=int(np.prod(a.shape[2:], dtype=np.int64))) for h, a in probe.items()}
    fresh = Manifest(
        model=model.name, model_meta={k: v for k, v in model.meta.items() if isinstance(v, (str, int, float, bool))},
        hooks=infos, dtype=dtype, context_len=stream.context_len, skip_bos=skip_bos and stream.prepend_bos,
        contexts_per_shard=contexts_per_shard, n_contexts=n_contexts, source_hash=stream.source_hash,
        corpus=stream.corpus.name, corpus_hash=stream.corpus.content_hash, tokenizer_hash=tokenizer_hash(stream.tokenizer),
    )
    manifest = _resume_or_start(root, fresh)
    done = {s.index for s in manifest.shards}
    total_bytes = sum(manifest.shard_bytes(h, s) for s in manifest.shards for h in hooks)
    pos0 = 1 if manifest.skip_bos else 0

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_contexts * manifest.positions_per_context, initial=len(done) * contexts_per_shard * manifest.positions_per_context,
                   unit="tok", unit_scale=True, desc=f"caching {len(hooks)} hook(s)", dynamic_ncols=True)
    for k in range(manifest.n_shards_planned):
        if k in done:
            continue
        start = k * contexts_per_shard
        n = min(contexts_per_shard, n_contexts - start)
        rows: dict[str, list[bytes]] = {h: [] for h in hooks}
        for offset in range(start, start + n, batch_size):
            tokens = stream.batch(offset, min(batch_size, start + n - offset)).to(model.device)
            cache = run_with_cache(model, tokens, hooks)
            for h in hooks:
                act = cache[h][:, pos0:]
                _check_finite(h, act, offset, pos0)
                rows[h].append(_to_bytes(act.reshape(-1, infos[h].d).cpu(), dtype))
            if bar is not None:
                bar.update(tokens.shape[0] * manifest.positions_per_context)
        blobs = {h: b"".join(parts) for h, parts in rows.items()}
        size = sum(len(b) for b in blobs.values())
        if max_bytes is not None and total_bytes + size > max_bytes:
            raise DiskQuotaError(f"writing shard {k} would take the store to {total_bytes + size:,} bytes, over its cap of {max_bytes:,}; "
                                 f"{len(manifest.shards)} complete shards are kept and a rerun resumes after them")
        sums = {}
        for h, blob in blobs.items():
            try:
                with atomic_write(manifest.shard_path(root, h, k), "wb") as f:
                    f.write(blob)
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise DiskQuotaError(f"disk full while writing shard {k} of {h!r}; complete shards are kept, rerun to resume") from e
                raise
            sums[h] = hashlib.sha256(blob).hexdigest()
        total_bytes += size
        manifest.shards.append(Shard(index=k, context_start=start, n_contexts=n, n_rows=n * manifest.positions_per_context, sha256=sums))
        manifest.shards.sort(key=lambda s: s.index)
        manifest.save(root)
    if bar is not None:
        bar.close()
    manifest.complete = True
    manifest.save(root)
    return ActivationStore(root)


def _resume_or_start(root: Path, fresh: Manifest) -> Manifest:
    """The manifest to continue from: an existing one with identical settings, or ``fresh``."""
    if root.exists() and not root.is_dir():
        raise PathError(f"expected a directory (or nothing) for the activation store at {root}, found a file")
    if not (root / "manifest.json").exists():
        if root.exists() and any(root.iterdir()):
            raise StoreError(f"{root} exists, is not empty and has no manifest.json; refusing to write an activation store into it")
        root.mkdir(parents=True, exist_ok=True)
        fresh.save(root)
        return fresh
    old = Manifest.load(root)
    a, b = old.identity(), fresh.identity()
    diff = {k: (a.get(k), b.get(k)) for k in a if a.get(k) != b.get(k)}
    if diff:
        raise StoreError(f"{root} holds a store made with other settings, so this run cannot resume into it: "
                         + "; ".join(f"{k}: store has {x!r}, this run has {y!r}" for k, (x, y) in diff.items())
                         + ". Use another directory or overwrite=True (--overwrite).")
    # Trust only shards whose files are complete and match their checksums.
    from mechscope.activations.reader import shard_problem

    old.shards = [s for s in old.shards if not any(shard_problem(root, old, h, s, full=True) for h in old.hooks)]
    return old
