"""Tasks: clean/corrupted prompts of equal length for every task and two tokenizers (the default
code BPE and the GPT-2-like English BPE of conftest's ``english_tok``), determinism, disjoint splits, metrics, errors."""

from __future__ import annotations

import pytest
import torch

from mechscope.errors import ConfigError
from mechscope.tasks import GroundTruth, Task, TaskError, VocabularyError, list_tasks, make_task

CODE_VARIANTS = [("ioi", "code"), ("greater_than", "paper"), ("docstring", "code"), ("docstring", "paper"), ("induction", "random")]
ENGLISH_VARIANTS = [("ioi", "paper"), ("greater_than", "paper"), ("docstring", "paper"), ("induction", "random")]


@pytest.fixture(scope="session")
def code_tok():
    from mechscope.data import default_tokenizer

    return default_tokenizer()


def _check_task(task: Task, tok) -> None:
    n = len(task)
    assert task.clean.shape == task.corrupted.shape and task.clean.shape[0] == n
    assert task.answer_ids.shape == (n,) and task.wrong_ids.shape[0] == n and task.answer_pos.shape == (n,)
    # every clean/corrupted pair has the same real length; the answer position is the last real token
    assert not task.metadata["padded"], "organism-style tasks should need no padding under these tokenizers"
    assert bool((task.answer_pos == task.seq_len - 1).all())
    assert bool((task.clean != task.corrupted).any(1).all()), "every corrupted prompt must differ from its clean prompt"
    assert not bool((task.wrong_ids == task.answer_ids[:, None]).any()), "a wrong answer equals the answer"
    if task.clean_text:
        for text, corr, row, crow in zip(task.clean_text[:20], task.corrupted_text[:20], task.clean, task.corrupted):
            assert len(tok.encode(text, add_special_tokens=False)) + 1 == len(row)
            assert len(tok.encode(corr, add_special_tokens=False)) + 1 == len(crow)


@pytest.mark.parametrize("name,variant", CODE_VARIANTS)
def test_tasks_same_length_code_tokenizer(code_tok, name, variant):
    task = make_task(name, code_tok, n=64, seed=3, split="heldout", variant=variant)
    assert (task.name, task.variant) == (name, variant)
    _check_task(task, code_tok)


@pytest.mark.parametrize("name,variant", ENGLISH_VARIANTS)
def test_tasks_same_length_english_tokenizer(english_tok, name, variant):
    task = make_task(name, english_tok, n=64, seed=3, split="train", variant=variant)
    if name == "ioi":  # the paper's 15 templates have different lengths: right-padded, answer_pos per prompt
        assert task.metadata["padded"]
        assert len(set(task.answer_pos.tolist())) > 1
        for row, crow, p in zip(task.clean, task.corrupted, task.answer_pos):
            assert int(p) < task.seq_len
        text = task.clean_text[0]
        assert text.endswith(" to") or text.endswith(" said to")
        return
    _check_task(task, english_tok)


def test_greater_than_gpt2_like_split(english_tok):
    task = make_task("greater_than", english_tok, n=8, seed=0)
    toks = english_tok.convert_ids_to_tokens(task.clean[0].tolist())
    # " 17" "32" as in GPT-2: the YY token is one token, and the prompt ends in the century token
    i = toks.index("Ġto")
    assert toks[-1].startswith("Ġ1") and toks[i - 2] == toks[-1] and len(toks[i - 1]) == 2 and toks[i - 1].isdigit()
    assert task.correct.shape == (8, len(task.candidate_ids))
    yy = int(english_tok.decode([int(task.wrong_ids[0, 0])]))
    years = task.metadata["candidate_years"]
    assert [y for y, ok in zip(years, task.correct[0].tolist()) if ok] == [y for y in years if y > yy]


def test_ioi_prompt_structure(code_tok):
    task = make_task("ioi", code_tok, n=40, seed=1, variant="code")
    for text, corr, a, w in zip(task.clean_text, task.corrupted_text, task.answer_ids, task.wrong_ids[:, 0]):
        io, s = code_tok.decode([int(a)]).strip(), code_tok.decode([int(w)]).strip()
        words = text.replace(",", " ").split()
        assert words.count(s) == 2 and words.count(io) == 1  # S twice, IO once
        cw = corr.replace(",", " ").split()
        assert cw.count(s) == 1 and cw.count(io) == 1  # third-name corruption: S2 replaced
    both = make_task("ioi", code_tok, n=200, seed=1, variant="code")
    firsts = {t.split()[1] == code_tok.decode([int(a)]).strip() for t, a in zip(both.clean_text, both.answer_ids)}
    assert firsts == {True, False}  # ABBA and BABA both present
    abc = make_task("ioi", code_tok, n=20, seed=1, variant="code", corruption="abc")
    for corr, a, w in zip(abc.corrupted_text, abc.answer_ids, abc.wrong_ids[:, 0]):
        cw = corr.split()
        assert code_tok.decode([int(a)]).strip() not in cw and code_tok.decode([int(w)]).strip() not in cw


def test_docstring_answer_is_next_def_arg(code_tok):
    task = make_task("docstring", code_tok, n=30, seed=2, variant="code")
    for text, a in zip(task.clean_text, task.answer_ids):
        args = text.split("(self, ")[1].split("):")[0].split(", ")
        documented = [ln.split(":param ")[1].split(":")[0] for ln in text.splitlines() if ":param " in ln]
        assert args[args.index(documented[-1]) + 1] == code_tok.decode([int(a)]).strip()


def test_induction_answer_is_copy(code_tok):
    task = make_task("induction", code_tok, n=16, seed=0, seq_len=8, prefix_len=3)
    for row, corr, a in zip(task.clean, task.corrupted, task.answer_ids):
        first = row[1:9].tolist()
        assert row[9:].tolist() == first[:3] and int(a) == first[3]
        assert corr[9:].tolist() == first[:3] and first[3] not in corr[:9].tolist()


def test_determinism_and_disjoint_splits(code_tok):
    a = make_task("docstring", code_tok, n=50, seed=7, variant="code")
    b = make_task("docstring", code_tok, n=50, seed=7, variant="code")
    c = make_task("docstring", code_tok, n=50, seed=8, variant="code")
    assert torch.equal(a.clean, b.clean) and torch.equal(a.corrupted, b.corrupted)
    assert not torch.equal(a.clean, c.clean)
    for name, variant in CODE_VARIANTS:
        tr = make_task(name, code_tok, n=300, seed=0, split="train", variant=variant)
        ho = make_task(name, code_tok, n=300, seed=0, split="heldout", variant=variant)
        train_rows = {tuple(r) for r in tr.clean.tolist()}
        assert not train_rows & {tuple(r) for r in ho.clean.tolist()}, name


def test_metrics_on_constructed_logits(code_tok):
    task = make_task("ioi", code_tok, n=4, seed=0, variant="code")
    logits = torch.zeros(4, task.seq_len, len(code_tok))
    rows = torch.arange(4)
    logits[rows, task.answer_pos, task.answer_ids] = 3.0
    logits[rows, task.answer_pos, task.wrong_ids[:, 0]] = 1.0
    assert float(task.logit_diff(logits)) == pytest.approx(2.0)
    assert float(task.accuracy(logits)) == 1.0
    p = torch.softmax(logits[rows, task.answer_pos], -1)
    expect = (p[rows, task.answer_ids] - p[rows, task.wrong_ids[:, 0]]).mean()
    assert float(task.prob_diff(logits)) == pytest.approx(float(expect))
    logits[0, task.answer_pos[0], task.wrong_ids[0, 0]] = 5.0
    assert task.metric(logits, "binary_accuracy", per_prompt=True).tolist() == [0.0, 1.0, 1.0, 1.0]
    # set task: probability mass on years above YY minus mass at or below it
    gt = make_task("greater_than", code_tok, n=3, seed=0)
    lg = torch.full((3, len(code_tok)), -30.0)
    good = gt.candidate_ids[gt.correct[0]]
    lg[:, good[0]] = 10.0
    assert float(gt.prob_diff(lg, per_prompt=True)[0]) == pytest.approx(1.0, abs=1e-3)
    assert float(gt.accuracy(lg, per_prompt=True)[0]) == 1.0


def test_task_save_load_and_subset(code_tok, tmp_path):
    task = make_task("greater_than", code_tok, n=10, seed=0)
    task.save(tmp_path / "t")
    back = Task.load(tmp_path / "t")
    for k in ("clean", "corrupted", "answer_ids", "wrong_ids", "answer_pos", "candidate_ids", "correct"):
        assert torch.equal(getattr(task, k), getattr(back, k)), k
    assert back.clean_text == task.clean_text and back.default_metric == "prob_diff"
    sub = task.subset([1, 3])
    assert len(sub) == 2 and torch.equal(sub.clean[1], task.clean[3]) and sub.clean_text[0] == task.clean_text[1]


def test_bad_inputs(code_tok):
    with pytest.raises(ConfigError, match="unknown task"):
        make_task("nope", code_tok, n=4)
    with pytest.raises(ConfigError, match="no variant"):
        make_task("ioi", code_tok, n=4, variant="gpt5")
    with pytest.raises(ConfigError, match="split"):
        make_task("induction", code_tok, n=4, split="test")
    with pytest.raises(ConfigError, match="positive integer"):
        make_task("induction", code_tok, n=0)
    with pytest.raises(ConfigError, match="corruption"):
        make_task("ioi", code_tok, n=4, variant="code", corruption="shuffle")
    with pytest.raises(VocabularyError, match="single tokens"):
        make_task("ioi", code_tok, n=4, variant="paper")  # English first names are not single tokens in a code BPE
    task = make_task("induction", code_tok, n=4)
    with pytest.raises(TaskError, match="logits"):
        task.metric(torch.zeros(3, 5, 7))
    with pytest.raises(ConfigError, match="unknown metric"):
        task.metric(torch.zeros(4, len(code_tok)), "kl")
    with pytest.raises(TaskError, match="same shape|one shape"):
        Task("x", "v", torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, dtype=torch.long),
             torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    from mechscope.tasks.vocab import pack

    with pytest.raises(TaskError, match="must match"):
        pack("x", "v", code_tok, [[1, 2, 3]], [[1, 2]], [5], [[6]])


def test_list_tasks():
    tasks = list_tasks()
    assert set(tasks) == {"ioi", "greater_than", "docstring", "induction"}
    assert "code" in tasks["ioi"] and "paper" in tasks["docstring"]


@pytest.fixture(scope="module")
def digit_tok():
    """A Llama-style tokenizer, trained offline: SentencePiece-like word pieces ("▁war") and numbers
    written one digit per token, as in Llama 1/2, Mistral, Gemma and Qwen ("1732" -> "1" "7" "3" "2")."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from mechscope.tasks import greater_than

    text = [f"The {noun} lasted from the year {c}{y:02d} to the year {c}{(y * 7) % 100:02d}" for noun in greater_than.NOUNS
            for c, y in [(11 + len(noun) % 7, len(noun) * 9 % 100)]]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(), pre_tokenizers.Digits(individual_digits=True)])
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(text * 3 + [" ".join(str(d) for d in range(10))],
                            trainers.BpeTrainer(vocab_size=1500, special_tokens=["<unk>", "<s>", "</s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_greater_than_digits_variant_for_single_digit_tokenizers(digit_tok):
    """No "32" token: the next token is the tens digit; years are 17D9, so 'tens digit > D' is exactly 'year > 17D9'."""
    from mechscope.tasks.greater_than import default_variant

    with pytest.raises(VocabularyError, match="two-digit years"):
        make_task("greater_than", digit_tok, n=8, variant="paper")
    assert default_variant(digit_tok) == "digits"
    task = make_task("greater_than", digit_tok, n=32, seed=1, split="heldout")  # picks "digits" by itself
    assert task.variant == "digits"
    _check_task(task, digit_tok)
    digits = [digit_tok.decode([int(i)]).strip() for i in task.candidate_ids]
    assert sorted(digits) == [str(d) for d in range(10)]
    for i, text in enumerate(task.clean_text):
        start, end = text.split("from the year ")[1].split(" to the year ")
        assert start.startswith(end) and start[-1] == "9"  # "1739 to the year 17"
        assert digit_tok.decode(task.clean[i, -2:].tolist()).replace(" ", "") == end  # the prompt ends in the century's digits
        year = int(start)
        for d, ok in zip(digits, task.correct[i].tolist()):  # every year with this tens digit is greater, or none is
            assert ok == all(int(f"{end}{d}{u}") > year for u in range(10)) == any(int(f"{end}{d}{u}") > year for u in range(10))
        assert task.correct[i, list(task.candidate_ids).index(int(task.answer_ids[i]))]
    corrupted = task.corrupted_text[0].split("from the year ")[1]
    assert corrupted.startswith(task.clean_text[0].split(" to the year ")[1] + "01")
