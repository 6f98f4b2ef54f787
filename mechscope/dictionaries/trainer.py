"""Train several dictionaries on several hook points in one pass over the data.

    dictionaries = train([cfg_a, cfg_b], StoreSource(store), TrainConfig(steps=2000), out_dir="runs/d")

The loop (:func:`train`) reads in one screen; the per-dictionary bookkeeping (optimiser,
dead-latent counters, decoder constraint, checkpoint state) lives in :class:`_Slot`.
A checkpoint holds weights, Adam moments, dead-latent counters, RNG state and the data
position, so a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Sequence

import torch

from mechscope.dictionaries.config import TOPK_FAMILY, DictionaryConfig, TrainConfig
from mechscope.dictionaries.dictionary import Dictionary, ForwardOutput
from mechscope.dictionaries import distributed as D
from mechscope.errors import ConfigError, FormatError, NonFiniteError, StoreError
from mechscope.files import atomic_write, ensure_dir, load_artifact, read_json, save_artifact, write_json

CKPT_FORMAT = "mechscope.dictionary-checkpoint"
CKPT_VERSION = 1
BATCHTOPK_EMA = 0.01


def train(dictionaries: Sequence[Dictionary | DictionaryConfig] | Dictionary | DictionaryConfig, source, cfg: TrainConfig, *,
          out_dir: str | Path | None = None, resume: bool = True, overwrite: bool = False, until: int | None = None,
          progress: bool = True, device: str | torch.device | None = None, dist: "D.Dist | None" = None) -> list[Dictionary]:
    """Train ``dictionaries`` (or configs, initialised with ``cfg.seed``) on ``source``.

    Args:
        source: a :class:`~mechscope.dictionaries.sources.StoreSource` / ``ModelSource``, an
            ``ActivationStore``, or a store directory.
        out_dir: checkpoints (``checkpoints/``), metrics (``metrics.jsonl``) and the trained
            dictionaries (``<name>/``, native format). A rerun with the same ``out_dir``
            resumes from the latest checkpoint (``resume=True``) or starts over (``overwrite``).
        until: stop after this many steps in total (a checkpoint is written); a later call
            with the same ``out_dir`` continues.
        dist: distributed setting; by default read from ``torch.distributed`` (see
            :mod:`~mechscope.dictionaries.distributed`).
    Returns:
        the trained dictionaries, in eval mode, on ``device``.
    """
    dist = dist or D.current()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    source = _as_source(source)
    items = [dictionaries] if isinstance(dictionaries, (Dictionary, DictionaryConfig)) else list(dictionaries)
    if not items:
        raise ConfigError("expected at least one dictionary or DictionaryConfig to train, found none")
    slots = [_Slot(_as_dictionary(d, cfg.seed + i, source), cfg, i, device, dist) for i, d in enumerate(items)]
    names = [s.name for s in slots]
    if len(set(names)) != len(names):
        raise ConfigError(f"two dictionaries would be saved under the same name: {names}; give them different hooks")
    run = _Run(out_dir, cfg, slots, dist, resume=resume, overwrite=overwrite)
    start, stop = run.start_step, min(cfg.steps, until if until is not None else cfg.steps)
    hooks = list(dict.fromkeys(h for s in slots for h in (s.d.cfg.hook_in, s.d.cfg.target_hook)))
    data = source.iterate(cfg.batch_size, seed=cfg.seed, rank=dist.data_rank, world_size=dist.data_world, skip=start, device=device)
    bar = _progress_bar(progress and dist.rank == 0, start, cfg.steps)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    t0, tokens0 = time.perf_counter(), start * cfg.batch_size * dist.data_world
    for step in range(start, stop):
        batch = next(data)
        for h in hooks:
            _check_finite(batch[h], step, h, run.last_checkpoint)
        lr, sparsity_scale = cfg.lr_at(step), cfg.sparsity_scale_at(step)
        log = cfg.log_every and ((step + 1) % cfg.log_every == 0 or step + 1 == stop)
        record: dict = {"step": step + 1, "tokens": (step + 1) * cfg.batch_size * dist.data_world, "lr": lr}
        for s in slots:
            x, y = batch[s.d.cfg.hook_in], batch[s.d.cfg.target_hook]
            if step == 0:
                s.init_from_data(x, y)
            with autocast:
                out: ForwardOutput = s.module(x, y, dead_mask=s.dead_mask(), sparsity_scale=sparsity_scale, auxk_coeff=cfg.auxk_coeff)
            if not torch.isfinite(out.total):
                raise NonFiniteError(f"loss of dictionary {s.name!r} became non-finite ({out.total.item()}) at step {step + 1} "
                                     f"(hook {s.d.cfg.hook_in!r}); training stopped, last good checkpoint: {run.last_checkpoint or 'none yet'}")
            out.total.backward()
            grad_norm = s.step(lr, out, x, y, step)
            if log:
                record[s.name] = s.metrics(out, grad_norm) | {"data_checksum": float(x.double().sum())}
        if log:
            elapsed = time.perf_counter() - t0
            record |= {"elapsed_s": round(elapsed, 3), "tokens_per_s": round((record["tokens"] - tokens0) / max(elapsed, 1e-9), 1)}
            run.log(record)
            if bar is not None:
                bar.set_postfix({k: f"{v:.3g}" for k, v in record[slots[0].name].items() if k in ("fvu", "l0", "dead_frac")})
        if bar is not None:
            bar.update(1)
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < stop:
            run.checkpoint(step + 1)
    if bar is not None:
        bar.close()
    if stop > start or not run.last_checkpoint:
        run.checkpoint(stop)
    if stop == cfg.steps:
        run.save_final(source)
    run.close()
    return [s.d.eval() for s in slots]


class _Slot:
    """One dictionary's training state."""

    def __init__(self, d: Dictionary, cfg: TrainConfig, index: int, device, dist: "D.Dist"):
        self.d, self.cfg, self.index, self.dist = d.to(device).train(), cfg, index, dist
        self.name = d.cfg.name
        self.module = d
        fused = {"fused": True} if device.type in ("cpu", "cuda") else {}
        self.opt = torch.optim.Adam(d.parameters(), lr=cfg.lr, betas=cfg.betas, **fused)
        self.since_fired = torch.zeros(d.n_latents, dtype=torch.long, device=device)
        self.gen = torch.Generator().manual_seed(cfg.seed * 7919 + index)

    def init_from_data(self, x, y):
        self.d.init_from_data(x, y)
        if self.cfg.normalize_decoder:
            self.d.normalize_decoder_()
        self.wrap()

    def wrap(self):
        """Data parallel: wrap in torch DDP (which broadcasts rank 0's weights)."""
        if self.dist.mode == "ddp" and self.dist.world_size > 1 and self.module is self.d:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.d.device.index] if self.d.device.type == "cuda" else None
            self.module = DistributedDataParallel(self.d, device_ids=ids, broadcast_buffers=False)

    def dead_mask(self):
        if self.d.cfg.activation not in TOPK_FAMILY or self.cfg.auxk_coeff == 0:
            return None
        return self.since_fired >= self.cfg.dead_tokens

    def step(self, lr: float, out: ForwardOutput, x, y, step: int) -> float:
        """Constrain and clip the gradient, take an Adam step, then update the bookkeeping."""
        d, cfg = self.d, self.cfg
        if cfg.normalize_decoder:
            d.remove_parallel_grad_()
        params = [p for p in d.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip) if cfg.grad_clip else None
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            if cfg.normalize_decoder:
                d.normalize_decoder_()
            if d.cfg.activation == "jumprelu":
                d.threshold.clamp_(min=0.0)
            fired = d.fired(out)
            thr = getattr(d, "_batch_threshold", None)
            if self.dist.mode == "ddp" and self.dist.world_size > 1:
                fired = D.all_reduce(fired.to(torch.int32), "max").bool()
                thr = D.all_reduce(thr.to(torch.float64), "mean") if thr is not None else None
            self.since_fired += x.shape[0] * self.dist.data_world
            self.since_fired[fired] = 0
            if d.cfg.activation == "batchtopk" and thr is not None:
                old = d.threshold
                d.threshold.copy_(thr if float(old) == 0 else (1 - BATCHTOPK_EMA) * old + BATCHTOPK_EMA * thr)
            if cfg.resample_every and (step + 1) % cfg.resample_every == 0 and d.cfg.activation not in TOPK_FAMILY:
                self.resample(x, y, out)
        return float(grad_norm) if grad_norm is not None else float("nan")

    @torch.no_grad()
    def resample(self, x, y, out: ForwardOutput) -> int:
        """Re-initialise dead latents toward inputs the dictionary reconstructs worst
        (sampled with probability proportional to squared loss) and reset their Adam moments."""
        d = self.d
        dead = (self.since_fired >= self.cfg.dead_tokens).nonzero().squeeze(1)
        if dead.numel() == 0:
            return 0
        target = x if d.cfg.kind == "sae" else y
        loss = (target - out.recon.detach()).pow(2).sum(-1).double().cpu()
        rows = torch.multinomial(loss.pow(2) + 1e-12, dead.numel(), replacement=True, generator=self.gen).to(x.device)
        direction = target[rows] - d.b_dec
        direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
        alive = self.since_fired < self.cfg.dead_tokens
        enc_norm = d.W_enc[alive].norm(dim=1).mean() if alive.any() else torch.tensor(1.0)
        d.W_dec[dead] = direction
        enc = x[rows] - (d.b_dec if d.cfg.apply_b_dec_to_input else 0)
        d.W_enc[dead] = 0.2 * enc_norm * enc / enc.norm(dim=1, keepdim=True).clamp_min(1e-12)
        d.b_enc[dead] = 0.0
        for p in (d.W_enc, d.W_dec, d.b_enc):
            st = self.opt.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in st:
                    st[key][dead] = 0.0
        self.since_fired[dead] = 0
        if self.dist.mode == "ddp" and self.dist.world_size > 1:  # every rank takes rank 0's new rows
            for p in (d.W_enc, d.W_dec, d.b_enc):
                D.broadcast(p.data)
        return int(dead.numel())

    def metrics(self, out: ForwardOutput, grad_norm: float) -> dict:
        dead = (self.since_fired >= self.cfg.dead_tokens).float().mean()
        h = hashlib.sha1()
        for t in self.d.state_dict().values():
            h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        return {"fvu": out.fvu.item(), "mse": out.mse.item(), "l0": out.l0.item(), "sparsity_loss": out.sparsity_loss.item(),
                "auxk_loss": out.auxk_loss.item(), "total": out.total.item(), "dead_frac": dead.item(), "grad_norm": grad_norm,
                "weights_sha1": h.hexdigest()[:16]}

    # -- checkpoint state ------------------------------------------------------------------
    def state(self) -> dict[str, dict]:
        names = {p: n for n, p in self.d.named_parameters()}
        optim = {}
        for p, st in self.opt.state.items():
            for key, v in st.items():
                optim[f"{names[p]}.{key}"] = v.detach().reshape(v.shape)
        extra = {"since_fired": self.since_fired, "generator": self.gen.get_state()}
        return {f"dict{self.index}": self.d.state_dict(), f"optim{self.index}": optim, f"extra{self.index}": extra}

    def load_state(self, tensors: dict[str, dict]) -> None:
        self.d.load_state_dict(tensors[f"dict{self.index}"])
        params = dict(self.d.named_parameters())
        state: dict = {}
        for key, v in tensors[f"optim{self.index}"].items():
            name, _, field = key.rpartition(".")
            state.setdefault(params[name], {})[field] = v.to(params[name].device)
        for p, st in state.items():
            self.opt.state[p] = st
        extra = tensors[f"extra{self.index}"]
        self.since_fired.copy_(extra["since_fired"])
        self.gen.set_state(extra["generator"])
        self.wrap()


class _Run:
    """The run directory: checkpoints, the metrics log, wandb and the final save."""

    def __init__(self, out_dir, cfg: TrainConfig, slots: list[_Slot], dist: "D.Dist", *, resume: bool, overwrite: bool):
        self.cfg, self.slots, self.dist = cfg, slots, dist
        self.out = Path(out_dir) if out_dir is not None else None
        self.last_checkpoint: str | None = None
        self.start_step = 0
        self.wandb = None
        self.metrics_file = None
        if self.out is None:
            return
        suffix = f"rank{dist.rank}" if dist.mode == "per_rank" and dist.world_size > 1 else ""
        self.ckpt_root = self.out / "checkpoints" / suffix if suffix else self.out / "checkpoints"
        if overwrite and (dist.rank == 0 or suffix):
            shutil.rmtree(self.ckpt_root, ignore_errors=True)
        D.barrier(dist)
        latest = self.ckpt_root / "latest.json"
        if latest.exists():
            if not resume:
                raise ConfigError(f"{self.out} already holds checkpoints; pass resume=True to continue (the CLI resumes by itself) or overwrite=True (--overwrite) to start over")
            self._resume(latest)
        name = "metrics.jsonl" if dist.rank == 0 else f"metrics.rank{dist.rank}.jsonl"
        ensure_dir(self.out)
        _trim_metrics(self.out / name, self.start_step)
        self.metrics_file = open(self.out / name, "a")
        if cfg.wandb_project and dist.rank == 0:
            try:
                import wandb
            except ImportError as e:
                raise ConfigError(f"wandb_project={cfg.wandb_project!r} was set but wandb is not installed (pip install wandb)") from e
            self.wandb = wandb.init(project=cfg.wandb_project, config={"train": cfg.to_dict(), "dictionaries": [s.d.cfg.to_dict() for s in slots]})

    def _resume(self, latest: Path) -> None:
        pointer = read_json(latest)
        path = self.ckpt_root / pointer.get("path", "")
        try:
            meta, tensors = load_artifact(path, CKPT_FORMAT, CKPT_VERSION)
        except (StoreError, FormatError) as e:
            others = sorted(p.name for p in self.ckpt_root.glob("step_*") if p.name != path.name)
            hint = f"; other checkpoints here: {', '.join(others)} (point latest.json at one, or delete the run)" if others else ""
            raise StoreError(f"checkpoint {path} is corrupt and cannot be resumed: {e}{hint}") from e
        saved = TrainConfig.from_dict(meta["train"]).to_dict()
        now = self.cfg.to_dict()
        diff = {k: (saved[k], now[k]) for k in now if k not in TrainConfig.CADENCE and saved[k] != now[k]}
        theirs = meta["dictionaries"]
        ours = [s.d.cfg.to_dict() for s in self.slots]
        if diff or [{k: v for k, v in c.items() if k != "meta"} for c in theirs] != [{k: v for k, v in c.items() if k != "meta"} for c in ours]:
            detail = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in diff.items()) or "the dictionary configs differ"
            raise ConfigError(f"cannot resume {path}: it was made with other settings ({detail}); use another out_dir or overwrite=True (--overwrite)")
        for s in self.slots:
            s.load_state(tensors)
        self.start_step = int(meta["step"])
        self.last_checkpoint = str(path)

    def checkpoint(self, step: int) -> None:
        if self.out is None or (self.dist.mode == "ddp" and self.dist.rank != 0):
            D.barrier(self.dist)
            return
        path = self.ckpt_root / f"step_{step:08d}"
        tensors: dict = {}
        for s in self.slots:
            tensors |= s.state()
        meta = {"step": step, "train": self.cfg.to_dict(), "dictionaries": [s.d.cfg.to_dict() for s in self.slots],
                "world_size": self.dist.world_size, "mode": self.dist.mode}
        if path.exists():
            shutil.rmtree(path)
        save_artifact(path, CKPT_FORMAT, CKPT_VERSION, meta, tensors)
        write_json(self.ckpt_root / "latest.json", {"step": step, "path": path.name})
        self.last_checkpoint = str(path)
        for old in sorted(self.ckpt_root.glob("step_*"))[: -self.cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        D.barrier(self.dist)

    def log(self, record: dict) -> None:
        if self.metrics_file is not None:
            self.metrics_file.write(json.dumps(record) + "\n")
            self.metrics_file.flush()
        if self.wandb is not None:
            flat = {f"{k}/{m}" if isinstance(v, dict) else k: (v[m] if isinstance(v, dict) else v)
                    for k, v in record.items() for m in (v if isinstance(v, dict) else [None])}
            self.wandb.log(flat, step=record["step"])

    def save_final(self, source) -> None:
        if self.out is None or (self.dist.mode == "ddp" and self.dist.rank != 0):
            return
        for s in self.slots:
            s.d.save(self.out / s.name, extra={"training": {"steps": self.cfg.steps, "tokens": self.cfg.steps * self.cfg.batch_size * self.dist.data_world,
                                                             "source": source.describe(), "train_config": self.cfg.to_dict()}})

    def close(self) -> None:
        if self.metrics_file is not None:
            self.metrics_file.close()
        if self.wandb is not None:
            self.wandb.finish()


def _as_source(source):
    from mechscope.activations import ActivationStore
    from mechscope.dictionaries.sources import ModelSource, StoreSource, TensorSource

    if isinstance(source, (ActivationStore, str, Path)):
        return StoreSource(source)
    if isinstance(source, (StoreSource, ModelSource, TensorSource)) or all(hasattr(source, a) for a in ("iterate", "hooks", "d", "act_shape", "describe")):
        return source
    raise ConfigError(f"expected a StoreSource, ModelSource, TensorSource (or an object with their iterate/hooks/d/act_shape/describe), "
                      f"an ActivationStore or a store directory; found {type(source).__name__}")


def _as_dictionary(d, seed: int, source) -> Dictionary:
    """Build from a config if needed, and check its dimensions against the source."""
    d = d if isinstance(d, Dictionary) else Dictionary(d, seed=seed)
    c = d.cfg
    if c.hook_in is None or (c.kind != "sae" and c.hook_out is None):
        raise ConfigError(f"dictionary {c.name!r} needs hook_in{' and hook_out' if c.kind != 'sae' else ''} to be trained from a source")
    for hook, want, what in ((c.hook_in, c.d_in, "d_in"), (c.target_hook, c.d_out, "d_out")):
        if hook not in source.hooks:
            raise ConfigError(f"dictionary {c.name!r} reads hook {hook!r}, but the source provides only {source.hooks}")
        got = source.d(hook)
        if got != want:
            raise ConfigError(f"dictionary {c.name!r} expects {what}={want} for hook {hook!r}, but {source.describe()} has rows of width {got}")
    shape = source.act_shape(c.hook_in)
    if c.act_shape is None and len(shape) > 1:
        c.act_shape = list(shape)  # keep the head structure of hook_z
    return d


def _trim_metrics(path: Path, step: int) -> None:
    """Drop log records past ``step`` (a fresh run: all of them) so a resumed run's log has each step once."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
    with atomic_write(path, "w") as f:
        f.write("".join(line + "\n" for line in keep))


def _check_finite(t: torch.Tensor, step: int, hook: str, last: str | None) -> None:
    if not torch.isfinite(t).all():
        bad = (~torch.isfinite(t)).any(-1).nonzero()[0, 0]
        raise NonFiniteError(f"non-finite value in the training batch at step {step + 1}, hook {hook!r} (batch row {int(bad)}); "
                             f"training stopped before using it; last good checkpoint: {last or 'none yet'}")


def _progress_bar(enabled: bool, start: int, total: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, unit="step", desc="training dictionaries", dynamic_ncols=True)
