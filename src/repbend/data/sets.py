"""The four training sets: read sources, deduplicate, cap, save and load.

Capping samples with ``random.Random`` seeded from the data seed (string seeds hash with
SHA-512, not ``hash()``), so the sets do not depend on PYTHONHASHSEED. Rows come back in
their reading order. P_us and P_uu rows that share a ``pair_id`` are sampled by pair, so
the paired term still finds both halves after capping. Recovery rows are derived from
the capped sets at training time, so the saved sets stay what the sources gave.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import replace
from pathlib import Path

from ..config import DataConfig, SourceConfig
from ..errors import ConfigError, DataError
from ..files import write_jsonl
from .examples import KINDS, RETAIN, SAFE, UNSAFE_SAFE, UNSAFE_UNSAFE, Example
from .readers import read_records, read_source

PAIRED_KINDS = (UNSAFE_SAFE, UNSAFE_UNSAFE)
WORD = re.compile(r"\s*\S+")


def caps_from_config(data_config: DataConfig) -> dict[str, int | None]:
    """The per-kind row caps of a :class:`DataConfig` (None = no cap)."""
    return {
        SAFE: data_config.max_safe,
        UNSAFE_SAFE: data_config.max_unsafe_safe,
        UNSAFE_UNSAFE: data_config.max_unsafe_unsafe,
        RETAIN: data_config.max_retain,
    }


def build_sets(
    sources: list[SourceConfig], caps: dict[str, int | None], seed: int
) -> dict[str, list[Example]]:
    """Read every source into the four sets, drop exact duplicates and apply the caps."""
    sets: dict[str, list[Example]] = {kind: [] for kind in KINDS}
    for source in sources:
        for example in read_source(source):
            sets[example.kind].append(example)
    sets = {kind: _deduplicate(rows) for kind, rows in sets.items()}
    return _apply_caps(sets, caps, seed)


def _deduplicate(rows: list[Example]) -> list[Example]:
    seen: set[tuple] = set()
    unique = []
    for row in rows:
        key = (json.dumps(row.messages, sort_keys=True), row.response)
        if key not in seen:
            seen.add(key)
            unique.append(row)
    return unique


def _apply_caps(
    sets: dict[str, list[Example]], caps: dict[str, int | None], seed: int
) -> dict[str, list[Example]]:
    # A pair counts only when both halves exist; a lone half is sampled like any row.
    pair_ids = sorted(
        {row.pair_id for row in sets[UNSAFE_SAFE] if row.pair_id}
        & {row.pair_id for row in sets[UNSAFE_UNSAFE] if row.pair_id}
    )
    pair_rng = random.Random(f"{seed}/pairs")
    pair_priority = {pair_id: pair_rng.random() for pair_id in pair_ids}
    ranked = {}
    for kind in KINDS:
        if caps.get(kind) is None or len(sets[kind]) <= caps[kind]:
            continue
        # One generator per kind: changing one cap leaves the other samples alone.
        rng = random.Random(f"{seed}/{kind}")
        priority = [
            pair_priority[row.pair_id] if row.pair_id in pair_priority else rng.random()
            for row in sets[kind]
        ]
        ranked[kind] = sorted(range(len(priority)), key=lambda i: (priority[i], i))
    # Both paired sets keep the same pairs: as many as the stricter sample would take.
    kept_pairs = set(pair_ids)
    for kind in PAIRED_KINDS:
        if kind in ranked:
            kept_pairs &= {sets[kind][i].pair_id for i in ranked[kind][: caps[kind]]}
    dropped_pairs = set(pair_ids) - kept_pairs
    result = {}
    for kind, rows in sets.items():
        if kind not in ranked:
            result[kind] = list(rows)
            continue
        order = ranked[kind]
        in_kept_pair = [i for i in order if rows[i].pair_id in kept_pairs]
        unpaired = [i for i in order if rows[i].pair_id not in pair_priority]
        # Halves of dropped pairs fill the cap only when unpaired rows run out.
        dropped = [i for i in order if rows[i].pair_id in dropped_pairs]
        chosen = (in_kept_pair + unpaired + dropped)[: caps[kind]]
        result[kind] = [rows[i] for i in sorted(chosen)]
    return result


def recovery_rows(sets: dict[str, list[Example]], fraction: float, max_words: int, seed: int) -> list[Example]:
    """Safety-recovery rows (``data.recovery_fraction``): for a seeded share of the P_us
    rows whose ``pair_id`` has a P_uu answer, the same refusal after that answer's first
    1..``max_words`` words (never the whole answer), as new unpaired P_us rows."""
    if not 0 <= fraction <= 1:
        raise ConfigError(f"data.recovery_fraction: {fraction!r} is not between 0 and 1")
    if max_words < 1:
        raise ConfigError(f"data.recovery_max_words: {max_words!r} must be at least 1")
    if fraction == 0:
        return []
    answers = {row.pair_id: row.response for row in sets[UNSAFE_UNSAFE] if row.pair_id and row.response}
    rows = []
    for row in sets[UNSAFE_SAFE]:
        if row.pair_id not in answers:
            continue
        rng = random.Random(f"{seed}/recovery/{row.pair_id}")
        if rng.random() >= fraction:
            continue
        words = WORD.findall(answers[row.pair_id])
        count = rng.randint(1, max(1, min(max_words, len(words) - 1)))
        opening = "".join(words[:count]).strip() + "\n\n"
        rows.append(replace(row, opening=opening, pair_id=None, source=f"{row.source} (recovery)"))
    return rows


def require_sets(
    sets: dict[str, list[Example]], needed: list[str], sources: list[SourceConfig]
) -> None:
    """Raise :class:`DataError` when a set the method needs came out empty."""
    for kind in needed:
        if not sets.get(kind):
            listed = ", ".join(f"{source.path} ({source.layout})" for source in sources) or "none"
            raise DataError(f"the {kind} set is empty after filtering (sources: {listed})")


def save_sets(sets: dict[str, list[Example]], folder: str | Path) -> None:
    """Write one ``<kind>.jsonl`` per kind (empty sets too), each atomically."""
    for kind in KINDS:
        rows = sets.get(kind, [])
        write_jsonl(Path(folder) / f"{kind}.jsonl", (e.to_dict() for e in rows))


def load_sets(folder: str | Path) -> dict[str, list[Example]]:
    """Read the sets :func:`save_sets` wrote."""
    folder = Path(folder)
    sets = {}
    for kind in KINDS:
        path = folder / f"{kind}.jsonl"
        if not path.is_file():
            raise DataError(f"saved set {path} is missing; rebuild the data sets")
        rows = []
        for location, record in read_records(path):
            try:
                example = Example.from_dict(record)
            except (KeyError, TypeError, ValueError) as error:
                raise DataError(
                    f"not a saved example: {error}", file=location.file, line=location.line
                ) from None
            if example.kind != kind:
                raise DataError(
                    f"a {example.kind} row in the {kind} set",
                    file=location.file,
                    line=location.line,
                )
            rows.append(example)
        sets[kind] = rows
    return sets
