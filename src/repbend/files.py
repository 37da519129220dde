"""The few file formats every stage shares: JSON Lines (one record a line) and the
installed versions of the packages a result depends on."""
from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Iterable

from .atomic import write_text


def read_jsonl(path: str | Path) -> list[dict]:
    """Every record of a JSON Lines file (blank lines skipped). Records end at "\n" only:
    ``str.splitlines`` would also cut at the line and paragraph separators that a model's
    answer may hold (written unescaped)."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").split("\n") if line.strip()]


def jsonl_text(records: Iterable[dict]) -> str:
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def write_jsonl(path: str | Path, records: Iterable[dict]) -> Path:
    """``records`` as JSON Lines, written atomically."""
    return write_text(path, jsonl_text(records))


def package_versions(names: Iterable[str]) -> dict[str, str | None]:
    """Distribution name -> its installed version (None: not installed)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
