"""The ``Task`` type: clean and corrupted prompts of equal token length, the tokens that
answer them, and the metrics every circuit method is scored with.

Shapes: ``clean`` and ``corrupted`` are ``[n, pos]``; ``answer_ids`` is ``[n]``; ``wrong_ids`` is
``[n, k]`` (k >= 1 distractors per prompt); ``answer_pos`` is ``[n]`` (the position whose
next-token prediction is scored, usually the last real token). Tasks whose answer is a *set*
(greater-than: every year after YY) also carry ``candidate_ids`` ``[c]`` and ``correct``
``[n, c]`` (which candidates are right for each prompt).

Metrics take logits ``[n, pos, vocab]`` (gathered at ``answer_pos``) or ``[n, vocab]`` (already
at the answer position) and return a scalar mean, or ``[n]`` with ``per_prompt=True``:

* ``logit_diff``: logit(answer) - max logit(wrong); for set tasks, mean logit of the correct
  candidates - mean logit of the incorrect ones.
* ``prob_diff``: p(answer) - max p(wrong); for set tasks, sum p(correct) - sum p(incorrect)
  (Hanna et al. 2023's probability difference).
* ``accuracy``: the top-1 token over the *whole vocabulary* is the answer (set tasks: is a
  correct candidate). ``binary_accuracy``: logit_diff > 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mechscope.errors import ConfigError, FormatError, MechscopeError

METRICS = ("logit_diff", "prob_diff", "accuracy", "binary_accuracy")
TASK_FORMAT = "mechscope.task"
TASK_VERSION = 1


class TaskError(MechscopeError, ValueError):
    """A task that cannot be built as asked (e.g. clean and corrupted prompts of different length)."""


class VocabularyError(TaskError):
    """The tokenizer has too few single-token words/names/numbers for the task."""


@dataclass
class Task:
    """A circuit task: see the module docstring for fields, shapes and metrics."""

    name: str
    variant: str
    clean: torch.Tensor
    corrupted: torch.Tensor
    answer_ids: torch.Tensor
    wrong_ids: torch.Tensor
    answer_pos: torch.Tensor
    default_metric: str = "logit_diff"
    candidate_ids: torch.Tensor | None = None
    correct: torch.Tensor | None = None
    clean_text: list[str] = field(default_factory=list)
    corrupted_text: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        n = self.clean.shape[0]
        if self.clean.dim() != 2 or self.clean.shape != self.corrupted.shape:
            raise TaskError(f"clean and corrupted tokens must both be [n, pos] of one shape; found {tuple(self.clean.shape)} and {tuple(self.corrupted.shape)}")
        if self.wrong_ids.dim() == 1:
            self.wrong_ids = self.wrong_ids[:, None]
        for nm in ("answer_ids", "wrong_ids", "answer_pos"):
            t = getattr(self, nm)
            if t.shape[0] != n:
                raise TaskError(f"{nm} has {t.shape[0]} rows; expected one per prompt ({n})")
        if (self.candidate_ids is None) != (self.correct is None):
            raise TaskError("candidate_ids and correct come together (both or neither)")
        if self.correct is not None and tuple(self.correct.shape) != (n, self.candidate_ids.shape[0]):
            raise TaskError(f"correct must be [n, n_candidates] = [{n}, {self.candidate_ids.shape[0]}], found {tuple(self.correct.shape)}")
        if self.default_metric not in METRICS:
            raise ConfigError(f"unknown metric {self.default_metric!r}; expected one of {METRICS}")

    # ---- basics -------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.clean.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.clean.shape[1])

    @property
    def is_set_task(self) -> bool:
        return self.candidate_ids is not None

    @property
    def fixed_answer_pos(self) -> int | None:
        """The answer position when all prompts share it (no padding), else ``None``."""
        first = int(self.answer_pos[0])
        return first if bool((self.answer_pos == first).all()) else None

    def to(self, device: str | torch.device) -> "Task":
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return Task(**moved)

    def subset(self, idx: Any) -> "Task":
        """Rows ``idx`` (a slice, list or index tensor) as a new Task."""
        if isinstance(idx, slice):
            rows = list(range(len(self)))[idx]
        else:
            rows = [int(i) for i in (idx.tolist() if isinstance(idx, torch.Tensor) else idx)]
        ix = torch.tensor(rows, dtype=torch.long)
        pick = lambda t: None if t is None else t[ix.to(t.device)]  # noqa: E731
        text = lambda xs: [xs[i] for i in rows] if xs else []  # noqa: E731
        return Task(self.name, self.variant, pick(self.clean), pick(self.corrupted), pick(self.answer_ids), pick(self.wrong_ids),
                    pick(self.answer_pos), self.default_metric, self.candidate_ids, pick(self.correct), text(self.clean_text),
                    text(self.corrupted_text), dict(self.metadata))

    # ---- metrics ------------------------------------------------------------------------
    def logits_at_answer(self, logits: torch.Tensor) -> torch.Tensor:
        """``[n, pos, vocab]`` -> ``[n, vocab]`` at ``answer_pos``; ``[n, vocab]`` passes through."""
        if logits.dim() == 2:
            if logits.shape[0] != len(self):
                raise TaskError(f"logits have {logits.shape[0]} rows; the task has {len(self)} prompts")
            return logits
        if logits.dim() != 3 or logits.shape[0] != len(self):
            raise TaskError(f"expected logits [n={len(self)}, pos, vocab] or [n, vocab]; found {tuple(logits.shape)}")
        pos = self.answer_pos.to(logits.device)
        return logits[torch.arange(len(self), device=logits.device), pos]

    def metric(self, logits: torch.Tensor, kind: str | None = None, per_prompt: bool = False) -> torch.Tensor:
        """One of ``logit_diff``, ``prob_diff``, ``accuracy``, ``binary_accuracy`` (default: the task's)."""
        kind = kind or self.default_metric
        if kind not in METRICS:
            raise ConfigError(f"unknown metric {kind!r}; expected one of {METRICS}")
        x = self.logits_at_answer(logits).float()
        dev = x.device
        if kind == "accuracy":
            top = x.argmax(-1)
            if self.is_set_task:
                hit = (top[:, None] == self.candidate_ids.to(dev)[None]) & self.correct.to(dev)
                v = hit.any(-1).float()
            else:
                v = (top == self.answer_ids.to(dev)).float()
        elif kind == "binary_accuracy":
            v = (self.metric(x, "logit_diff", per_prompt=True) > 0).float()
        elif self.is_set_task:
            cand, good = self.candidate_ids.to(dev), self.correct.to(dev)
            vals = x[:, cand] if kind == "logit_diff" else x.softmax(-1)[:, cand]
            if kind == "logit_diff":
                g = (vals * good).sum(-1) / good.sum(-1).clamp(min=1)
                b = (vals * ~good).sum(-1) / (~good).sum(-1).clamp(min=1)
            else:
                g, b = (vals * good).sum(-1), (vals * ~good).sum(-1)
            v = g - b
        else:
            vals = x if kind == "logit_diff" else x.softmax(-1)
            ans = vals.gather(1, self.answer_ids.to(dev)[:, None])[:, 0]
            wrong = vals.gather(1, self.wrong_ids.to(dev)).max(-1).values
            v = ans - wrong
        return v if per_prompt else v.mean()

    def logit_diff(self, logits: torch.Tensor, per_prompt: bool = False) -> torch.Tensor:
        return self.metric(logits, "logit_diff", per_prompt)

    def prob_diff(self, logits: torch.Tensor, per_prompt: bool = False) -> torch.Tensor:
        return self.metric(logits, "prob_diff", per_prompt)

    def accuracy(self, logits: torch.Tensor, per_prompt: bool = False) -> torch.Tensor:
        return self.metric(logits, "accuracy", per_prompt)

    # ---- files --------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """``cfg.json`` (name, variant, texts, metadata) + ``task.safetensors`` (the tensors)."""
        from mechscope.files import save_artifact

        tensors = {k: getattr(self, k) for k in ("clean", "corrupted", "answer_ids", "wrong_ids", "answer_pos", "candidate_ids", "correct")
                   if getattr(self, k) is not None}
        tensors = {k: (v.to(torch.uint8) if v.dtype == torch.bool else v) for k, v in tensors.items()}
        cfg = {"name": self.name, "variant": self.variant, "default_metric": self.default_metric, "clean_text": self.clean_text,
               "corrupted_text": self.corrupted_text, "metadata": self.metadata}
        save_artifact(directory, TASK_FORMAT, TASK_VERSION, cfg, {"task": tensors})
        return Path(directory)

    @classmethod
    def load(cls, directory: str | Path) -> "Task":
        from mechscope.files import load_artifact

        cfg, tensors = load_artifact(directory, TASK_FORMAT, TASK_VERSION)
        t = tensors.get("task")
        if t is None:
            raise FormatError(f"{directory}: no task.safetensors listed in cfg.json")
        if "correct" in t:
            t["correct"] = t["correct"].bool()
        return cls(cfg["name"], cfg["variant"], t["clean"], t["corrupted"], t["answer_ids"], t["wrong_ids"], t["answer_pos"],
                   cfg["default_metric"], t.get("candidate_ids"), t.get("correct"), cfg.get("clean_text", []),
                   cfg.get("corrupted_text", []), cfg.get("metadata", {}))

    def __repr__(self) -> str:
        return f"Task({self.name!r}, variant={self.variant!r}, n={len(self)}, seq_len={self.seq_len}, metric={self.default_metric!r})"
