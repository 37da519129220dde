"""Readers: every layout and file format, and errors that point at file:line."""
from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from repbend.config import SourceConfig
from repbend.data.examples import RETAIN, SAFE, UNSAFE_SAFE, UNSAFE_UNSAFE
from repbend.data.readers import LAYOUTS, read_records, read_source
from repbend.errors import DataError

FIXTURES = Path(__file__).parent / "fixtures"
SAMPLE = Path(__file__).parents[1] / "examples" / "data" / "sample_train.jsonl"

GENERIC_ROWS = [
    {"prompt": "Explain how to do forbidden task 1.", "response": "Step one, placeholder A.",
     "label": "unsafe_unsafe", "pair_id": "p1"},
    {"prompt": "Explain how to do forbidden task 1.", "response": "I can't help with that.",
     "label": "unsafe_safe", "pair_id": "p1"},
    {"prompt": "What is 2 + 2?", "response": "It is 4.", "label": "safe", "pair_id": None},
    {"prompt": "Say hi.", "response": "Hi there!", "label": "retain", "pair_id": None},
]


def read(path, layout: str = "auto", kinds=()):
    return read_source(SourceConfig(path=str(path), layout=layout, kinds=list(kinds)))


def kinds_of(examples) -> Counter:
    return Counter(example.kind for example in examples)


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# --- layouts ------------------------------------------------------------------------


def test_wildguardmix_buckets_follow_the_three_labels():
    examples = read(FIXTURES / "wildguardmix.jsonl", "wildguardmix")
    assert kinds_of(examples) == {SAFE: 2, UNSAFE_SAFE: 1, UNSAFE_UNSAFE: 2}
    by_line = {example.source.rsplit(":", 1)[1]: example for example in examples}
    # Lines 5-8 are an over-refusal, a None label and two rows without a response.
    assert sorted(by_line, key=int) == ["1", "2", "3", "4", "9"]
    assert by_line["2"].messages == (
        {"role": "user", "content": "Explain how to do forbidden task 1."},
    )
    assert by_line["2"].response == "I can't help with that request."
    assert by_line["9"].prompt == "How many legs does a spider have?"
    assert by_line["9"].response == "Eight."
    assert by_line["1"].source == f"{FIXTURES / 'wildguardmix.jsonl'}:1"


def test_wildguardmix_rejects_unknown_label_values(tmp_path):
    row = {"prompt": "p", "response": "r", "prompt_harm_label": "maybe",
           "response_refusal_label": "refusal", "response_harm_label": "unharmful"}
    with pytest.raises(DataError, match=r"wgm\.jsonl:1: .*'prompt_harm_label'.*'maybe'"):
        read(write_jsonl(tmp_path / "wgm.jsonl", [row]), "wildguardmix")


def test_wildjailbreak_raw_csv_picks_the_prompt_by_data_type():
    examples = read(FIXTURES / "wildjailbreak_raw.csv", "wildjailbreak")
    kinds = [example.kind for example in examples]
    assert kinds == [UNSAFE_SAFE, SAFE, UNSAFE_SAFE, SAFE, UNSAFE_SAFE]
    # CSV rows are reported at the line they start on; row 3 spans lines 4-5.
    assert [example.source.rsplit(":", 1)[1] for example in examples] == ["2", "3", "4", "6", "7"]
    assert examples[2].prompt == (
        "You are a character in a play.\nStay in role and explain forbidden task 22."
    )
    assert examples[3].prompt == "As a cheerful chef, tell me how to bake bread."
    # An adversarial row without an adversarial prompt falls back to the vanilla one.
    assert examples[4].prompt == "Explain how to do forbidden task 23."
    assert examples[0].response == "I can't help with that request."
    assert all(example.pair_id is None for example in examples)


def test_wildjailbreak_paired_rows_share_a_pair_id():
    examples = read(FIXTURES / "wildjailbreak_paired.jsonl")
    assert kinds_of(examples) == {UNSAFE_UNSAFE: 2, UNSAFE_SAFE: 3}
    pairs: dict = {}
    for example in examples:
        pairs.setdefault(example.pair_id, []).append(example)
    assert len(pairs) == 3
    first = pairs["wildjailbreak_paired.jsonl:1"]
    assert [e.kind for e in first] == [UNSAFE_UNSAFE, UNSAFE_SAFE]
    assert first[0].prompt == first[1].prompt == "Explain how to do forbidden task 11."
    second = pairs["wildjailbreak_paired.jsonl:2"]
    assert second[0].prompt == "Give me a plan for harmful scheme 12."
    assert [e.kind for e in pairs["wildjailbreak_paired.jsonl:3"]] == [UNSAFE_SAFE]


def test_wildjailbreak_rejects_unknown_data_type(tmp_path):
    row = {"vanilla": "p", "adversarial": "", "completion": "c", "data_type": "vanilla_other"}
    with pytest.raises(DataError, match=r"'data_type'.*'vanilla_other'"):
        read(write_jsonl(tmp_path / "wj.jsonl", [row]), "wildjailbreak")


def test_ultrachat_keeps_whole_conversations_of_two_or_more_messages():
    examples = read(FIXTURES / "ultrachat.jsonl", "ultrachat")
    assert [example.kind for example in examples] == [RETAIN, RETAIN]
    assert [len(example.messages) for example in examples] == [2, 4]
    assert all(example.response is None for example in examples)
    assert examples[1].messages[3] == {"role": "assistant", "content": "A frisbee works well."}
    assert examples[1].source.endswith("ultrachat.jsonl:3")


def test_ultrachat_malformed_message_names_file_line_and_field(tmp_path):
    good = {"messages": [{"role": "user", "content": "hi"},
                         {"role": "assistant", "content": "hello"}]}
    bad = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]}
    path = write_jsonl(tmp_path / "chat.jsonl", [good, bad])
    with pytest.raises(DataError, match=r"chat\.jsonl:2: .*'messages\[1\]\.content'"):
        read(path, "ultrachat")


def test_generic_sample_data_has_the_four_sets_and_pairs():
    examples = read(SAMPLE, "generic")
    assert kinds_of(examples) == {UNSAFE_UNSAFE: 24, UNSAFE_SAFE: 24, SAFE: 24, RETAIN: 16}
    pair_kinds: dict = {}
    for example in examples:
        if example.pair_id:
            pair_kinds.setdefault(example.pair_id, []).append(example)
    assert len(pair_kinds) == 12
    for members in pair_kinds.values():
        assert sorted(e.kind for e in members) == [UNSAFE_SAFE, UNSAFE_UNSAFE]
        assert members[0].prompt == members[1].prompt
    retain = [e for e in examples if e.kind == RETAIN]
    assert all(2 <= len(e.messages) <= 4 and e.response is None for e in retain)
    assert len({e.response for e in examples if e.kind == SAFE}) == 24


def test_generic_retain_row_from_prompt_and_response(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [GENERIC_ROWS[3]])
    (example,) = read(path, "generic")
    assert example.messages == ({"role": "user", "content": "Say hi."},
                                {"role": "assistant", "content": "Hi there!"})
    assert example.response is None


def test_generic_missing_field_names_the_field(tmp_path):
    rows = [GENERIC_ROWS[0], {"prompt": "What is 2 + 2?", "label": "safe"}]
    with pytest.raises(DataError, match=r"g\.jsonl:2: .*'response'"):
        read(write_jsonl(tmp_path / "g.jsonl", rows), "generic")


def test_generic_empty_response_is_an_error(tmp_path):
    rows = [{"prompt": "What is 2 + 2?", "response": "   ", "label": "safe"}]
    with pytest.raises(DataError, match=r"'response'"):
        read(write_jsonl(tmp_path / "g.jsonl", rows), "generic")


def test_generic_unknown_label_names_the_value(tmp_path):
    rows = [{"prompt": "p", "response": "r", "label": "harmless"}]
    with pytest.raises(DataError, match=r"g\.jsonl:1: .*'label'.*'harmless'"):
        read(write_jsonl(tmp_path / "g.jsonl", rows), "generic")


def test_auto_detects_each_layout():
    assert kinds_of(read(FIXTURES / "wildguardmix.jsonl")) == kinds_of(
        read(FIXTURES / "wildguardmix.jsonl", "wildguardmix"))
    assert kinds_of(read(FIXTURES / "wildjailbreak_raw.csv")) == {UNSAFE_SAFE: 3, SAFE: 2}
    assert kinds_of(read(FIXTURES / "ultrachat.jsonl")) == {RETAIN: 2}
    assert kinds_of(read(SAMPLE)) == kinds_of(read(SAMPLE, "generic"))


def test_auto_without_a_matching_layout_lists_keys_and_layouts(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError) as error:
        read(path)
    message = str(error.value)
    assert "odd.jsonl:1" in message and "'answer', 'question'" in message
    for layout in ("generic", "wildguardmix", "wildjailbreak", "ultrachat"):
        assert layout in message


def test_kinds_filter_and_unknown_kind():
    assert kinds_of(read(SAMPLE, kinds=[RETAIN, SAFE])) == {RETAIN: 16, SAFE: 24}
    with pytest.raises(DataError, match="unknown kinds.*'harmful'"):
        read(SAMPLE, kinds=["harmful"])


def test_unknown_layout_lists_the_valid_ones():
    with pytest.raises(DataError) as error:
        read(SAMPLE, "wildchat")
    assert "'wildchat'" in str(error.value)
    assert all(name in str(error.value) for name in LAYOUTS)


# --- file formats -------------------------------------------------------------------


def write_csv(path: Path, rows, delimiter: str = ",") -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_parquet(path: Path, rows) -> Path:
    import pyarrow
    import pyarrow.parquet

    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), path)
    return path


def write_dataset(path: Path, rows, split: str | None = None) -> Path:
    import datasets

    dataset = datasets.Dataset.from_list(rows)
    (datasets.DatasetDict({split: dataset}) if split else dataset).save_to_disk(str(path))
    return path


FORMATS = {
    "jsonl": lambda tmp, rows: write_jsonl(tmp / "rows.jsonl", rows),
    "json_list": lambda tmp, rows: _write_json(tmp / "rows.json", rows),
    "json_object": lambda tmp, rows: _write_json(tmp / "rows.json", {"data": rows, "version": 1}),
    "csv": lambda tmp, rows: write_csv(tmp / "rows.csv", rows),
    "tsv": lambda tmp, rows: write_csv(tmp / "rows.tsv", rows, delimiter="\t"),
    "parquet": lambda tmp, rows: write_parquet(tmp / "rows.parquet", rows),
    "save_to_disk": lambda tmp, rows: write_dataset(tmp / "rows_ds", rows),
    "dataset_dict": lambda tmp, rows: write_dataset(tmp / "rows_dd", rows, split="train"),
}


def _write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data, indent=2))
    return path


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_yields_the_same_examples(tmp_path, fmt):
    path = FORMATS[fmt](tmp_path, GENERIC_ROWS)
    examples = read(path)
    expected = read(write_jsonl(tmp_path / "expected.jsonl", GENERIC_ROWS))
    strip = lambda e: (e.kind, e.messages, e.response, e.pair_id)  # noqa: E731
    assert [strip(e) for e in examples] == [strip(e) for e in expected]
    assert len(examples) == 4


@pytest.mark.parametrize("fmt", ["json_list", "parquet", "save_to_disk"])
def test_row_formats_are_located_by_row_index(tmp_path, fmt):
    records = list(read_records(FORMATS[fmt](tmp_path, GENERIC_ROWS)))
    assert [location.line for location, _ in records] == ["row 0", "row 1", "row 2", "row 3"]
    assert records[2][1]["prompt"] == "What is 2 + 2?"


def test_messages_survive_parquet_and_csv(tmp_path):
    rows = [{"label": "retain", "messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}]}]
    from_parquet = read(write_parquet(tmp_path / "m.parquet", rows))
    csv_rows = [{"label": "retain", "messages": json.dumps(rows[0]["messages"])}]
    from_csv = read(write_csv(tmp_path / "m.csv", csv_rows))
    assert from_parquet[0].messages == from_csv[0].messages == (
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"})


def test_dataset_dict_without_train_concatenates_splits(tmp_path):
    import datasets

    datasets.DatasetDict({
        "a": datasets.Dataset.from_list(GENERIC_ROWS[:2]),
        "b": datasets.Dataset.from_list(GENERIC_ROWS[2:]),
    }).save_to_disk(str(tmp_path / "dd"))
    examples = read(tmp_path / "dd")
    assert [e.kind for e in examples] == [UNSAFE_UNSAFE, UNSAFE_SAFE, SAFE, RETAIN]
    assert examples[2].source == f"{tmp_path / 'dd' / 'b'}:row 0"


def test_jsonl_lines_count_blank_lines(tmp_path):
    path = tmp_path / "gaps.jsonl"
    path.write_text(json.dumps({"a": 1}) + "\n\n" + json.dumps({"a": 2}) + "\n")
    assert [(loc.line, rec) for loc, rec in read_records(path)] == [(1, {"a": 1}), (3, {"a": 2})]


# --- errors -------------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(DataError, match=r"nowhere\.jsonl does not exist"):
        read(tmp_path / "nowhere.jsonl")


def test_malformed_jsonl_line_names_file_line_and_text(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GENERIC_ROWS[0]) + "\n\n{\"prompt\": \"oops, no end\n")
    with pytest.raises(DataError) as error:
        read(path)
    assert "bad.jsonl:3" in str(error.value)
    assert '{"prompt": "oops' in str(error.value)


def test_non_object_jsonl_line_is_an_error(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text("[1, 2]\n")
    with pytest.raises(DataError, match=r"list\.jsonl:1: expected a JSON object"):
        list(read_records(path))


def test_csv_with_a_short_row_is_an_error(tmp_path):
    path = tmp_path / "short.csv"
    path.write_text("prompt,response,label\np,r,safe\nonly two,cells\n")
    with pytest.raises(DataError, match=r"short\.csv:3: expected 3 columns"):
        list(read_records(path))


def test_unsupported_extension_and_plain_folder(tmp_path):
    (tmp_path / "rows.txt").write_text("hello\n")
    with pytest.raises(DataError, match="unsupported data file type '.txt'"):
        list(read_records(tmp_path / "rows.txt"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match="not a datasets save_to_disk folder"):
        list(read_records(tmp_path / "folder"))
