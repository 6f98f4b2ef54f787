"""``ExplorerConfig``: what a server shows (model, dictionaries, circuits, linear map) and the
limits it enforces. Every file the server ever reads is named here, at start; requests refer to
dictionaries and circuits by their index in these lists, never by a path."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mechscope.errors import ConfigError

LINEAR_DEMOS = ("digits", "superres", "denoise")


@dataclass
class Limits:
    """Bounds on request values (validated by the API's request models)."""

    max_prompt_chars: int = 2000
    max_prompt_tokens: int = 256  # further capped by the model's context length
    max_top_k: int = 50
    max_edges: int = 2000
    max_request_bytes: int = 64 * 1024
    prompt_cache_size: int = 8  # analysed prompts kept in memory (clicking a feature re-uses the forward pass)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"Limits.{f.name} must be a positive integer; found {v!r}")


@dataclass
class DashboardConfig:
    """How feature dashboards are computed (once per dictionary, cached on disk).

    corpus: a :func:`mechscope.data.load_corpus` spec (``"stdlib"`` = the embedded corpus);
    split: its split; n_contexts contexts of context_len tokens, evenly spaced over the stream;
    top_k: activating examples kept per feature, each with ``window_before`` / ``window_after``
    tokens of context; n_bins: histogram bins; n_logits: top and bottom decoder logit effects.
    """

    corpus: str = "stdlib"
    split: str = "heldout"
    n_contexts: int = 512
    context_len: int = 64
    top_k: int = 12
    window_before: int = 12
    window_after: int = 4
    n_bins: int = 32
    n_logits: int = 10
    batch_size: int = 16
    exclude_bos: bool = True

    def __post_init__(self):
        for name in ("n_contexts", "context_len", "top_k", "n_bins", "n_logits", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"DashboardConfig.{name} must be a positive integer; found {v!r}")
        if self.context_len < 2:
            raise ConfigError(f"DashboardConfig.context_len must be >= 2; found {self.context_len}")
        for name in ("window_before", "window_after"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ConfigError(f"DashboardConfig.{name} must be an integer >= 0; found {v!r}")
        if self.split not in ("train", "heldout", "all"):
            raise ConfigError(f"DashboardConfig.split must be 'train', 'heldout' or 'all'; found {self.split!r}")

    def key(self) -> dict:
        """The fields that change the numbers (part of the cache key)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "batch_size"}


@dataclass
class ExplorerConfig:
    """A workspace to serve.

    model: a :func:`mechscope.models.load_model` spec (zoo name, directory, TL name) or a loaded
        ``Model`` / ``nn.Module``.
    dictionaries: dictionary directories (native, SAELens or sparsify), or loaded ``Dictionary``
        objects.
    circuits: circuit JSON files (:class:`mechscope.circuits.Circuit`), or ``Circuit`` objects.
    ground_truths: ground-truth JSON files, shipped names (``ioi-gpt2-small``), ``zoo:NAME``, or
        ``GroundTruth`` objects; a circuit is scored against the one whose task (and model) match.
    cache_dir: where dashboards are cached (default ``$MECHSCOPE_CACHE/explorer``).
    linear: ``"demo:digits"`` / ``"demo:superres"`` / ``"demo:denoise"`` (an in-project image
        model, trained once and cached), a saved ``AffineMap`` directory, an ``AffineMap`` object,
        or None (no linear view). linear_steps: training steps for a demo (None: its default).
    """

    model: Any
    dictionaries: list[Any] = field(default_factory=list)
    circuits: list[Any] = field(default_factory=list)
    ground_truths: list[Any] = field(default_factory=list)
    cache_dir: str | Path | None = None
    linear: Any = None
    linear_steps: int | None = None
    device: str = "cpu"
    dashboards: DashboardConfig = field(default_factory=DashboardConfig)
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self):
        if self.model is None:
            raise ConfigError("ExplorerConfig.model is required (a zoo name, model directory or TransformerLens name)")
        for name in ("dictionaries", "circuits", "ground_truths"):
            v = getattr(self, name)
            if isinstance(v, (str, Path)) or v is None:
                setattr(self, name, [] if v is None else [v])
            else:
                setattr(self, name, list(v))
        if isinstance(self.linear, str) and self.linear.startswith("demo:") and self.linear[5:] not in LINEAR_DEMOS:
            raise ConfigError(f"unknown linear demo {self.linear!r}; expected one of {', '.join('demo:' + d for d in LINEAR_DEMOS)} or a saved map directory")
        if self.cache_dir is None:
            from mechscope.data.cache import cache_dir

            self.cache_dir = cache_dir("explorer")
        self.cache_dir = Path(self.cache_dir)
