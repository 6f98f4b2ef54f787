"""Tokenizer-independent building blocks: which candidate words are single tokens, the
train / held-out rule for prompts, and packing token lists into a :class:`Task`."""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch

from mechscope.errors import ConfigError
from mechscope.tasks.task import Task, TaskError, VocabularyError

HELDOUT_MODULUS = 5  # one prompt in five is held out
SPLITS = ("train", "heldout")


def encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def bos(tokenizer) -> int:
    from mechscope.data.tokenizer import bos_id

    return bos_id(tokenizer)


def single_tokens(tokenizer, words: Sequence[str], prefix: str = " ") -> dict[str, int]:
    """``{word: id}`` for the words that ``prefix + word`` encodes to exactly one token."""
    out: dict[str, int] = {}
    for w in dict.fromkeys(words):
        ids = encode(tokenizer, prefix + w)
        if len(ids) == 1:
            out[w] = ids[0]
    return out


def require(found: dict | list, need: int, what: str, task: str) -> None:
    if len(found) < need:
        raise VocabularyError(
            f"task {task!r} needs at least {need} {what} that are single tokens under this tokenizer; found {len(found)}"
            f"{' (' + ', '.join(map(str, list(found)[:8])) + ')' if found else ''}. Use another variant or a tokenizer with a larger vocabulary."
        )


def is_heldout(key: str) -> bool:
    """A prompt is held out when sha1 of its key (the slot values that define it) is 0 mod 5."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % HELDOUT_MODULUS == 0


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; expected one of {SPLITS}")


def check_n(n: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"n (number of prompts) must be a positive integer, found {n!r}")


def pack(
    name: str,
    variant: str,
    tokenizer,
    clean: list[list[int]],
    corrupted: list[list[int]],
    answers: list[int],
    wrongs: list[list[int]],
    *,
    default_metric: str = "logit_diff",
    clean_text: list[str] | None = None,
    corrupted_text: list[str] | None = None,
    candidate_ids: list[int] | None = None,
    correct: list[list[bool]] | None = None,
    metadata: dict | None = None,
) -> Task:
    """Token lists -> a right-padded :class:`Task`; each clean/corrupted pair must have one length."""
    for i, (a, b) in enumerate(zip(clean, corrupted)):
        if len(a) != len(b):
            raise TaskError(
                f"{name}: prompt {i} has {len(a)} clean tokens but {len(b)} corrupted tokens; they must match "
                f"(clean {clean_text[i] if clean_text else a!r}, corrupted {corrupted_text[i] if corrupted_text else b!r})"
            )
    k = max(len(w) for w in wrongs)
    if any(len(w) != k for w in wrongs):
        raise TaskError(f"{name}: every prompt needs the same number of wrong answers; found {sorted({len(w) for w in wrongs})}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else bos(tokenizer)
    width = max(len(x) for x in clean)
    padded = lambda rows: torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)  # noqa: E731
    meta = dict(metadata or {})
    from mechscope.data.tokenizer import tokenizer_hash

    meta.setdefault("tokenizer_sha256", tokenizer_hash(tokenizer))
    meta["padded"] = any(len(x) != width for x in clean)
    return Task(
        name=name,
        variant=variant,
        clean=padded(clean),
        corrupted=padded(corrupted),
        answer_ids=torch.tensor(answers, dtype=torch.long),
        wrong_ids=torch.tensor(wrongs, dtype=torch.long),
        answer_pos=torch.tensor([len(x) - 1 for x in clean], dtype=torch.long),
        default_metric=default_metric,
        candidate_ids=None if candidate_ids is None else torch.tensor(candidate_ids, dtype=torch.long),
        correct=None if correct is None else torch.tensor(correct, dtype=torch.bool),
        clean_text=list(clean_text or []),
        corrupted_text=list(corrupted_text or []),
        metadata=meta,
    )
