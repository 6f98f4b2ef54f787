"""Docstring argument completion (Heimersheim & Janiak 2023, "A circuit for Python docstrings in
a 4-layer attention-only transformer", Alignment Forum; prompts as in the ACDC benchmark,
Conmy et al. 2023, arXiv:2304.14997).

Clean prompt (reST style)::

    def port(self, load, size, files, last):
        \"\"\"oil column piece

        :param load: crime population
        :param size: unit dark
        :param

-> " files": the def argument that follows the last documented one. Wrong answers: the other
argument names in the prompt; metric: logit(answer) - max logit(wrong) (the paper's).

Variants:
  * ``paper``: the ACDC configuration of the paper's generator: two def-prefix arguments, three
    matching arguments (the first two documented, the third the answer), one def-suffix argument,
    a 3-word method description and 2-word argument descriptions. Wrong answers are the 13 other
    names drawn for the prompt (as in ACDC). Corruption default ``random_random``.
  * ``code``: the synthetic analogue the zoo organism is trained on: five def arguments, two
    consecutive ones documented starting at a random index p in {0, 1, 2}, answer = argument
    p + 2 (so no fixed position gives the answer), 2-word descriptions. Wrong answers: the other
    four def arguments. Corruption default ``random_doc``.

Corruptions (all keep the token length): ``random_doc`` (documented names replaced by fresh ones
not in the def), ``random_def`` (the def's copies of the documented names replaced, the answer
kept), ``random_random`` (both replaced by independent fresh names), ``random_answer`` (the
answer argument in the def replaced by a fresh name).
"""

from __future__ import annotations

import random

from mechscope.errors import ConfigError
from mechscope.tasks.task import Task
from mechscope.tasks.vocab import check_n, check_split, encode, is_heldout, bos, pack, require, single_tokens

CITATION = ("Heimersheim & Janiak (2023). A circuit for Python docstrings in a 4-layer attention-only transformer. "
            "Alignment Forum, https://www.alignmentforum.org/posts/u6KXXmKFbXfWzoAXn ; prompt generator as used in "
            "Conmy et al. (2023), Towards Automated Circuit Discovery for Mechanistic Interpretability, arXiv:2304.14997")

ARG_NAMES = (
    "data name file value test new result line user key default request path output node item url model response text "
    "version function log string field start number values sub index error current context image message check json "
    "create size event state row obj parser end files form query fields instance label run action target array code num "
    "table source msg config first required options ret update module status group content client filename results last "
    "read command val base format color settings order found count match tag title parent call session token server host "
    "date description mode expected project info valid page header option task shape load names port old resource root"
).split()
DESC_WORDS = (
    "price control action cost issue process position course type subject age force order value act matter health lot "
    "street class mind condition paper bank section activity table building sense sort staff team language town plan "
    "product practice evidence ground letter foot back game food union role event land art support range stage trade "
    "voice field history parent account material care manager project record example window air light quality rule "
    "story tax worker data model nature bed method unit detail date wall computer amount bit chapter property board "
    "king production operation share contract picture test security source future site loss shop heart purpose standard "
    "page factor music charge pattern design piece population tree knowledge performance plant pressure fire size "
    "analysis rest success region list relation set space statement demand step capital choice player station film "
    "feature income cup machine cell degree energy growth mile function risk sound task top resource floor style hall "
    "response character user answer look season bill element glass duty claim fund park title note box river profit "
    "division stone post client help image oil sector direction seat goal sign campaign fish item medium show version "
    "library press surface memory return bar talk access deal star text cause payment context reference second article "
    "chair object agency card collection public document weight rock call edge miss option stock aid concept match "
    "network target race ball crime message peace review scale scene band expression owner trust truth turn file past "
    "start trial balance copy length wind front move spirit train contact cash gas shape agent pair rise driver master "
    "meaning vote play route speed credit impact danger half path track video aim bag comment content distance gold "
    "link boat offer hole package key phone sample ship threat volume author background engine entry row song category "
    "bridge description flat session sheet code flight limit plate rain respect capacity dream selection spring "
    "definition mark notice output will address bottom middle run error module store transfer wave channel component "
    "cut fee lead block brain guide program screen connection cover map metal phase pool search sequence sky sum cat "
    "display gate heat location reading theme drive tool flow lane motion release total wing border index pocket ring "
    "device fruit lake leaf request square tone walk chain circle fall present shot mass panel fan iron origin ticket "
    "bone chief editor fuel general height round vision warning cross living column gap grass plane root score shadow "
    "touch topic break camp phrase coat mill stress boot command depth frame holder ice inch port rose string wheel "
    "cycle export hat load mode setting travel average camera focus green guard input layer poll sleep suit cake peak "
    "self angle bay bid cloud custom zone actor chip core final gain guy rent reply secret apple instance pipe disk "
    "fight hero journal left mail pace platform print rank sand scope shift stream clock delay host human count mission "
    "pack seed tail tie watch dark hold mine net tip operator shell storage summary tube drop import label pot proof win "
    "wire bell complex draft grade lift mouse movie profile belt black check local pit red register storm album ban "
    "bench button cap chart coin dust margin pole stand stick tin"
).split()
VARIANTS = {
    "paper": dict(n_prefix=2, n_matching=3, n_suffix=1, met_desc_len=3, arg_desc_len=2, corruption="random_random"),
    "code": dict(n_def=5, n_doc=2, max_start=2, met_desc_len=2, arg_desc_len=2, corruption="random_doc"),
}
CORRUPTIONS = ("random_doc", "random_def", "random_random", "random_answer")


def render(met: str, def_args: list[str], doc_args: list[str], met_desc: list[str], arg_desc: list[list[str]]) -> str:
    """The reST-style prompt, ending in ``:param`` (the answer is the next token)."""
    ind = " " * 4
    head = f'\ndef {met}(self, {", ".join(def_args)}):\n{ind}"""{" ".join(met_desc)}\n\n'
    lines = "".join(f"{ind}:param {a}: {' '.join(d)}\n" for a, d in zip(doc_args, arg_desc))
    return head + lines + f"{ind}:param"


def make_docstring(tokenizer, n: int, seed: int = 0, split: str = "train", variant: str = "paper", corruption: str | None = None) -> Task:
    """Docstring prompts (see the module docstring)."""
    check_n(n)
    check_split(split)
    if variant not in VARIANTS:
        raise ConfigError(f"unknown docstring variant {variant!r}; expected one of {sorted(VARIANTS)}")
    spec = VARIANTS[variant]
    corruption = corruption or spec["corruption"]
    if corruption not in CORRUPTIONS:
        raise ConfigError(f"unknown docstring corruption {corruption!r}; expected one of {CORRUPTIONS}")
    names = single_tokens(tokenizer, ARG_NAMES)
    # description words must be one token both after a space and right after the opening quotes
    words = [w for w in single_tokens(tokenizer, DESC_WORDS) if w in single_tokens(tokenizer, [w], prefix="")]
    require(names, 16, "argument names", "docstring")
    require(words, 10, "description words", "docstring")
    name_list = list(names)
    rng = random.Random(f"docstring|{variant}|{seed}")
    start = [bos(tokenizer)]
    clean, corr, answers, wrongs, ctext, xtext = [], [], [], [], [], []
    tries = 0
    while len(clean) < n:
        tries += 1
        if tries > 200 * n + 10_000:
            raise ConfigError(f"could not draw {n} {split} docstring prompts")
        met_desc = rng.sample(words, spec["met_desc_len"])
        if variant == "paper":
            k_m, k_p, k_s = spec["n_matching"], spec["n_prefix"], spec["n_suffix"]
            met, rand_answer, *pool = rng.sample(name_list, 2 + k_m + (k_m - 1) * 2 + k_m + k_p + k_s)
            rr_def, pool = pool[:k_m], pool[k_m:]
            rr_doc, pool = pool[: k_m - 1], pool[k_m - 1 :]
            not_matching, pool = pool[: k_m - 1], pool[k_m - 1 :]
            matching, pool = pool[:k_m], pool[k_m:]
            prefix, suffix = pool[:k_p], pool[k_p:]
            def_args = prefix + matching + suffix
            doc_args = matching[:-1]
            answer = matching[-1]
            wrong = [a for a in [rand_answer, *rr_def, *rr_doc, *not_matching, *matching, *prefix, *suffix] if a != answer]
            fresh_doc, fresh_def = not_matching, not_matching
            doc_slots = list(range(k_p, k_p + k_m - 1))
            answer_slot = k_p + k_m - 1
            rr = (prefix + rr_def + suffix, rr_doc)
        else:
            k_def, k_doc = spec["n_def"], spec["n_doc"]
            p = rng.randint(0, spec["max_start"])
            met, *pool = rng.sample(name_list, 1 + k_def + 3 * k_doc + 1)
            def_args, pool = pool[:k_def], pool[k_def:]
            fresh_doc, fresh_def, rr_doc, rand_answer = pool[:k_doc], pool[k_doc : 2 * k_doc], pool[2 * k_doc : 3 * k_doc], pool[-1]
            doc_slots = list(range(p, p + k_doc))
            answer_slot = p + k_doc
            doc_args = [def_args[i] for i in doc_slots]
            answer = def_args[answer_slot]
            wrong = [a for a in def_args if a != answer]
            rr_def_args = list(def_args)
            for i, f in zip(doc_slots, fresh_def):
                rr_def_args[i] = f
            rr = (rr_def_args, rr_doc)
        arg_desc = [rng.sample(words, spec["arg_desc_len"]) for _ in doc_args]
        if is_heldout(f"docstring|{variant}|{met}|{','.join(def_args)}|{','.join(doc_args)}") != (split == "heldout"):
            continue
        if corruption == "random_doc":
            c_def, c_doc = def_args, list(fresh_doc)
        elif corruption == "random_def":
            c_def = list(def_args)
            for i, f in zip(doc_slots, fresh_def):
                c_def[i] = f
            c_doc = doc_args
        elif corruption == "random_random":
            c_def, c_doc = rr
        else:  # random_answer
            c_def = list(def_args)
            c_def[answer_slot] = rand_answer
            c_doc = doc_args
        text = render(met, def_args, doc_args, met_desc, arg_desc)
        cor = render(met, c_def, c_doc, met_desc, arg_desc)
        clean.append(start + encode(tokenizer, text))
        corr.append(start + encode(tokenizer, cor))
        answers.append(names[answer])
        wrongs.append([names[w] for w in wrong])
        ctext.append(text)
        xtext.append(cor)
    return pack("docstring", variant, tokenizer, clean, corr, answers, wrongs, clean_text=ctext, corrupted_text=xtext,
                metadata={"seed": seed, "split": split, "corruption": corruption, "citation": CITATION})
