"""Markdown tables from ``results.json``: models side by side, deltas against the first.

``repbend report RUN_DIR ...`` renders them again from saved runs (several runs are
merged, so models evaluated separately can be compared in one table).
"""
from __future__ import annotations

import json
from pathlib import Path

from ..atomic import write_text
from ..errors import ConfigError


def percent(rate: dict | None) -> str:
    if not rate or rate.get("value") is None:
        return "-"
    text = f"{100 * rate['value']:.1f}"
    if rate.get("low") is not None:
        text += f" [{100 * rate['low']:.1f}, {100 * rate['high']:.1f}]"
    return text


def delta(value, reference) -> str:
    if value is None or reference is None:
        return "-"
    return f"{100 * (value - reference):+.1f}"


def _value(entry: dict | None, key: str):
    return entry[key]["value"] if entry and entry.get(key) else None


def render_markdown(results: dict) -> str:
    models = list(results["models"])
    reference = models[0]
    by_key = {(m["benchmark"], m["attack"], m["expected"], m["model"]): m for m in results["metrics"]}
    groups = sorted({(b, a, x) for b, a, x, _ in by_key}, key=lambda g: (g[2] != "harmful", g[0], g[1]))
    lines = [f"Judge: `{results['judge']}`. Rates in % with 95 % bootstrap intervals; Δ against `{reference}`. "
             "ASR counts every compliant answer, looping or not; degenerate: share of all answers; degenerate "
             "(non-compliant): share of the answers that ASR or compliance does not count.", ""]

    header = "| benchmark | attack | metric | n | " + " | ".join(models) + "".join(f" | Δ {m}" for m in models[1:]) + " |"
    lines += [header, "|" + "---|" * (4 + 2 * len(models) - 1)]
    for benchmark, attack, expected in groups:
        entries = [by_key.get((benchmark, attack, expected, model)) for model in models]
        n = next((entry["n"] for entry in entries if entry), 0)
        main = "asr" if expected == "harmful" else "compliance"
        for key, label in ((main, "ASR" if main == "asr" else "compliance"), ("degenerate", "degenerate"),
                           ("degenerate_noncompliant", "degenerate (non-compliant)")):
            cells = [percent(entry.get(key) if entry else None) for entry in entries]
            deltas = [delta(_value(entry, key), _value(entries[0], key)) for entry in entries[1:]]
            lines.append(f"| {benchmark} | {attack} | {label} | {n} | " + " | ".join(cells + deltas) + " |")

    capability = results.get("capability") or {}
    tasks = sorted({task for scores in capability.values() for task in scores})
    if tasks:
        lines += ["", "| capability task | metric | " + " | ".join(models) + " |", "|" + "---|" * (2 + len(models))]
        for task in tasks:
            scores = [capability.get(model, {}).get(task) for model in models]
            metric = next((s["metric"] for s in scores if s), "")
            cells = [percent(s) if s else "-" for s in scores]
            lines.append(f"| {task} | {metric} | " + " | ".join(cells) + " |")

    summary = results.get("summary") or {}
    lines += ["", "| summary | " + " | ".join(models) + " |", "|" + "---|" * (1 + len(models))]
    for key, label in (("mean_asr", "mean ASR"), ("degenerate_harmful", "degenerate (harmful prompts)"),
                       ("degenerate_noncompliant_harmful", "degenerate (harmful prompts, non-compliant)"),
                       ("mean_compliance", "benign compliance"), ("degenerate_benign", "degenerate (benign prompts)"),
                       ("degenerate_noncompliant_benign", "degenerate (benign prompts, non-compliant)"),
                       ("capability", "capability"), ("overall", "overall score")):
        cells = []
        for model in models:
            value = summary.get(model, {}).get(key)
            cells.append("-" if value is None else f"{value:.1f}" if key == "overall" else f"{100 * value:.1f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(results: dict, path: Path) -> None:
    write_text(path, render_markdown(results))


def load_results(run_dirs: list) -> dict:
    """Merge the results.json of several runs: models side by side (later runs win on a
    name clash), one judge required."""
    merged: dict = {"models": {}, "metrics": [], "capability": {}, "summary": {}, "judge": None}
    for run in run_dirs:
        path = Path(run)
        path = path / "results.json" if path.is_dir() else path
        if not path.is_file():
            raise ConfigError(f"{run}: no results.json there (run `repbend eval` first)")
        results = json.loads(path.read_text())
        if merged["judge"] not in (None, results["judge"]):
            raise ConfigError(f"{path}: judged by {results['judge']}, the others by {merged['judge']}; tables would not compare")
        merged["judge"] = results["judge"]
        names = set(results["models"])
        merged["metrics"] = [m for m in merged["metrics"] if m["model"] not in names] + results["metrics"]
        for key in ("models", "capability", "summary"):
            merged[key].update(results.get(key) or {})
    return merged
