"""Corpora: an ordered list of documents with a content hash and a fixed held-out split.

The default corpus is the installed Python standard library's ``.py`` files (code,
comments, docstrings), ordered by relative path. A document belongs to the held-out split
when the first 8 hex digits of sha1(document id), read as an integer, are ``0 (mod 20)``
(about 5 %) — a rule that does not move when other files come or go.
"""

from __future__ import annotations

import hashlib
import json
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

from mechscope.errors import CorpusError

Split = Literal["train", "heldout", "all"]
HELDOUT_MODULUS = 20
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".json", ".html", ".c", ".h", ".js", ".ts", ".tex", ".csv")


@dataclass(frozen=True)
class Document:
    id: str
    text: str


def is_heldout(doc_id: str) -> bool:
    return int(hashlib.sha1(doc_id.encode()).hexdigest()[:8], 16) % HELDOUT_MODULUS == 0


@dataclass
class Corpus:
    """An ordered, in-memory list of documents. ``split`` selects train / heldout / all."""

    name: str
    documents: list[Document]

    def __post_init__(self):
        if not self.documents or not any(d.text.strip() for d in self.documents):
            raise CorpusError(f"corpus {self.name!r} is empty: expected at least one non-empty document, found {len(self.documents)} documents")

    def split(self, split: Split) -> "Corpus":
        if split == "all":
            return self
        if split not in ("train", "heldout"):
            raise CorpusError(f"unknown split {split!r}; expected 'train', 'heldout' or 'all'")
        docs = [d for d in self.documents if is_heldout(d.id) == (split == "heldout")]
        if not docs:  # tiny corpora: keep the last document as held-out, the rest as train
            docs = self.documents[-1:] if split == "heldout" else self.documents[:-1] or self.documents
        return Corpus(f"{self.name}:{split}", docs)

    @property
    def content_hash(self) -> str:
        h = hashlib.sha256()
        for d in self.documents:
            h.update(d.id.encode() + b"\0" + d.text.encode() + b"\0")
        return h.hexdigest()

    @property
    def n_bytes(self) -> int:
        return sum(len(d.text.encode()) for d in self.documents)

    def texts(self) -> Iterable[str]:
        return (d.text for d in self.documents)

    def __len__(self) -> int:
        return len(self.documents)


def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def stdlib_corpus(split: Split = "all", max_bytes: int | None = None) -> Corpus:
    """The Python standard library's ``.py`` files, sorted by path (site-packages excluded).

    ``max_bytes`` keeps a deterministic prefix of the ordered documents (for fast tests).
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        (p for p in root.rglob("*.py") if "site-packages" not in p.parts and "__pycache__" not in p.parts),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    docs, total = [], 0
    for p in files:
        text = _read_text(p)
        if not text.strip():
            continue
        docs.append(Document(p.relative_to(root).as_posix(), text))
        total += len(text.encode())
        if max_bytes is not None and total >= max_bytes:
            break
    return Corpus("stdlib", docs).split(split)


def text_corpus(path: str | Path, suffixes: tuple[str, ...] = TEXT_SUFFIXES) -> Corpus:
    """A text file, or every file with a text suffix under a directory (sorted by path)."""
    path = Path(path)
    if path.is_file():
        return Corpus(path.name, [Document(path.name, _read_text(path))])
    if not path.is_dir():
        raise CorpusError(f"expected a text file or directory at {path}, found nothing")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in suffixes)
    return Corpus(path.name, [Document(p.relative_to(path).as_posix(), _read_text(p)) for p in files])


def jsonl_corpus(path: str | Path, field: str = "text") -> Corpus:
    """One document per JSON line, text under ``field``."""
    path = Path(path)
    docs = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{path}:{i}: not valid JSON ({e})") from e
            if not isinstance(row, dict) or field not in row:
                raise CorpusError(f"{path}:{i}: expected an object with a {field!r} field, found {str(row)[:80]!r}")
            docs.append(Document(f"{path.name}:{i}", str(row[field])))
    return Corpus(path.name, docs)


def hf_corpus(name: str, split: str = "train", field: str = "text", max_docs: int | None = None) -> Corpus:
    """An HF ``datasets`` dataset: a local ``save_to_disk`` directory, or a hub name."""
    import datasets

    if Path(name).is_dir():
        ds = datasets.load_from_disk(name)
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[split]
    else:
        try:
            ds = datasets.load_dataset(name, split=split)
        except OSError as e:  # ConnectionError, hub errors and a missing dataset are all OSErrors
            raise CorpusError(f"could not load hub dataset {name!r} ({type(e).__name__}: {e}); expected a dataset on the Hub "
                              "(network access) or in the local datasets cache, or a save_to_disk directory") from e
    if field not in ds.column_names:
        raise CorpusError(f"dataset {name!r} has no field {field!r}; fields: {ds.column_names}")
    n = len(ds) if max_docs is None else min(max_docs, len(ds))
    return Corpus(f"hf:{name}", [Document(f"{name}:{i}", str(ds[i][field])) for i in range(n)])


def load_corpus(spec: str = "stdlib", split: Split = "all", field: str = "text", max_bytes: int | None = None) -> Corpus:
    """``"stdlib"`` (default), ``"hf:NAME_OR_DIR"``, a ``.jsonl`` file, a text file or a directory."""
    if spec == "stdlib":
        return stdlib_corpus(split, max_bytes=max_bytes)
    if spec.startswith("hf:"):
        corpus = hf_corpus(spec[3:], field=field)
    elif spec.endswith(".jsonl"):
        corpus = jsonl_corpus(spec, field)
    else:
        corpus = text_corpus(spec)
    return corpus.split(split)
