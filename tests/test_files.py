"""JSON Lines and package versions (repbend.files)."""
from repbend.files import jsonl_text, package_versions, read_jsonl, write_jsonl


def test_jsonl_round_trips_text_with_unicode_line_breaks(tmp_path):
    # A model's answer may hold U+2028, U+2029, U+0085 or a form feed: written unescaped,
    # they must not split a record.
    records = [{"response": "one\u2028two\u2029three\x85four\x0cfive", "n": 1}, {"response": "plain", "n": 2}]
    path = write_jsonl(tmp_path / "out" / "rows.jsonl", records)
    assert path.read_text(encoding="utf-8").count("\n") == 2
    assert read_jsonl(path) == records
    assert jsonl_text([]) == ""


def test_package_versions_names_missing_packages_as_none():
    versions = package_versions(["pytest", "no-such-distribution-here"])
    assert versions["pytest"] and versions["no-such-distribution-here"] is None
