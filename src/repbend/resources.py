"""The files a run reads besides the code: the shipped configs (``configs/``) and the sample
training data (``examples/data/``).

Git holds them once, at the repository root. An installed wheel carries the same files
inside the package, under ``repbend/_root/`` (``setup.py`` maps them there), so a relative
path such as ``configs/tiny-test.yaml`` or ``examples/data/sample_train.jsonl`` names the
same file in a checkout (editable install, ``PYTHONPATH=src``) and in an installed wheel.
"""
from __future__ import annotations

from pathlib import Path

from .errors import ConfigError

_PACKAGED = Path(__file__).resolve().parent / "_root"
# The folder that holds configs/ and examples/data/: inside an installed wheel, else the checkout.
ROOT = _PACKAGED if _PACKAGED.is_dir() else Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "configs"


def shipped_configs() -> list:
    """The names of the shipped configs (``tiny-test``, ``smollm2-cpu``, ...)."""
    return sorted(path.stem for path in CONFIG_DIR.glob("*.yaml"))


def find_config(path: str | Path) -> Path:
    """A config file: ``path`` itself when it exists, else the shipped file it names.

    A relative path that does not exist here is read from :data:`ROOT`
    (``configs/smollm2-cpu.yaml`` works from any folder), and a bare name from the shipped
    configs, with or without ``.yaml`` (``tiny-test``, ``smollm2-cpu.yaml``).
    """
    path = Path(path)
    if path.exists() or path.is_absolute():
        return path
    candidates = [ROOT / path]
    if path.parent == Path("."):
        candidates += [CONFIG_DIR / path.name, CONFIG_DIR / f"{path.name}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(f"config file {path} does not exist (shipped configs, by name: {', '.join(shipped_configs())})")


def shipped_path(path: str | Path) -> Path | None:
    """``ROOT / path`` for a relative ``path`` that exists there (shipped data), else None."""
    path = Path(path)
    if path.is_absolute() or not (ROOT / path).exists():
        return None
    return ROOT / path
