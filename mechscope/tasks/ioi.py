"""Indirect object identification (Wang et al. 2022, "Interpretability in the Wild",
arXiv:2211.00593).

Clean prompt (BABA form): "Then, John and Mary went to the store. John gave a drink to" -> " Mary"
(the indirect object, IO); the wrong answer is the subject S (" John"). The ABBA form swaps the
first two names. Metric: logit(IO) - logit(S).

Corruptions (same token length as the clean prompt):
  * ``third_name`` (default): the second subject mention S2 is replaced by a third name C,
    so no name is repeated ("... Mary went to the store. Alice gave a drink to");
  * ``abc``: IO, S1 and S2 are all replaced by three fresh distinct names (the paper's ABC
    distribution).

Variants:
  * ``paper``: the paper's 15 templates (ABBA and BABA), its places and objects, and common
    English first names — the names kept are those that are one token (with a leading space)
    under the given tokenizer (GPT-2 keeps nearly all).
  * ``code``: the synthetic analogue the zoo organism is trained on — one paper template
    ("After [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to [A]") with identifier-like
    names (" data", " name", " value", ...) that are single tokens in code tokenizers, so every
    prompt has the same length.
"""

from __future__ import annotations

import random

from mechscope.errors import ConfigError
from mechscope.tasks.task import Task
from mechscope.tasks.vocab import check_n, check_split, encode, is_heldout, bos, pack, require, single_tokens

CITATION = "Wang, Variengien, Conmy, Shlegeris & Steinhardt (2022). Interpretability in the Wild: a Circuit for Indirect Object Identification in GPT-2 small. arXiv:2211.00593"

# The paper's templates in BABA form: [B] is the subject S (mentioned twice), [A] the indirect object.
BABA_TEMPLATES = [
    "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a lot of fun at the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] were working at the [PLACE]. [B] decided to give a [OBJECT] to [A]",
    "Then, [B] and [A] were thinking about going to the [PLACE]. [B] wanted to give a [OBJECT] to [A]",
    "Then, [B] and [A] had a long argument, and afterwards [B] said to [A]",
    "After [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give it to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give the [OBJECT] to [A]",
    "While [B] and [A] were working at the [PLACE], [B] gave a [OBJECT] to [A]",
    "While [B] and [A] were commuting to the [PLACE], [B] gave a [OBJECT] to [A]",
    "After the lunch, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Afterwards, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a long argument. Afterwards [B] said to [A]",
    "The [PLACE] [B] and [A] went to had a [OBJECT]. [B] gave it to [A]",
    "Friends [B] and [A] found a [OBJECT] at the [PLACE]. [B] gave it to [A]",
]
PLACES = ["store", "garden", "restaurant", "school", "hospital", "office", "house", "station"]
OBJECTS = ["ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack"]
NAMES = (
    "Michael Christopher Jessica Matthew Ashley Jennifer Joshua Amanda Daniel David James Robert John Joseph Andrew "
    "Ryan Brandon Jason Justin Sarah William Jonathan Stephanie Brian Nicole Nicholas Anthony Heather Eric Elizabeth "
    "Adam Megan Melissa Kevin Steven Thomas Timothy Christina Kyle Rachel Laura Lauren Amber Brittany Danielle Richard "
    "Kimberly Jeffrey Amy Crystal Michelle Tiffany Jeremy Benjamin Mark Emily Aaron Charles Rebecca Jacob Stephen "
    "Patrick Sean Erin Jamie Kelly Samantha Nathan Sara Dustin Paul Angela Tyler Scott Katherine Andrea Gregory Erica "
    "Mary Travis Lisa Kenneth Bryan Lindsey Kristen Jose Alexander Jesse Katie Lindsay Shannon Vanessa Courtney "
    "Christine Alicia Cody Allison Bradley Samuel"
).split()

# Synthetic ("code") analogue: identifier-like names, code-flavoured places and objects.
CODE_TEMPLATES = ["After [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to [A]"]
CODE_NAMES = (
    "data name file value test result line user key request path output node item url response text version "
    "function log string field start number values index error current context message check create size event "
    "state row obj parser end files form fields instance label run action target array code num table source msg "
    "config first options ret update module status group content client filename results last read command val "
    "base format color order found count match tag title parent call token server host date mode expected info "
    "valid header option task load names port old root"
).split()
CODE_PLACES = ["server", "store", "table", "module", "cache", "queue", "class", "list", "file", "project", "test", "root",
               "library", "database", "office", "site", "folder", "school", "house", "station"]
CODE_OBJECTS = ["value", "key", "token", "message", "result", "copy", "list", "string", "number", "item", "record", "note",
                "drink", "ring", "book", "line", "file", "map", "name", "tag"]

VARIANTS = {
    "paper": dict(templates=BABA_TEMPLATES, names=NAMES, places=PLACES, objects=OBJECTS),
    "code": dict(templates=CODE_TEMPLATES, names=CODE_NAMES, places=CODE_PLACES, objects=CODE_OBJECTS),
}
CORRUPTIONS = ("third_name", "abc")


def abba(template: str) -> str:
    """BABA -> ABBA: swap the first mentions of the two names."""
    return template.replace("[B]", "[X]", 1).replace("[A]", "[B]", 1).replace("[X]", "[A]", 1)


def _fill(template: str, io: str, s1: str, s2: str, place: str, obj: str) -> str:
    """Fill a BABA-form template up to (not including) the final IO mention."""
    body = template[: template.rindex(" [A]")]
    body = body.replace("[PLACE]", place).replace("[OBJECT]", obj)
    first_b = body.index("[B]")
    second_b = body.index("[B]", first_b + 3)
    return (body[:first_b] + s1 + body[first_b + 3 : second_b] + s2 + body[second_b + 3 :]).replace("[A]", io)


def make_ioi(tokenizer, n: int, seed: int = 0, split: str = "train", variant: str = "paper", corruption: str = "third_name",
             forms: tuple[str, ...] = ("ABBA", "BABA")) -> Task:
    """IOI prompts (see the module docstring). ``forms`` picks ABBA, BABA or both (alternating at random)."""
    check_n(n)
    check_split(split)
    if variant not in VARIANTS:
        raise ConfigError(f"unknown IOI variant {variant!r}; expected one of {sorted(VARIANTS)}")
    if corruption not in CORRUPTIONS:
        raise ConfigError(f"unknown IOI corruption {corruption!r}; expected one of {CORRUPTIONS}")
    if not forms or any(f not in ("ABBA", "BABA") for f in forms):
        raise ConfigError(f"forms must be a non-empty subset of ('ABBA', 'BABA'), found {forms!r}")
    spec = VARIANTS[variant]
    names = single_tokens(tokenizer, spec["names"])
    require(names, 5, "names", "ioi")
    # places and objects never double as names (a name must occur exactly where the template puts it)
    places = [w for w in (list(single_tokens(tokenizer, spec["places"])) or spec["places"]) if w not in names]
    objects = [w for w in (list(single_tokens(tokenizer, spec["objects"])) or spec["objects"]) if w not in names]
    if not places or not objects:
        raise ConfigError(f"IOI variant {variant!r}: no place or object word is left that is not also a name")
    name_list = list(names)
    rng = random.Random(f"ioi|{variant}|{seed}")
    start = [bos(tokenizer)]
    clean, corr, answers, wrongs, ctext, xtext = [], [], [], [], [], []
    tries = 0
    while len(clean) < n:
        tries += 1
        if tries > 200 * n + 10_000:
            raise ConfigError(f"could not draw {n} {split} IOI prompts (vocabulary too small for the split rule)")
        t = rng.randrange(len(spec["templates"]))
        form = rng.choice(forms)
        io, s = rng.sample(name_list, 2)
        place, obj = rng.choice(places), rng.choice(objects)
        if is_heldout(f"ioi|{variant}|{t}|{form}|{io}|{s}|{place}|{obj}") != (split == "heldout"):
            continue
        tmpl = spec["templates"][t] if form == "BABA" else abba(spec["templates"][t])
        text = _fill(tmpl, io, s, s, place, obj)
        others = [x for x in name_list if x not in (io, s)]
        if corruption == "third_name":
            c = rng.choice(others)
            ctext_ = _fill(tmpl, io, s, c, place, obj)
        else:
            x, y, z = rng.sample(others, 3)
            ctext_ = _fill(tmpl, x, y, z, place, obj)
        clean.append(start + encode(tokenizer, text))
        corr.append(start + encode(tokenizer, ctext_))
        answers.append(names[io])
        wrongs.append([names[s]])
        ctext.append(text)
        xtext.append(ctext_)
    return pack("ioi", variant, tokenizer, clean, corr, answers, wrongs, clean_text=ctext, corrupted_text=xtext,
                metadata={"seed": seed, "split": split, "corruption": corruption, "forms": list(forms), "n_names": len(names),
                          "citation": CITATION})
