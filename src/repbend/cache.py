"""Where repbend keeps what it can rebuild (template splits, dequantized GGUF models), and
the content digests that key those caches."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_root() -> Path:
    """``$REPBEND_CACHE``, else ``$XDG_CACHE_HOME/repbend``, else ``~/.cache/repbend``."""
    if os.environ.get("REPBEND_CACHE"):
        return Path(os.environ["REPBEND_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "repbend"


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def folder_digest(folder: Path) -> str:
    """Digest of a model folder's weight files, so caches keyed by it follow its content."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) + sorted(folder.glob("*.gguf")):
        digest.update(f"{path.name}:{file_digest(path)}".encode())
    return digest.hexdigest()[:16]
