"""``make_task(name, tokenizer, n, seed, split, variant=...)``: one entry point for every task."""

from __future__ import annotations

from typing import Callable

from mechscope.errors import ConfigError
from mechscope.tasks.task import Task


def _builders() -> dict[str, tuple[Callable[..., Task], tuple[str, ...], str | Callable[..., str]]]:
    from mechscope.tasks import docstring, greater_than, induction, ioi

    return {
        "ioi": (ioi.make_ioi, tuple(ioi.VARIANTS), "paper"),
        "greater_than": (greater_than.make_greater_than, greater_than.VARIANTS, greater_than.default_variant),
        "docstring": (docstring.make_docstring, tuple(docstring.VARIANTS), "paper"),
        "induction": (induction.make_induction, induction.VARIANTS, "random"),
    }


ALIASES = {"greater-than": "greater_than", "greaterthan": "greater_than", "gt": "greater_than"}


def list_tasks() -> dict[str, list[str]]:
    """``{task name: [variants]}``."""
    return {name: list(v) for name, (_, v, _) in _builders().items()}


def make_task(name: str, tokenizer, n: int = 128, seed: int = 0, split: str = "train", variant: str | None = None, **kwargs) -> Task:
    """Build ``n`` prompts of task ``name`` for ``tokenizer``.

    Args:
        name: ``ioi``, ``greater_than``, ``docstring`` or ``induction``.
        tokenizer: any HF-compatible tokenizer (words, names and numbers are filtered to the ones
            that are single tokens under it; an error says when too few are left).
        n: number of prompts. seed: the same seed gives the same prompts.
        split: ``train`` or ``heldout`` — disjoint by a hash rule on each prompt's defining slots.
        variant: ``paper`` (the published templates, for GPT-2-like tokenizers) or the synthetic
            analogue the zoo organisms use (``code`` for IOI and docstring); default ``paper``
            (greater-than: ``digits`` for tokenizers that write numbers one digit per token).
        kwargs: task-specific options (``corruption`` for IOI and docstring, ``seq_len`` /
            ``prefix_len`` for induction, ``forms`` for IOI).
    """
    builders = _builders()
    key = ALIASES.get(name, name)
    if key not in builders:
        raise ConfigError(f"unknown task {name!r}; expected one of {sorted(builders)}")
    fn, variants, default = builders[key]
    variant = variant or (default(tokenizer) if callable(default) else default)
    if variant not in variants:
        raise ConfigError(f"task {key!r} has no variant {variant!r}; variants: {list(variants)}")
    return fn(tokenizer, n, seed=seed, split=split, variant=variant, **kwargs)
