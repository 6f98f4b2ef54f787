"""``Workspace``: everything a server shows, loaded once at start from an
:class:`~mechscope.explorer.config.ExplorerConfig` and checked (each dictionary against the model,
each circuit against its ground truth), plus the caches that make clicking around fast.

Requests name dictionaries and circuits by their index here; nothing else is ever read from disk
after start, except the dashboard cache under ``config.cache_dir``.

Integration points with other rooms (kept in this file, thin):
  * models: ``mechscope.models.load_model`` / ``resolve_hooks`` / ``run_with_cache``;
  * dictionaries: ``mechscope.dictionaries.Dictionary.load`` (native, SAELens, sparsify);
  * circuits: ``mechscope.circuits.Circuit.load``, ``Graph``, ``score_circuit``;
  * tasks / zoo: ``GroundTruth.load``, ``load_ground_truth`` (shipped names, ``zoo:NAME``);
  * data: ``load_corpus`` + ``TokenStream`` for the dashboard corpus slice;
  * linear: see :func:`mechscope.explorer.linear_view.load_linear`.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from mechscope.errors import ConfigError
from mechscope.explorer import compute as C
from mechscope.explorer import dashboards as D
from mechscope.explorer.config import ExplorerConfig
from mechscope.explorer.errors import IncompatibleError, NotFoundError

log = logging.getLogger(__name__)


@dataclass
class LoadedDictionary:
    id: int
    name: str
    source: str
    dictionary: Any

    @property
    def attention(self) -> bool:
        return C.is_attention_sae(self.dictionary)

    def info(self) -> dict:
        c = self.dictionary.cfg
        return {"id": self.id, "name": self.name, "source": self.source, "kind": c.kind, "activation": c.activation,
                "hook_in": c.hook_in, "hook_out": c.hook_out, "d_in": c.d_in, "n_latents": c.n_latents,
                "k": c.k if c.activation in ("topk", "batchtopk") else None, "attention": self.attention,
                "act_shape": c.act_shape}


@dataclass
class LoadedCircuit:
    id: int
    name: str
    circuit: Any
    graph: Any
    ground_truth: Any

    def info(self) -> dict:
        c = self.circuit
        return {"id": self.id, "name": self.name, "method": c.method, "task": c.task, "model": c.model,
                "n_nodes_selected": len(c.nodes), "n_node_scores": len(c.node_scores), "n_edge_scores": len(c.edge_scores),
                "has_ground_truth": self.ground_truth is not None}


def _load_ground_truth(spec: Any):
    from mechscope.tasks import GroundTruth, load_ground_truth

    if isinstance(spec, GroundTruth):
        return spec
    path = Path(str(spec))
    if path.suffix == ".json" or path.is_file():
        return GroundTruth.load(path)
    return load_ground_truth(str(spec))


def _norm_task(t: str) -> str:
    return (t or "").replace("-", "_").lower()


def match_ground_truth(circuit, truths: list, n_circuits: int):
    """The ground truth a circuit is scored against: same task and model, else same task, else
    the only one configured when only one circuit is; else a zoo organism's card (for a circuit
    found on ``zoo:NAME``); else None."""
    same_task = [g for g in truths if _norm_task(g.task) == _norm_task(circuit.task)]
    both = [g for g in same_task if g.model == circuit.model]
    if both:
        return both[0]
    if same_task:
        return same_task[0]
    if len(truths) == 1 and n_circuits == 1:
        return truths[0]
    if not truths and str(circuit.model).startswith("zoo:"):
        from mechscope.errors import FormatError, ModelSpecError

        try:
            from mechscope.zoo.cards import organism_ground_truth

            return organism_ground_truth(circuit.model[4:])
        except (ModelSpecError, FormatError, KeyError) as e:  # no shipped card for this organism: nothing to score against
            log.info("no ground truth for %s: %s", circuit.model, e)
    return None


class Workspace:
    """The loaded model, dictionaries, circuits and linear map, and the caches (see module docstring)."""

    def __init__(self, config: ExplorerConfig):
        from mechscope.models import load_model

        self.config = config
        self.lock = threading.RLock()  # one model computation at a time (hooks are registered on shared modules)
        self.model = load_model(config.model, device=config.device)
        self.dictionaries = [self._load_dictionary(i, spec) for i, spec in enumerate(config.dictionaries)]
        self._check_dictionaries()
        truths = [_load_ground_truth(g) for g in config.ground_truths]
        self.ground_truths = truths
        self.circuits = [self._load_circuit(i, spec, truths) for i, spec in enumerate(config.circuits)]
        self.linear, self.linear_description = (None, "")
        if config.linear is not None:
            from mechscope.explorer.linear_view import load_linear

            self.linear, self.linear_description = load_linear(config.linear, steps=config.linear_steps)
        self._prompts: OrderedDict[str, C.PromptRun] = OrderedDict()
        self._dashboards: dict[int, D.Dashboards] = {}
        self._dashboard_locks = [threading.Lock() for _ in self.dictionaries]
        self._stream = None
        self._model_hash: str | None = None
        self._dictionary_hashes: dict[int, str] = {}
        self._linear_overview: dict | None = None

    # -- loading ------------------------------------------------------------------------------
    def _load_dictionary(self, i: int, spec: Any) -> LoadedDictionary:
        from mechscope.dictionaries import Dictionary

        if isinstance(spec, Dictionary):
            d, source, name = spec, "(in memory)", spec.cfg.name if spec.cfg.hook_in else f"dictionary {i}"
        else:
            d, source = Dictionary.load(spec, device=self.config.device), str(spec)
            folder = Path(str(spec)).name
            name = d.cfg.name if folder == d.cfg.name else f"{folder} ({d.cfg.name})"
        return LoadedDictionary(id=i, name=name, source=source, dictionary=d.eval())

    def _check_dictionaries(self) -> None:
        """Every dictionary's hook exists in the model and has the dictionary's width."""
        from mechscope.models import resolve_hooks, run_with_cache

        if not self.dictionaries:
            return
        for ld in self.dictionaries:
            if not ld.dictionary.cfg.hook_in:
                raise IncompatibleError(f"dictionary {ld.id} ({ld.source}) records no hook_in, so the explorer cannot tell where it reads the model")
            resolve_hooks(self.model, ld.dictionary.cfg.hook_in)  # UnknownHookError names the nearest hooks
        names = C.hooks_needed([ld.dictionary for ld in self.dictionaries])
        with self.lock:
            cache = run_with_cache(self.model, torch.zeros(1, 2, dtype=torch.long, device=self.model.device), names, cache_device="cpu")
        for ld in self.dictionaries:
            act = cache[ld.dictionary.cfg.hook_in]
            width = act[0, 0].numel()
            if width != ld.dictionary.cfg.d_in:
                raise IncompatibleError(f"dictionary {ld.id} ({ld.source}) reads {ld.dictionary.cfg.d_in} numbers per position from "
                                        f"{ld.dictionary.cfg.hook_in}, but this model's {ld.dictionary.cfg.hook_in} has {width} "
                                        f"(shape {list(act.shape[2:])}); is it a dictionary for another model?")

    def _load_circuit(self, i: int, spec: Any, truths: list) -> LoadedCircuit:
        from mechscope.circuits import Circuit

        circuit, name = (spec, f"{spec.method} circuit") if isinstance(spec, Circuit) else (Circuit.load(spec), Path(str(spec)).name)
        graph = C.circuit_graph_info(circuit, self.model)
        truth = match_ground_truth(circuit, truths, len(self.config.circuits))
        return LoadedCircuit(id=i, name=name, circuit=circuit, graph=graph, ground_truth=truth)

    # -- lookups ------------------------------------------------------------------------------
    def dictionary(self, i: int) -> LoadedDictionary:
        if not 0 <= i < len(self.dictionaries):
            raise NotFoundError(f"no dictionary {i}: this server has {len(self.dictionaries)} (ids 0..{len(self.dictionaries) - 1})")
        return self.dictionaries[i]

    def circuit(self, i: int) -> LoadedCircuit:
        if not 0 <= i < len(self.circuits):
            raise NotFoundError(f"no circuit {i}: this server has {len(self.circuits)} (ids 0..{len(self.circuits) - 1})")
        return self.circuits[i]

    @property
    def max_tokens(self) -> int:
        n_ctx = getattr(getattr(self.model.module, "cfg", None), "n_ctx", None)
        limit = self.config.limits.max_prompt_tokens
        return min(limit, int(n_ctx)) if n_ctx else limit

    def info(self) -> dict:
        m = self.model
        cfg = getattr(m.module, "cfg", None)
        model = {"name": m.name, "kind": m.kind, "has_tokenizer": m.tokenizer is not None,
                 "params": sum(p.numel() for p in m.module.parameters())}
        if cfg is not None:
            model.update({k: getattr(cfg, k, None) for k in ("n_layers", "n_heads", "d_model", "d_head", "n_ctx", "d_vocab", "attn_only")})
        return {"model": model, "dictionaries": [d.info() for d in self.dictionaries], "circuits": [c.info() for c in self.circuits],
                "linear": {"available": self.linear is not None, "description": self.linear_description},
                "limits": {"max_prompt_chars": self.config.limits.max_prompt_chars, "max_prompt_tokens": self.max_tokens,
                           "max_top_k": self.config.limits.max_top_k, "max_edges": self.config.limits.max_edges},
                "dashboards": {"corpus": self.config.dashboards.corpus, "split": self.config.dashboards.split,
                               "n_contexts": self.config.dashboards.n_contexts, "context_len": self.config.dashboards.context_len}}

    # -- prompts ------------------------------------------------------------------------------
    def run(self, prompt: str) -> C.PromptRun:
        """The forward pass on ``prompt`` (kept in a small LRU cache)."""
        with self.lock:
            if prompt in self._prompts:
                self._prompts.move_to_end(prompt)
                return self._prompts[prompt]
            run = C.run_prompt(self.model, prompt, [d.dictionary for d in self.dictionaries], self.max_tokens)
            self._prompts[prompt] = run
            while len(self._prompts) > self.config.limits.prompt_cache_size:
                self._prompts.popitem(last=False)
            return run

    # -- dashboards ---------------------------------------------------------------------------
    def _token_stream(self):
        from mechscope.data import TokenStream, load_corpus

        if self._stream is None:
            cfg = self.config.dashboards
            if self.model.tokenizer is None:
                raise ConfigError(f"model {self.model.name!r} has no tokenizer: dashboards need one to read the corpus")
            n_ctx = getattr(getattr(self.model.module, "cfg", None), "n_ctx", None) or cfg.context_len
            self._stream = TokenStream(load_corpus(cfg.corpus, split=cfg.split), self.model.tokenizer,
                                       context_len=min(cfg.context_len, int(n_ctx)))
        return self._stream

    def dashboard_dir(self, i: int) -> tuple[Path, torch.Tensor, list[int]]:
        """Where dictionary ``i``'s dashboards are cached, and the corpus slice they cover."""
        ld = self.dictionary(i)
        stream = self._token_stream()
        tokens, ids = D.corpus_slice(stream, self.config.dashboards.n_contexts)
        if self._model_hash is None:
            self._model_hash = D.model_hash(self.model)
        if i not in self._dictionary_hashes:
            self._dictionary_hashes[i] = D.dictionary_hash(ld.dictionary)
        key = D.cache_key(self._dictionary_hashes[i], self._model_hash, stream.source_hash, ids, self.config.dashboards)
        return Path(self.config.cache_dir) / "dashboards" / key, tokens, ids

    def dashboards_in_memory(self, i: int) -> bool:
        return i in self._dashboards

    def dashboards(self, i: int, progress: Callable[[str, float], None] | None = None) -> tuple[D.Dashboards, str]:
        """Dictionary ``i``'s dashboards and where they came from: ``"memory"``, ``"disk"`` (the
        cache file) or ``"computed"`` (and written to the cache)."""
        ld = self.dictionary(i)
        with self._dashboard_locks[i]:
            if i in self._dashboards:
                return self._dashboards[i], "memory"
            with self.lock:
                directory, tokens, ids = self.dashboard_dir(i)
                cfg = self.config.dashboards
                meta = {"corpus": f"{cfg.corpus}:{cfg.split}", "cache_key": directory.name, "dictionary": ld.source}
                dash, source = D.load_or_compute(directory, lambda: D.compute_dashboards(
                    self.model, ld.dictionary, tokens, cfg, context_ids=ids, meta=meta, progress=progress))
            self._dashboards[i] = dash
            return dash, source

    # -- linear -------------------------------------------------------------------------------
    def linear_map(self):
        if self.linear is None:
            raise NotFoundError("no linear map is configured (start the server with --linear-demo NAME or --linear-map DIR)")
        return self.linear

    def linear_overview(self) -> dict:
        from mechscope.explorer.linear_view import linear_overview

        amap = self.linear_map()
        with self.lock:
            if self._linear_overview is None:
                self._linear_overview = linear_overview(amap, self.linear_description)
            return self._linear_overview
