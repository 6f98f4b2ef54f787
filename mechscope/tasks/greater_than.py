"""Greater-than (Hanna, Liu & Variengien 2023, "How does GPT-2 compute greater-than?",
arXiv:2305.00586).

Clean prompt: "The war lasted from the year 1732 to the year 17" -> any two-digit year YY' > 32.
Corrupted prompt: the same with YY = 01 ("... from the year 1701 to the year 17"), so every
year is "greater" and the model has no information about where the boundary lies.

The answer is a *set*: ``candidate_ids`` are the two-digit year tokens "00".."99" that are single
tokens under the tokenizer; ``correct[i, j]`` says candidate j is > YY for prompt i. Default
metric: probability difference, sum p(YY' > YY) - sum p(YY' <= YY) (the paper's). ``answer_ids``
holds one correct year per prompt (drawn at random) and ``wrong_ids`` the start year YY itself.

Years are kept only where the tokenizer splits "{XX}{YY}" into the tokens of " {XX}" followed by
the single token "{YY}" (GPT-2: " 17" + "32"; a code BPE may give " 1" "7" "32", which works just
as well) — the same filter the paper and ACDC apply. Centuries 11..17, YY in 02..98 as in the paper.
Nouns are the paper's, kept when they are one token with a leading space (so all prompts have one
length). Variant ``paper`` is the only one; the zoo organism is trained on it directly.
"""

from __future__ import annotations

import random

from mechscope.errors import ConfigError
from mechscope.tasks.task import Task
from mechscope.tasks.vocab import check_n, check_split, encode, is_heldout, bos, pack, require, single_tokens

CITATION = "Hanna, Liu & Variengien (2023). How does GPT-2 compute greater-than?: Interpreting mathematical abilities in a pre-trained language model. NeurIPS 2023, arXiv:2305.00586"

NOUNS = (
    "abduction accord affair agreement appraisal assaults assessment attack attempts campaign captivity case challenge "
    "chaos clash collaboration coma competition confrontation consequence conspiracy construction consultation contact "
    "contract convention cooperation custody deal decline decrease demonstrations development disagreement disorder "
    "dispute domination dynasty effect effort employment endeavor engagement epidemic evaluation exchange existence "
    "expansion expedition experiments fall fame flights friendship growth hardship hostility illness impact imprisonment "
    "improvement incarceration increase insurgency invasion investigation journey kingdom marriage modernization "
    "negotiation notoriety obstruction operation order outbreak outcome overhaul patrols pilgrimage plague plan practice "
    "process program progress project pursuit quest raids reforms reign relationship retaliation riot rise rivalry "
    "romance rule sanctions shift siege slump stature stint strikes study test testing tests therapy tour tradition "
    "treaty trial trip unemployment voyage warfare work war"
).split()
TEMPLATE = "The {noun} lasted from the year {xx}{yy} to the year {xx}"
CENTURIES = tuple(range(11, 18))
VARIANTS = ("paper",)


def year_tokens(tokenizer) -> dict[int, int]:
    """``{yy: token id}`` for the two-digit strings "00".."99" that are single tokens."""
    out = {}
    for yy in range(100):
        ids = encode(tokenizer, f"{yy:02d}")
        if len(ids) == 1:
            out[yy] = ids[0]
    return out


def valid_years(tokenizer, noun: str = "war") -> dict[int, list[int]]:
    """``{century: [yy, ...]}``: years whose prompt tokenizes as prefix + the single YY token,
    and whose century also admits the corruption YY = 01."""
    yt = year_tokens(tokenizer)
    out: dict[int, list[int]] = {}
    for xx in CENTURIES:
        prefix = encode(tokenizer, f"The {noun} lasted from the year {xx}")
        ok = []
        for yy in [1, *range(2, 99)]:
            if yy in yt and encode(tokenizer, f"The {noun} lasted from the year {xx}{yy:02d}") == prefix + [yt[yy]]:
                ok.append(yy)
        if 1 in ok and len(ok) > 1:
            out[xx] = [y for y in ok if y >= 2]
    return out


def make_greater_than(tokenizer, n: int, seed: int = 0, split: str = "train", variant: str = "paper") -> Task:
    """Greater-than prompts (see the module docstring)."""
    check_n(n)
    check_split(split)
    if variant not in VARIANTS:
        raise ConfigError(f"unknown greater-than variant {variant!r}; expected one of {VARIANTS}")
    nouns = list(single_tokens(tokenizer, NOUNS))
    require(nouns, 3, "nouns", "greater_than")
    yt = year_tokens(tokenizer)
    years = valid_years(tokenizer)
    require([(c, y) for c, ys in years.items() for y in ys], 20, "two-digit years", "greater_than")
    cand_yy = sorted(yt)
    cand_ids = [yt[y] for y in cand_yy]
    rng = random.Random(f"greater_than|{variant}|{seed}")
    start = [bos(tokenizer)]
    # keep the centuries whose prompts share the most common token length (no padding)
    lengths = {xx: len(encode(tokenizer, TEMPLATE.format(noun=nouns[0], xx=xx, yy=f"{years[xx][0]:02d}"))) for xx in years}
    modal = max(set(lengths.values()), key=lambda L: (sum(len(years[x]) for x in years if lengths[x] == L), -L))
    centuries = sorted(xx for xx in years if lengths[xx] == modal)
    clean, corr, answers, wrongs, ctext, xtext, correct = [], [], [], [], [], [], []
    tries = 0
    while len(clean) < n:
        tries += 1
        if tries > 200 * n + 10_000:
            raise ConfigError(f"could not draw {n} {split} greater-than prompts")
        noun, xx = rng.choice(nouns), rng.choice(centuries)
        yy = rng.choice(years[xx])
        if is_heldout(f"greater_than|{noun}|{xx}|{yy}") != (split == "heldout"):
            continue
        text = TEMPLATE.format(noun=noun, xx=xx, yy=f"{yy:02d}")
        cor = TEMPLATE.format(noun=noun, xx=xx, yy="01")
        a, b = start + encode(tokenizer, text), start + encode(tokenizer, cor)
        bigger = [y for y in cand_yy if y > yy]
        clean.append(a)
        corr.append(b)
        answers.append(yt[rng.choice(bigger)])
        wrongs.append([yt[yy]])
        correct.append([y > yy for y in cand_yy])
        ctext.append(text)
        xtext.append(cor)
    return pack("greater_than", variant, tokenizer, clean, corr, answers, wrongs, default_metric="prob_diff", clean_text=ctext,
                corrupted_text=xtext, candidate_ids=cand_ids, correct=correct,
                metadata={"seed": seed, "split": split, "corruption": "yy01", "candidate_years": cand_yy, "citation": CITATION})
