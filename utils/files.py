"""Run directories, atomic writes and content hashes."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path


def increment_path(path: str | Path, exist_ok: bool = False, mkdir: bool = False) -> Path:
    """runs/train/exp -> runs/train/exp2, exp3, ... (the first free name), as YOLOv5 users expect."""
    path = Path(path)
    if path.exists() and not exist_ok:
        stem, suffix = (path.with_suffix(""), path.suffix) if path.is_file() else (path, "")
        taken = {p.name for p in stem.parent.glob(f"{stem.name}*")}
        n = 2
        while f"{stem.name}{n}{suffix}" in taken:
            n += 1
        path = stem.parent / f"{stem.name}{n}{suffix}"
    if mkdir:
        path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; results are meant to be shared
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:  # a full disk's write() names no file: name the target
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Text twin of atomic_write_bytes (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def file_hash(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes: the key of an image in the feature repository."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def safe_name(text: str) -> str:
    """A file-system friendly version of `text` (for crops and exported names)."""
    return re.sub(r"[^\w.-]+", "_", text).strip("_") or "unnamed"
