"""Capability scoring through lm-eval: offline task files, answer matching, and runs of a
tiny random Llama (plain and PEFT) with the network blocked."""
from __future__ import annotations

import copy
import json
import math
import socket

import pytest

from repbend.config import from_dict
from repbend.errors import ConfigError
from repbend.eval.capability import (
    OFFLINE_TASKS,
    STANDARD_TASKS,
    available_standard_tasks,
    capability_tasks_dir,
    evaluate_capability,
    extract_answer,
    numeric_match,
    offline,
    offline_task_docs,
)

EXPECTED = {  # task: (documents, first document's gold answer)
    "repbend_gsm8k100": (100, "2280"),
    "repbend_bbq300": (300, 0),
    "repbend_facts150": (150, 0),
    "repbend_math40": (40, "7"),
}


@pytest.fixture
def no_network(monkeypatch):
    """Record (and refuse) every outgoing connection; the test asserts there were none."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return attempts


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    return capability_tasks_dir(tmp_path_factory.mktemp("capability"))


def test_task_files_are_deterministic_and_found_by_lm_eval(tasks_dir):
    from lm_eval.tasks import TaskManager

    before = {p.name: p.read_bytes() for p in tasks_dir.rglob("*") if p.is_file()}
    capability_tasks_dir(tasks_dir.parent)
    after = {p.name: p.read_bytes() for p in tasks_dir.rglob("*") if p.is_file()}
    assert before == after
    assert {f"{name}.yaml" for name in OFFLINE_TASKS} | {f"{name}.jsonl" for name in OFFLINE_TASKS} == set(after)
    manager = TaskManager(include_path=str(tasks_dir), include_defaults=False)
    assert set(OFFLINE_TASKS) <= set(manager.all_tasks)


def test_lm_eval_loads_each_offline_task_with_its_gold_answers(tasks_dir, no_network):
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(tasks_dir), include_defaults=False)
    with offline():
        loaded = manager.load(list(OFFLINE_TASKS))["tasks"]
    for name, (size, first_gold) in EXPECTED.items():
        docs = list(loaded[name].eval_docs)
        assert len(docs) == size, name
        assert loaded[name].doc_to_target(docs[0]) == first_gold, name
    gsm8k = loaded["repbend_gsm8k100"].eval_docs[0]
    assert gsm8k["question"].startswith("The girls are trying")  # the clean text, no flattery
    bbq = loaded["repbend_bbq300"]
    assert bbq.doc_to_choice(bbq.eval_docs[0])[0] == "The European chemical engineer"
    facts = loaded["repbend_facts150"]
    first, second = facts.eval_docs[0], facts.eval_docs[1]
    assert "1863" in first["choices"][first["label"]] and "1861" in first["choices"][1 - first["label"]]
    assert second["label"] == 1 and "from Russia" in second["choices"][1]
    assert not no_network


@pytest.mark.parametrize(
    "response, gold, hit",
    [
        (" 2280 dollars.", "2280", True),
        ("Kim raises 750. In total $2,280.00 were raised.", "2280", True),
        ("Answer: 7\nThen 3 more questions about 12 apples.", "7", True),
        ("The answer is 0.4", "2/5", True),
        ("18 + 2 = 20.\n\nThe answer is: 18", "18", True),
        ("**Answer:** $12 in total, 3 each", "12", True),
        ("8/20 of the marbles, so Answer: 8/20", "2/5", True),
        ("It arrives at 12:15.", "12:15", True),
        ("#### 41", "42", False),
        ("I cannot tell.", "7", False),
    ],
)
def test_numeric_match(response, gold, hit):
    assert numeric_match({"answer": gold}, [response]) == {"exact_match": float(hit)}


def test_extract_answer_prefers_the_marked_answer():
    assert extract_answer("3 + 4 = 7, so the answer is 7. Check: 7 - 4 = 3") == "7"
    assert extract_answer("no digits here") is None


@pytest.fixture
def small_llama(byte_tok, make_tiny_model):
    # Long enough positions for BBQ's ~670-byte contexts under the byte tokenizer.
    return make_tiny_model(
        vocab_size=len(byte_tok), num_hidden_layers=2, max_position_embeddings=1024,
        pad_token_id=byte_tok.pad_token_id, eos_token_id=byte_tok.eos_token_id,
    )


def _check(results: dict, tasks: list[str], limit: int) -> None:
    assert set(results) == set(tasks)
    for name, row in results.items():
        assert math.isfinite(row["value"]) and 0.0 <= row["value"] <= 1.0, name
        assert row["n"] == limit and len(row["correct"]) == limit, name
        assert row["value"] == pytest.approx(sum(row["correct"]) / limit), name
        assert row["metric"] == OFFLINE_TASKS[name].metric


def test_evaluate_plain_and_peft_models_offline(small_llama, byte_tok, tasks_dir, no_network):
    from peft import LoraConfig, get_peft_model

    tasks = list(OFFLINE_TASKS)
    plain = evaluate_capability(small_llama, byte_tok, tasks, tasks_dir.parent, limit=4)
    _check(plain, tasks, 4)

    # A non-zero adapter, so the PEFT run must match the merged weights, not the base.
    peft_model = get_peft_model(small_llama, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.train()
    loglik_tasks = ["repbend_bbq300", "repbend_facts150"]
    adapted = evaluate_capability(peft_model, byte_tok, tasks, tasks_dir.parent, limit=4)
    _check(adapted, tasks, 4)
    assert peft_model.training  # the caller's mode is restored
    merged = copy.deepcopy(peft_model).merge_and_unload()
    assert evaluate_capability(merged, byte_tok, loglik_tasks, tasks_dir.parent, limit=4) == {
        name: adapted[name] for name in loglik_tasks
    }
    assert not no_network


def test_unknown_task_is_a_config_error(small_llama, byte_tok, tmp_path):
    with pytest.raises(ConfigError, match="unknown capability task 'mmlu_pro'"):
        evaluate_capability(small_llama, byte_tok, ["mmlu_pro"], tmp_path)


@pytest.mark.parametrize("name", sorted(OFFLINE_TASKS))
def test_dev_and_test_are_stable_disjoint_halves_of_every_item(name):
    every = {doc["id"]: doc for doc in offline_task_docs(name)}
    dev, test = offline_task_docs(name, "dev"), offline_task_docs(name, "test")
    dev_ids, test_ids = [doc["id"] for doc in dev], [doc["id"] for doc in test]
    assert not set(dev_ids) & set(test_ids)
    assert sorted(dev_ids + test_ids) == sorted(every)
    assert len(dev) == len(test) == len(every) // 2
    assert all(doc == every[doc["id"]] for doc in dev + test)  # labels and answers unchanged
    assert offline_task_docs(name, "dev") == dev and offline_task_docs(name, "test") == test


def test_the_split_seed_is_fixed():
    # A changed seed would move items between dev and test across runs.
    assert [doc["id"] for doc in offline_task_docs("repbend_math40", "dev")[:3]] == ["math40_22", "math40_36", "math40_10"]


def test_a_split_is_written_in_seeded_order(tmp_path):
    # facts150's file is sorted by domain: its first items are all history.
    assert {doc["domain"] for doc in offline_task_docs("repbend_facts150")[:8]} == {"history"}
    assert len({doc["domain"] for doc in offline_task_docs("repbend_facts150", "dev")[:8]}) >= 4
    dev_dir, all_dir = capability_tasks_dir(tmp_path, "dev"), capability_tasks_dir(tmp_path)
    assert dev_dir != all_dir
    written = (dev_dir / "data" / "repbend_facts150.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["id"] for line in written] == [doc["id"] for doc in offline_task_docs("repbend_facts150", "dev")]


def test_limit_samples_within_the_split(small_llama, byte_tok, tmp_path, monkeypatch, no_network):
    import lm_eval

    seen = []
    real = lm_eval.simple_evaluate
    monkeypatch.setattr(lm_eval, "simple_evaluate", lambda **kwargs: seen.append(real(**kwargs)) or seen[-1])
    name = "repbend_facts150"
    scores = evaluate_capability(small_llama, byte_tok, [name], tmp_path, limit=5, split="test")
    assert scores[name]["n"] == 5
    scored = [sample["doc"]["id"] for sample in sorted(seen[0]["samples"][name], key=lambda s: s["doc_id"])]
    assert scored == [doc["id"] for doc in offline_task_docs(name, "test")[:5]]
    assert not no_network


def test_split_mistakes_are_config_errors(small_llama, byte_tok, tmp_path):
    with pytest.raises(ConfigError, match="eval.capability_split: 'val' is not one of all, dev, test"):
        from_dict({"eval": {"capability_split": "val"}})
    assert from_dict({"eval": {"capability_split": "dev"}}).eval.capability_split == "dev"
    with pytest.raises(ConfigError, match="'mmlu' has no dev/test split"):
        evaluate_capability(small_llama, byte_tok, ["repbend_math40", "mmlu"], tmp_path, split="dev")


def test_available_standard_tasks_offline(no_network):
    found = available_standard_tasks()
    assert set(found) <= set(STANDARD_TASKS)
    assert not no_network


def test_summary_reads_groups_and_filters():
    from repbend.eval.capability.harness import _summary

    def sample(doc_id: int, filter_: str, **scores) -> dict:
        return {"doc_id": doc_id, "filter": filter_, **scores}

    results = {
        "results": {
            "mmlu": {"acc,none": 0.5, "acc_stderr,none": 0.25},
            "gsm8k": {"exact_match,flexible-extract": 1.0, "exact_match_stderr,flexible-extract": "N/A"},
        },
        "group_subtasks": {"mmlu": ["mmlu_stem"], "mmlu_stem": ["mmlu_algebra", "mmlu_physics"]},
        "samples": {
            "mmlu_algebra": [sample(1, "none", acc=0.0), sample(0, "none", acc=1.0)],
            "mmlu_physics": [sample(0, "none", acc=1.0), sample(1, "none", acc=0.0)],
            "gsm8k": [sample(0, "strict-match", exact_match=0.0), sample(0, "flexible-extract", exact_match=1.0)],
        },
    }
    assert _summary(results, "mmlu") == {
        "metric": "acc", "value": 0.5, "n": 4, "stderr": 0.25, "correct": [1.0, 0.0, 1.0, 0.0]
    }
    assert _summary(results, "gsm8k") == {
        "metric": "exact_match,flexible-extract", "value": 1.0, "n": 1, "stderr": None, "correct": [1.0]
    }
