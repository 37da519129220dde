"""The four sets: deduplication, deterministic caps that keep pairs, save and load."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from repbend.config import DataConfig, SourceConfig
from repbend.data.examples import KINDS, RETAIN, SAFE, UNSAFE_SAFE, UNSAFE_UNSAFE, Example
from repbend.data.sets import build_sets, caps_from_config, load_sets, recovery_rows, require_sets, save_sets
from repbend.errors import ConfigError, DataError

SAMPLE = Path(__file__).parents[1] / "examples" / "data" / "sample_train.jsonl"
SOURCES = [SourceConfig(path=str(SAMPLE), layout="generic")]
NO_CAPS = {kind: None for kind in KINDS}


def sizes(sets) -> dict:
    return {kind: len(rows) for kind, rows in sets.items()}


def pair_ids(rows) -> set:
    return {row.pair_id for row in rows if row.pair_id}


def test_build_sets_groups_by_kind_in_reading_order():
    sets = build_sets(SOURCES, NO_CAPS, seed=0)
    assert sizes(sets) == {SAFE: 24, UNSAFE_SAFE: 24, UNSAFE_UNSAFE: 24, RETAIN: 16}
    assert all(row.kind == kind for kind, rows in sets.items() for row in rows)
    lines = [int(row.source.rsplit(":", 1)[1]) for row in sets[SAFE]]
    assert lines == sorted(lines)


def test_exact_duplicates_are_dropped(tmp_path):
    copy = tmp_path / "copy.jsonl"
    copy.write_text(SAMPLE.read_text())
    sets = build_sets(SOURCES + [SourceConfig(path=str(copy), layout="generic")], NO_CAPS, seed=0)
    assert sizes(sets) == {SAFE: 24, UNSAFE_SAFE: 24, UNSAFE_UNSAFE: 24, RETAIN: 16}
    # The first occurrence wins.
    assert all(str(SAMPLE) in row.source for rows in sets.values() for row in rows)


def test_same_prompt_with_another_response_is_kept(tmp_path):
    rows = [{"prompt": "Hi?", "response": "Hello.", "label": "safe"},
            {"prompt": "Hi?", "response": "Hello there.", "label": "safe"},
            {"prompt": "Hi?", "response": "Hello.", "label": "safe"}]
    path = tmp_path / "dup.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    sets = build_sets([SourceConfig(path=str(path), layout="generic")], NO_CAPS, seed=0)
    assert [row.response for row in sets[SAFE]] == ["Hello.", "Hello there."]


def test_caps_are_deterministic_and_depend_on_the_seed():
    caps = {SAFE: 10, UNSAFE_SAFE: 10, UNSAFE_UNSAFE: 10, RETAIN: 5}
    first = build_sets(SOURCES, caps, seed=0)
    assert sizes(first) == caps
    assert first == build_sets(SOURCES, caps, seed=0)
    other = build_sets(SOURCES, caps, seed=1)
    assert sizes(other) == caps
    assert any(first[kind] != other[kind] for kind in KINDS)
    # Kept rows stay in reading order.
    lines = [int(row.source.rsplit(":", 1)[1]) for row in first[SAFE]]
    assert lines == sorted(lines)


def test_a_cap_above_the_set_size_keeps_everything():
    sets = build_sets(SOURCES, {SAFE: 100, RETAIN: 16}, seed=3)
    assert sets == build_sets(SOURCES, NO_CAPS, seed=3)


def test_caps_keep_pairs_together():
    for seed in range(5):
        sets = build_sets(SOURCES, {UNSAFE_SAFE: 10, UNSAFE_UNSAFE: 14}, seed=seed)
        assert (len(sets[UNSAFE_SAFE]), len(sets[UNSAFE_UNSAFE])) == (10, 14)
        assert pair_ids(sets[UNSAFE_SAFE]) == pair_ids(sets[UNSAFE_UNSAFE])
    # Pairs are sampled, not dropped wholesale.
    caps = {UNSAFE_SAFE: 10, UNSAFE_UNSAFE: 14}
    kept = [len(pair_ids(build_sets(SOURCES, caps, seed=s)[UNSAFE_SAFE])) for s in range(5)]
    assert max(kept) > 0


def test_one_capped_paired_set_keeps_its_pairs_whole():
    sets = build_sets(SOURCES, {UNSAFE_UNSAFE: 6}, seed=2)
    assert len(sets[UNSAFE_UNSAFE]) == 6
    assert len(sets[UNSAFE_SAFE]) == 24
    assert pair_ids(sets[UNSAFE_UNSAFE]) <= pair_ids(sets[UNSAFE_SAFE])


def test_sets_do_not_depend_on_the_hash_seed():
    script = (
        "import json, sys\n"
        "from repbend.config import SourceConfig\n"
        "from repbend.data.sets import build_sets\n"
        f"sets = build_sets([SourceConfig(path={str(SAMPLE)!r}, layout='generic')],"
        " {'safe': 7, 'unsafe_safe': 9, 'unsafe_unsafe': 9, 'retain': 4}, seed=5)\n"
        "print(json.dumps({k: [r.source for r in v] for k, v in sets.items()}))\n"
    )
    outputs = set()
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed,
                   PYTHONPATH=os.pathsep.join(sys.path))
        result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                                text=True, check=True)
        outputs.add(result.stdout)
    assert len(outputs) == 1


def test_caps_from_config():
    config = DataConfig(max_safe=1, max_unsafe_safe=2, max_unsafe_unsafe=3, max_retain=None)
    assert caps_from_config(config) == {SAFE: 1, UNSAFE_SAFE: 2, UNSAFE_UNSAFE: 3, RETAIN: None}


def test_require_sets_names_the_empty_set_and_sources():
    sources = [SourceConfig(path=str(SAMPLE), layout="generic", kinds=[SAFE])]
    sets = build_sets(sources, NO_CAPS, seed=0)
    require_sets(sets, [SAFE], sources)
    with pytest.raises(DataError) as error:
        require_sets(sets, [SAFE, RETAIN], sources)
    message = str(error.value)
    assert "the retain set is empty after filtering" in message
    assert str(SAMPLE) in message


def test_save_and_load_round_trip(tmp_path):
    sets = build_sets(SOURCES, {SAFE: 5}, seed=0)
    save_sets(sets, tmp_path / "sets")
    names = sorted(path.name for path in (tmp_path / "sets").iterdir())
    assert names == sorted(f"{kind}.jsonl" for kind in KINDS)
    assert load_sets(tmp_path / "sets") == sets


def test_save_writes_empty_sets_and_load_checks_them(tmp_path):
    row = Example(
        kind=SAFE, messages=({"role": "user", "content": "q"},), response="a", source="x:1"
    )
    save_sets({SAFE: [row]}, tmp_path)
    loaded = load_sets(tmp_path)
    assert loaded == {SAFE: [row], UNSAFE_SAFE: [], UNSAFE_UNSAFE: [], RETAIN: []}
    (tmp_path / "retain.jsonl").write_text(json.dumps(row.to_dict()) + "\n")
    with pytest.raises(DataError, match=r"retain\.jsonl:1: a safe row in the retain set"):
        load_sets(tmp_path)
    (tmp_path / "retain.jsonl").unlink()
    with pytest.raises(DataError, match="retain.jsonl is missing"):
        load_sets(tmp_path)


def test_recovery_rows_put_an_answer_start_before_the_refusal():
    sets = build_sets(SOURCES, NO_CAPS, seed=0)
    answers = {row.pair_id: row.response for row in sets[UNSAFE_UNSAFE] if row.pair_id}
    paired = [row for row in sets[UNSAFE_SAFE] if row.pair_id in answers]
    assert paired
    rows = recovery_rows(sets, 1.0, 5, seed=0)
    assert len(rows) == len(paired)
    for row, original in zip(rows, paired):
        assert (row.kind, row.messages, row.response, row.pair_id) == (UNSAFE_SAFE, original.messages, original.response, None)
        assert row.opening.endswith("\n\n")
        opening = row.opening[:-2]
        assert answers[original.pair_id].lstrip().startswith(opening)
        assert 1 <= len(opening.split()) <= 5 and opening != answers[original.pair_id].strip()
    assert recovery_rows(sets, 0.0, 5, seed=0) == []


def test_recovery_rows_are_a_seeded_share():
    sets = build_sets(SOURCES, NO_CAPS, seed=0)
    half = recovery_rows(sets, 0.5, 24, seed=0)
    assert 0 < len(half) < len(recovery_rows(sets, 1.0, 24, seed=0))
    assert half == recovery_rows(sets, 0.5, 24, seed=0)
    assert half != recovery_rows(sets, 0.5, 24, seed=1)


@pytest.mark.parametrize("fraction, words", [(1.5, 24), (-0.1, 24), (0.5, 0)])
def test_recovery_rows_reject_bad_settings(fraction, words):
    with pytest.raises(ConfigError, match="data.recovery"):
        recovery_rows(build_sets(SOURCES, NO_CAPS, seed=0), fraction, words, seed=0)
