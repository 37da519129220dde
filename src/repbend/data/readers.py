"""Readers: data files in the public layouts -> :class:`Example` rows.

Two levels: :func:`read_records` turns any supported file format (JSONL, JSON, CSV/TSV,
Parquet, a ``datasets`` ``save_to_disk`` folder) into located dict records; one reader
per layout (:data:`LAYOUTS`) turns those records into examples of the four kinds. Every
problem is a :class:`DataError` pointing at ``file:line`` (or ``file:row N``); no row is
dropped except by the documented bucket rules of its layout.
"""
from __future__ import annotations

import csv
import json
from contextlib import closing
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

from ..config import SourceConfig
from ..errors import DataError
from .examples import KINDS, RETAIN, SAFE, UNSAFE_SAFE, UNSAFE_UNSAFE, Example

ROLES = ("system", "user", "assistant")


class Location(NamedTuple):
    """Where a record sits: ``line`` is a 1-based line number or ``"row N"`` (0-based)."""

    file: str
    line: int | str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


Record = tuple[Location, dict]


# --- file formats -------------------------------------------------------------------


def read_records(path: str | Path) -> Iterator[Record]:
    """Yield ``(location, record)`` for every row of a data file or dataset folder."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    if path.is_dir():
        yield from _read_dataset_folder(path)
        return
    suffix = path.suffix.lower()
    if suffix not in _FORMATS:
        raise DataError(
            f"unsupported data file type {suffix or '(none)'!r}; expected one of "
            f"{', '.join(_FORMATS)} or a datasets save_to_disk folder",
            file=path,
        )
    yield from _FORMATS[suffix](path)


def _read_jsonl(path: Path) -> Iterator[Record]:
    with open(path, encoding="utf-8-sig") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                raise DataError(
                    f"not valid JSON ({error.msg}): {text.strip()[:60]!r}", file=path, line=number
                ) from None
            yield _as_record(record, Location(str(path), number))


def _read_json(path: Path) -> Iterator[Record]:
    text = path.read_text(encoding="utf-8-sig")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        # Many published ".json" files are JSON Lines.
        if error.msg == "Extra data":
            yield from _read_jsonl(path)
            return
        raise DataError(f"not valid JSON ({error.msg})", file=path, line=error.lineno) from None
    if isinstance(data, dict):
        lists = [key for key, value in data.items() if isinstance(value, list)]
        if len(lists) != 1:
            raise DataError(
                "expected a list of records, or an object with exactly one list of records; "
                f"found keys {sorted(data)}",
                file=path,
            )
        data = data[lists[0]]
    if not isinstance(data, list):
        raise DataError(f"expected a list of records, found {type(data).__name__}", file=path)
    for index, record in enumerate(data):
        yield _as_record(record, Location(str(path), f"row {index}"))


def _read_delimited(path: Path) -> Iterator[Record]:
    # Long responses exceed csv's default 128 KiB field limit.
    csv.field_size_limit(2**31 - 1)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter, strict=True)
        try:
            header = next(reader, None)
            if header is None:
                return
            end = reader.line_num
            for row in reader:
                # A quoted field may span lines: a row is reported at the line it starts on.
                start, end = end + 1, reader.line_num
                if not row:
                    continue
                if len(row) != len(header):
                    raise DataError(
                        f"expected {len(header)} columns ({', '.join(header)}), found {len(row)}",
                        file=path,
                        line=start,
                    )
                yield Location(str(path), start), dict(zip(header, row))
        except csv.Error as error:
            raise DataError(f"not valid CSV: {error}", file=path, line=reader.line_num) from None


def _read_parquet(path: Path) -> Iterator[Record]:
    import pyarrow
    import pyarrow.parquet

    try:
        parquet = pyarrow.parquet.ParquetFile(path)
    except pyarrow.ArrowException as error:
        raise DataError(f"not a readable parquet file: {error}", file=path) from None
    index = 0
    for batch in parquet.iter_batches():
        for record in batch.to_pylist():
            yield Location(str(path), f"row {index}"), record
            index += 1


def _read_dataset_folder(path: Path) -> Iterator[Record]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise DataError(
            "is a folder but not a datasets save_to_disk folder", file=path
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = ["train"] if "train" in loaded else list(loaded)
        parts = [(Path(path, split), loaded[split]) for split in splits]
    else:
        parts = [(path, loaded)]
    for file, dataset in parts:
        for index, record in enumerate(dataset):
            yield Location(str(file), f"row {index}"), record


_FORMATS: dict[str, Callable[[Path], Iterator[Record]]] = {
    ".jsonl": _read_jsonl,
    ".ndjson": _read_jsonl,
    ".json": _read_json,
    ".csv": _read_delimited,
    ".tsv": _read_delimited,
    ".parquet": _read_parquet,
}


def _as_record(record, location: Location) -> Record:
    if not isinstance(record, dict):
        raise DataError(
            f"expected a JSON object, found {type(record).__name__}",
            file=location.file,
            line=location.line,
        )
    return location, record


# --- field access -------------------------------------------------------------------


def _fail(location: Location, message: str, field: str, value=None) -> DataError:
    return DataError(message, file=location.file, line=location.line, field=field, value=value)


def text_field(record: dict, location: Location, name: str, *, required: bool = True) -> str | None:
    """The field's text, stripped; None when absent or empty (an error if required)."""
    value = record.get(name)
    if value is not None and not isinstance(value, str):
        raise _fail(location, "expected text", name, value)
    value = value.strip() if value else None
    if not value and required:
        raise _fail(location, "missing or empty field", name)
    return value


def label_field(
    record: dict, location: Location, name: str, allowed: tuple, *, required: bool = False
) -> str | None:
    """A label that must be one of ``allowed``; None when empty (real data has gaps)."""
    if name not in record:
        raise _fail(location, f"missing field (expected one of {', '.join(allowed)})", name)
    value = text_field(record, location, name, required=required)
    if value is not None and value not in allowed:
        raise _fail(location, f"unknown label; expected one of {', '.join(allowed)}", name, value)
    return value


def messages_field(record: dict, location: Location, name: str = "messages") -> tuple:
    """A conversation: a list of ``{role, content}`` (CSV cells may hold it as JSON)."""
    value = record.get(name)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise _fail(location, "expected a JSON list of messages", name, value) from None
    if not isinstance(value, list) or not value:
        raise _fail(location, "expected a non-empty list of messages", name, value)
    messages = []
    for index, message in enumerate(value):
        where = f"{name}[{index}]"
        if not isinstance(message, dict):
            raise _fail(location, "expected a {role, content} object", where, message)
        role = message.get("role")
        if role not in ROLES:
            raise _fail(location, f"role must be one of {', '.join(ROLES)}", f"{where}.role", role)
        content = message.get("content")
        if not isinstance(content, str):
            raise _fail(location, "missing or non-text content", f"{where}.content", content)
        messages.append({"role": role, "content": content.strip()})
    return tuple(messages)


def _single_turn(
    kind: str, prompt: str, response: str, location: Location, pair_id: str | None = None
) -> Example:
    return Example(
        kind=kind,
        messages=({"role": "user", "content": prompt},),
        response=response,
        source=str(location),
        pair_id=pair_id,
    )


# --- layouts ------------------------------------------------------------------------


def _convert(
    path: str | Path, convert: Callable[[dict, Location], Iterable[Example]]
) -> Iterator[Example]:
    for location, record in read_records(path):
        yield from convert(record, location)


def _wildguardmix_row(record: dict, location: Location) -> Iterable[Example]:
    prompt_label = label_field(record, location, "prompt_harm_label", ("harmful", "unharmful"))
    refusal = label_field(record, location, "response_refusal_label", ("refusal", "compliance"))
    response_label = label_field(record, location, "response_harm_label", ("harmful", "unharmful"))
    if prompt_label == "unharmful" and refusal == "compliance" and response_label == "unharmful":
        kind = SAFE
    elif prompt_label == "harmful" and refusal == "refusal" and response_label == "unharmful":
        kind = UNSAFE_SAFE
    elif prompt_label == "harmful" and refusal == "compliance":
        kind = UNSAFE_UNSAFE
    else:
        return ()
    prompt = text_field(record, location, "prompt", required=False)
    response = text_field(record, location, "response", required=False)
    # WildGuardMix has prompt-only rows (no response): they belong to no set.
    if prompt is None or response is None:
        return ()
    return (_single_turn(kind, prompt, response, location),)


def read_wildguardmix(path: str | Path) -> Iterator[Example]:
    """WildGuardMix rows bucketed by their three labels; other rows unused."""
    return _convert(path, _wildguardmix_row)


WILDJAILBREAK_TYPES = {
    "vanilla_harmful": UNSAFE_SAFE,
    "adversarial_harmful": UNSAFE_SAFE,
    "vanilla_benign": SAFE,
    "adversarial_benign": SAFE,
}


def _wildjailbreak_row(record: dict, location: Location) -> Iterable[Example]:
    if "harmful_answer" in record or "harmless_answer" in record:
        return _wildjailbreak_pair(record, location)
    data_type = label_field(record, location, "data_type", tuple(WILDJAILBREAK_TYPES), required=True)
    prompt = None
    if data_type.startswith("adversarial"):
        prompt = text_field(record, location, "adversarial", required=False)
    prompt = prompt or text_field(record, location, "vanilla")
    # Raw WildJailbreak completions answer benign prompts and refuse harmful ones.
    response = text_field(record, location, "completion")
    return (_single_turn(WILDJAILBREAK_TYPES[data_type], prompt, response, location),)


def _wildjailbreak_pair(record: dict, location: Location) -> Iterable[Example]:
    prompt = text_field(record, location, "vanilla", required=False)
    prompt = prompt or text_field(record, location, "prompt", required=False)
    if prompt is None:
        raise _fail(location, "a paired row needs a vanilla or prompt field", "prompt")
    harmful = text_field(record, location, "harmful_answer", required=False)
    harmless = text_field(record, location, "harmless_answer", required=False)
    if harmful is None and harmless is None:
        raise _fail(
            location, "a paired row needs harmful_answer or harmless_answer", "harmful_answer"
        )
    # The file name and row identify a pair stably across runs and machines.
    pair_id = f"{Path(location.file).name}:{location.line}"
    return tuple(
        _single_turn(kind, prompt, answer, location, pair_id)
        for kind, answer in ((UNSAFE_UNSAFE, harmful), (UNSAFE_SAFE, harmless))
        if answer is not None
    )


def read_wildjailbreak(path: str | Path) -> Iterator[Example]:
    """WildJailbreak, raw (``data_type`` + ``completion``) or paired
    (``harmful_answer``/``harmless_answer``), detected per row."""
    return _convert(path, _wildjailbreak_row)


def _ultrachat_row(record: dict, location: Location) -> Iterable[Example]:
    messages = messages_field(record, location)
    # As in the reference code, the retain set uses conversations of at least two messages.
    if len(messages) < 2:
        return ()
    return (Example(kind=RETAIN, messages=messages, source=str(location)),)


def read_ultrachat(path: str | Path) -> Iterator[Example]:
    """UltraChat ``messages`` conversations -> retain rows (whole conversation)."""
    return _convert(path, _ultrachat_row)


def _generic_row(record: dict, location: Location) -> Iterable[Example]:
    kind = label_field(record, location, "label", KINDS, required=True)
    # CSV has no nulls (an empty cell means no pair) and JSON ids may be numbers.
    pair_id = record.get("pair_id")
    pair_id = None if pair_id is None else (str(pair_id).strip() or None)
    # A CSV with a messages column has empty cells in the prompt/response rows.
    if kind == RETAIN and record.get("messages"):
        messages = messages_field(record, location)
        return (Example(kind=RETAIN, messages=messages, source=str(location), pair_id=pair_id),)
    prompt = text_field(record, location, "prompt")
    response = text_field(record, location, "response")
    if kind == RETAIN:
        messages = ({"role": "user", "content": prompt}, {"role": "assistant", "content": response})
        return (Example(kind=RETAIN, messages=messages, source=str(location), pair_id=pair_id),)
    return (_single_turn(kind, prompt, response, location, pair_id),)


def read_generic(path: str | Path) -> Iterator[Example]:
    """Our own layout: ``prompt``, ``response``, ``label`` (a kind), optional
    ``pair_id``; retain rows may give ``messages`` instead of prompt/response."""
    return _convert(path, _generic_row)


def detect_layout(record: dict) -> str | None:
    """The layout a record's keys point to, or None."""
    if "label" in record:
        return "generic"
    if "prompt_harm_label" in record:
        return "wildguardmix"
    if {"data_type", "harmful_answer", "harmless_answer"} & record.keys():
        return "wildjailbreak"
    if "messages" in record:
        return "ultrachat"
    return None


def read_auto(path: str | Path) -> Iterator[Example]:
    """Read ``path`` with the layout its first record's keys point to."""
    with closing(read_records(path)) as records:
        first = next(records, None)
    if first is None:
        return
    location, record = first
    layout = detect_layout(record)
    if layout is None:
        named = ", ".join(name for name in LAYOUTS if name != "auto")
        raise DataError(
            f"cannot tell the layout from the keys {sorted(record)}; set the source's "
            f"layout to one of {named}",
            file=location.file,
            line=location.line,
        )
    yield from LAYOUTS[layout](path)


LAYOUTS: dict[str, Callable[[str | Path], Iterator[Example]]] = {
    "auto": read_auto,
    "generic": read_generic,
    "wildguardmix": read_wildguardmix,
    "wildjailbreak": read_wildjailbreak,
    "ultrachat": read_ultrachat,
}


def read_source(source: SourceConfig) -> list[Example]:
    """All examples of one configured source, restricted to ``source.kinds`` if given."""
    reader = LAYOUTS.get(source.layout)
    if reader is None:
        raise DataError(
            f"unknown layout {source.layout!r}; valid layouts: {', '.join(LAYOUTS)}",
            file=source.path,
        )
    unknown = [kind for kind in source.kinds if kind not in KINDS]
    if unknown:
        raise DataError(
            f"unknown kinds {unknown}; valid kinds: {', '.join(KINDS)}", file=source.path
        )
    examples = list(reader(source.path))
    if source.kinds:
        examples = [example for example in examples if example.kind in source.kinds]
    return examples
