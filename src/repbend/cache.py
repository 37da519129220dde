"""Where repbend keeps what it can rebuild (template splits, dequantized GGUF models), and
the content digests that key those caches."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .atomic import write_text


def cache_root() -> Path:
    """``$REPBEND_CACHE``, else ``$XDG_CACHE_HOME/repbend``, else ``~/.cache/repbend``."""
    if os.environ.get("REPBEND_CACHE"):
        return Path(os.environ["REPBEND_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "repbend"


# Files at least this large have their digest remembered (hashing 16 GB of weights takes
# about a minute; every evaluation of a local model folder would pay it again).
MEMO_MIN_BYTES = 64 << 20


def file_digest(path: Path) -> str:
    """The file's SHA-256 (16 hex digits). For large files it is remembered in the cache
    under (resolved path, size, modification time), so a rewritten file is hashed anew."""
    path = Path(path)
    stat = path.stat()
    memo = None
    if stat.st_size >= MEMO_MIN_BYTES:
        key = f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}"
        memo = cache_root() / "digests" / hashlib.sha256(key.encode()).hexdigest()[:32]
        if memo.is_file():
            return memo.read_text().strip()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    value = digest.hexdigest()[:16]
    if memo is not None:
        try:
            write_text(memo, value)
        except OSError:  # a read-only or full cache only costs the next hash
            pass
    return value


def folder_digest(folder: Path) -> str:
    """Digest of a model folder's weight files, so caches keyed by it follow its content."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) + sorted(folder.glob("*.gguf")):
        digest.update(f"{path.name}:{file_digest(path)}".encode())
    return digest.hexdigest()[:16]
