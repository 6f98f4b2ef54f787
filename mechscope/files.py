"""Atomic file writes and the saved-artifact convention: a directory with ``cfg.json``
(carrying ``format`` and ``version``) plus ``*.safetensors`` files.

Every writer goes through :func:`atomic_write` (temp file in the same directory, fsync,
rename), so a crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, Iterator

from mechscope.errors import FormatError, PathError, StoreError


def ensure_dir(path: str | os.PathLike) -> Path:
    """Create directory ``path`` (and its parents) unless it exists; a :class:`PathError` that
    names the offending path when a file stands where a directory must go, or when the directory
    cannot be created (read-only or permission denied)."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                needed = "" if p == path else f" (a parent of {path})"
                raise PathError(f"expected a directory (or nothing) at {p}{needed}, found a file")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PathError(f"cannot create directory {path}: {e.strerror or e}") from e
    return path


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temp file next to ``path``; on success fsync and rename it onto ``path``.

    On any exception the temp file is removed and the exception propagates.
    """
    path = Path(path)
    if path.is_dir():
        raise PathError(f"expected a file path to write at {path}, found a directory")
    ensure_dir(path.parent)
    # os.open with 0o666 (not mkstemp's 0o600): the finished file gets the user's umask like any other
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as e:
        raise PathError(f"cannot write {path}: {e.strerror or e}") from e
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.exists():
        raise FormatError(f"expected a JSON file at {path}, found nothing")
    if path.is_dir():
        raise FormatError(f"expected a JSON file at {path}, found a directory")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise FormatError(f"{path} is not valid JSON: {e}") from e


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def save_tensors(path: str | os.PathLike, tensors: dict, metadata: dict | None = None) -> str:
    """Atomically save a dict of torch tensors as safetensors; returns the file's sha256."""
    from safetensors.torch import save

    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    with atomic_write(path, "wb") as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def load_tensors(path: str | os.PathLike, device: str = "cpu", expected_sha256: str | None = None) -> dict:
    """Load a safetensors file, checking its hash when one is given."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise FormatError(f"expected a safetensors file at {path}, found nothing")
    if expected_sha256 is not None:
        got = sha256_file(path)
        if got != expected_sha256:
            raise StoreError(f"{path}: sha256 mismatch (expected {expected_sha256[:12]}…, found {got[:12]}…); the file is corrupt or was replaced")
    try:
        return load_file(str(path), device=device)
    except Exception as e:  # safetensors raises its own error types; re-raise as ours with context
        raise StoreError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e


def save_artifact(directory: str | os.PathLike, fmt: str, version: int, cfg: dict, tensors: dict[str, dict]) -> None:
    """Save ``cfg.json`` (with format, version and per-file sha256) and one safetensors file
    per entry of ``tensors`` (file stem -> tensor dict). The cfg is written last, so a
    directory whose cfg.json exists is complete."""
    directory = ensure_dir(directory)
    hashes = {f"{stem}.safetensors": save_tensors(directory / f"{stem}.safetensors", t) for stem, t in tensors.items()}
    write_json(directory / "cfg.json", {"format": fmt, "version": version, **cfg, "files": hashes})


def load_artifact(directory: str | os.PathLike, fmt: str, max_version: int, device: str = "cpu") -> tuple[dict, dict[str, dict]]:
    """Read a directory written by :func:`save_artifact`; checks format, version and hashes."""
    directory = Path(directory)
    cfg = read_json(directory / "cfg.json")
    if cfg.get("format") != fmt:
        raise FormatError(f"{directory}: expected format {fmt!r}, found {cfg.get('format')!r}")
    if int(cfg.get("version", -1)) > max_version:
        raise FormatError(f"{directory}: format version {cfg.get('version')} is newer than this mechscope reads ({max_version})")
    tensors = {name.removesuffix(".safetensors"): load_tensors(directory / name, device, sha) for name, sha in cfg.get("files", {}).items()}
    return cfg, tensors
