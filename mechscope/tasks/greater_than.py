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
length). The zoo organism is trained on variant ``paper`` directly.

Variant ``digits``, for tokenizers that write numbers one digit per token (Llama 1/2, Mistral,
Gemma, Qwen: no "32" token): the next token after "... to the year 17" is the *tens* digit. YY is
always D9 ("1739"), so the set is exact at one token: a year after 17D9 starts with a tens digit
> D, and a tens digit <= D gives a year <= 17D9. Candidates are the ten digit tokens; the
corruption is again YY = 01. ``make_task("greater_than", tok)`` picks ``digits`` when the tokenizer
has too few two-digit year tokens for ``paper`` and enough single digits.
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
VARIANTS = ("paper", "digits")
MIN_YEARS = 20


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


def digit_years(tokenizer, noun: str = "war") -> tuple[dict[int, int], dict[int, list[int]]]:
    """Variant ``digits``: ``({digit: token id}, {century: [D, ...]})`` for the years 17D9 whose
    prompt tokenizes as the prefix + the digit tokens D and 9 (and the corruption as prefix + 0, 1)."""
    digits: dict[int, int] = {}
    out: dict[int, list[int]] = {}
    for xx in CENTURIES:
        prefix = encode(tokenizer, f"The {noun} lasted from the year {xx}")
        ok = []
        for tens, units in [(0, 1)] + [(d, 9) for d in range(9)]:
            ids = encode(tokenizer, f"The {noun} lasted from the year {xx}{tens}{units}")
            if ids[:len(prefix)] != prefix or len(ids) != len(prefix) + 2:
                continue
            found = {tens: ids[-2], units: ids[-1]}
            if any(tokenizer.decode([i]).strip() != str(d) or digits.get(d, i) != i for d, i in found.items()):
                continue
            digits.update(found)
            ok.append((tens, units))
        if (0, 1) in ok:
            out[xx] = [d for d, u in ok if u == 9]
    return digits, {xx: ds for xx, ds in out.items() if ds}


def default_variant(tokenizer) -> str:
    """``paper`` unless the tokenizer lacks two-digit year tokens and writes numbers digit by digit."""
    if sum(map(len, valid_years(tokenizer).values())) >= MIN_YEARS:
        return "paper"
    digits, years = digit_years(tokenizer)
    return "digits" if len(digits) == 10 and sum(map(len, years.values())) >= MIN_YEARS else "paper"


def make_greater_than(tokenizer, n: int, seed: int = 0, split: str = "train", variant: str = "paper") -> Task:
    """Greater-than prompts (see the module docstring)."""
    check_n(n)
    check_split(split)
    if variant not in VARIANTS:
        raise ConfigError(f"unknown greater-than variant {variant!r}; expected one of {VARIANTS}")
    nouns = list(single_tokens(tokenizer, NOUNS))
    require(nouns, 3, "nouns", "greater_than")
    # yt: {candidate: token id}; years: {century: [boundary b]}; a candidate c is correct when c > b.
    # paper: candidates and b are two-digit years YY; digits: tens digits, b = D of the year 17D9
    if variant == "digits":
        yt, years = digit_years(tokenizer)
        require(yt, 10, "digits", "greater_than")
        year_of = lambda b: 10 * b + 9  # noqa: E731
    else:
        yt, years = year_tokens(tokenizer), valid_years(tokenizer)
        year_of = lambda b: b  # noqa: E731
    require([(c, y) for c, ys in years.items() for y in ys], MIN_YEARS, "two-digit years" if variant == "paper" else "years 17D9",
            "greater_than")
    cand_yy = sorted(yt)
    cand_ids = [yt[y] for y in cand_yy]
    rng = random.Random(f"greater_than|{variant}|{seed}")
    start = [bos(tokenizer)]
    # keep the centuries whose prompts share the most common token length (no padding)
    lengths = {xx: len(encode(tokenizer, TEMPLATE.format(noun=nouns[0], xx=xx, yy=f"{year_of(years[xx][0]):02d}"))) for xx in years}
    modal = max(set(lengths.values()), key=lambda L: (sum(len(years[x]) for x in years if lengths[x] == L), -L))
    centuries = sorted(xx for xx in years if lengths[xx] == modal)
    clean, corr, answers, wrongs, ctext, xtext, correct = [], [], [], [], [], [], []
    tries = 0
    while len(clean) < n:
        tries += 1
        if tries > 200 * n + 10_000:
            raise ConfigError(f"could not draw {n} {split} greater-than prompts")
        noun, xx = rng.choice(nouns), rng.choice(centuries)
        b = rng.choice(years[xx])
        yy = year_of(b)
        if is_heldout(f"greater_than|{noun}|{xx}|{yy}") != (split == "heldout"):
            continue
        text = TEMPLATE.format(noun=noun, xx=xx, yy=f"{yy:02d}")
        cor = TEMPLATE.format(noun=noun, xx=xx, yy="01")
        clean.append(start + encode(tokenizer, text))
        corr.append(start + encode(tokenizer, cor))
        answers.append(yt[rng.choice([c for c in cand_yy if c > b])])
        wrongs.append([yt[b]])
        correct.append([c > b for c in cand_yy])
        ctext.append(text)
        xtext.append(cor)
    return pack("greater_than", variant, tokenizer, clean, corr, answers, wrongs, default_metric="prob_diff", clean_text=ctext,
                corrupted_text=xtext, candidate_ids=cand_ids, correct=correct,
                metadata={"seed": seed, "split": split, "corruption": "yy01", ("candidate_years" if variant == "paper" else "candidate_tens_digits"): cand_yy,
                          "citation": CITATION})
