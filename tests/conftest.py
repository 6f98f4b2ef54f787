"""Shared fixtures: small real components built in-process (no downloads)."""

from __future__ import annotations

import warnings

import pytest
import torch

warnings.filterwarnings("ignore", category=DeprecationWarning, module="transformer_lens")


@pytest.fixture
def one_thread():
    """torch on one thread for the test (small models run faster so on 2 shared cores), restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tokenizer():
    from mechscope.data import default_tokenizer

    return default_tokenizer()


@pytest.fixture(scope="session")
def english_tok():
    """A byte-level BPE trained offline on English-like text in which the papers' names, nouns
    and numbers are frequent — so, as in GPT-2, they are single tokens (" 1732" -> " 17" "32")."""
    import random

    from mechscope.data import train_tokenizer
    from mechscope.data.corpus import Corpus, Document
    from mechscope.tasks import docstring, greater_than, ioi

    rng = random.Random(0)
    words = ioi.NAMES + ioi.PLACES + ioi.OBJECTS + greater_than.NOUNS + docstring.ARG_NAMES + docstring.DESC_WORDS
    docs = []
    for i in range(6):
        w = words[:]
        rng.shuffle(w)
        text = " ".join(w) + "\n"
        text += "\n".join(t.replace("[A]", rng.choice(ioi.NAMES)).replace("[B]", rng.choice(ioi.NAMES))
                          .replace("[PLACE]", "store").replace("[OBJECT]", "drink") for t in ioi.BABA_TEMPLATES)
        text += "\n" + " ".join(f" {c}" for c in range(11, 18)) * 30 + "=".join(f"{y:02d}" for y in range(100)) * 8
        text += "\n" + " ".join(f"the year {rng.randint(11, 17)}{rng.randint(0, 99):02d}" for _ in range(20))
        docs.append(Document(f"d{i}", text))
    return train_tokenizer(Corpus("english-test", docs), vocab_size=3000, max_train_bytes=None)


@pytest.fixture(scope="session")
def heldout_stream(tokenizer):
    from mechscope.data import TokenStream, stdlib_corpus

    return TokenStream(stdlib_corpus("heldout"), tokenizer, context_len=32)


def make_tl_model(tokenizer, attn_only: bool = False, n_layers: int = 2, seed: int = 0):
    """A tiny TransformerLens model built from a config (random init, seeded)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from mechscope.models import Model

    cfg = HookedTransformerConfig(n_layers=n_layers, d_model=32, n_heads=4, d_head=8, n_ctx=64, d_vocab=len(tokenizer),
                                  attn_only=attn_only, d_mlp=None if attn_only else 64, act_fn=None if attn_only else "gelu",
                                  seed=seed, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = HookedTransformer(cfg)
    return Model(module=module.eval(), name=f"tiny-tl-{n_layers}l-seed{seed}", kind="transformer_lens", tokenizer=tokenizer)


@pytest.fixture
def tl_model(tokenizer):
    return make_tl_model(tokenizer)


class SmallCNN(torch.nn.Module):
    """Conv -> BN -> ReLU (shared module, called twice) -> pool -> linear."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                            torch.nn.MaxPool2d(2), torch.nn.Conv2d(4, 8, 3, padding=1))
        self.act = torch.nn.ReLU()
        self.head = torch.nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        h = self.act(self.features(x))
        h = self.act(h - 0.1)  # the same module twice: cached as 'act' and 'act#1'
        return self.head(h.flatten(1))


@pytest.fixture
def cnn():
    torch.manual_seed(0)
    return SmallCNN().eval()
