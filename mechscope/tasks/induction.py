"""Induction on repeated random token sequences (Olsson et al. 2022, "In-context Learning and
Induction Heads", transformer-circuits.pub).

Clean prompt: ``BOS A_1 .. A_L A_1 .. A_k`` -> ``A_{k+1}`` (the token that followed ``A_k`` the
first time). Corrupted: ``BOS B_1 .. B_L A_1 .. A_k`` with a fresh random ``B``, so the second
half has no earlier occurrence to copy from. The wrong answer is another token of ``A`` (so a head
that merely copies *some* earlier token does not score). Metric: logit difference.

Tokens are drawn without replacement from the tokenizer's ordinary (non-special) ids, so this
works for any tokenizer. Variant ``random`` (the only one); ``seq_len`` (L) and ``prefix_len`` (k)
are parameters.
"""

from __future__ import annotations

import random

from mechscope.errors import ConfigError
from mechscope.tasks.task import Task
from mechscope.tasks.vocab import check_n, check_split, is_heldout, bos, pack

CITATION = "Olsson et al. (2022). In-context Learning and Induction Heads. Transformer Circuits Thread, https://transformer-circuits.pub/2022/in-context-learning-and-induction-heads/"
VARIANTS = ("random",)


def token_pool(tokenizer) -> list[int]:
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    return [i for i in range(len(tokenizer)) if i not in special]


def make_induction(tokenizer, n: int, seed: int = 0, split: str = "train", variant: str = "random", seq_len: int = 10,
                   prefix_len: int = 5) -> Task:
    """Repeated-random-sequence prompts (see the module docstring)."""
    check_n(n)
    check_split(split)
    if variant not in VARIANTS:
        raise ConfigError(f"unknown induction variant {variant!r}; expected one of {VARIANTS}")
    if not (seq_len >= 3 and 1 <= prefix_len < seq_len):
        raise ConfigError(f"need seq_len >= 3 and 1 <= prefix_len < seq_len; found seq_len={seq_len}, prefix_len={prefix_len}")
    pool = token_pool(tokenizer)
    if len(pool) < 2 * seq_len:
        raise ConfigError(f"tokenizer has {len(pool)} ordinary tokens; induction with seq_len={seq_len} needs {2 * seq_len}")
    rng = random.Random(f"induction|{seed}")
    start = [bos(tokenizer)]
    clean, corr, answers, wrongs = [], [], [], []
    while len(clean) < n:
        draw = rng.sample(pool, 2 * seq_len)
        a, b = draw[:seq_len], draw[seq_len:]
        if is_heldout("induction|" + ",".join(map(str, a))) != (split == "heldout"):
            continue
        j = rng.choice([i for i in range(seq_len) if i != prefix_len])
        clean.append(start + a + a[:prefix_len])
        corr.append(start + b + a[:prefix_len])
        answers.append(a[prefix_len])
        wrongs.append([a[j]])
    return pack("induction", variant, tokenizer, clean, corr, answers, wrongs,
                metadata={"seed": seed, "split": split, "corruption": "fresh_first_half", "seq_len": seq_len, "prefix_len": prefix_len,
                          "citation": CITATION})
