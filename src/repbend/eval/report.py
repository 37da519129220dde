"""Markdown tables from ``results.json``: models side by side, deltas against the first.

``repbend report RUN_DIR ...`` renders them again from saved runs (several runs are
merged, so models evaluated separately can be compared in one table).
"""
from __future__ import annotations

from pathlib import Path

from ..atomic import write_text
from ..errors import ConfigError
from .results import EvalResults
from ..types import HARMFUL

# The summary table's rows: label, figure, scale (rates are fractions; overall is percent).
SUMMARY_ROWS = (
    ("mean ASR", lambda s: s.mean_asr, 100),
    ("degenerate (harmful prompts)", lambda s: s.degenerate_harmful, 100),
    ("degenerate (harmful prompts, non-compliant)", lambda s: s.degenerate_noncompliant_harmful, 100),
    ("benign compliance", lambda s: s.mean_compliance, 100),
    ("degenerate (benign prompts)", lambda s: s.degenerate_benign, 100),
    ("degenerate (benign prompts, non-compliant)", lambda s: s.degenerate_noncompliant_benign, 100),
    ("capability", lambda s: s.capability, 100),
    ("overall score", lambda s: s.overall, 1),
)


def percent(rate) -> str:
    """``rate`` (a :class:`~.results.Rate` or :class:`~.results.CapabilityScore`, or a
    dict with value, low and high, as compare.json holds them) in percent, with its
    interval where it has one."""
    if isinstance(rate, dict):
        value, low, high = rate.get("value"), rate.get("low"), rate.get("high")
    else:
        value, low, high = (rate.value, rate.low, rate.high) if rate else (None, None, None)
    if value is None:
        return "-"
    text = f"{100 * value:.1f}"
    if low is not None:
        text += f" [{100 * low:.1f}, {100 * high:.1f}]"
    return text


def delta(value, reference) -> str:
    if value is None or reference is None:
        return "-"
    return f"{100 * (value - reference):+.1f}"


def _value(rate):
    return rate.value if rate else None


def render_markdown(results: EvalResults) -> str:
    models = list(results.models)
    reference = models[0]
    groups = sorted({(e.benchmark, e.attack, e.expected) for e in results.metrics},
                    key=lambda g: (g[2] != HARMFUL, g[0], g[1]))
    lines = [f"Judge: `{results.judge}`. Rates in % with 95 % bootstrap intervals; Δ against `{reference}`. "
             "ASR counts every compliant answer, looping or not; degenerate: share of all answers; degenerate "
             "(non-compliant): share of the answers that ASR or compliance does not count.", ""]

    header = "| benchmark | attack | metric | n | " + " | ".join(models) + "".join(f" | Δ {m}" for m in models[1:]) + " |"
    lines += [header, "|" + "---|" * (4 + 2 * len(models) - 1)]
    for benchmark, attack, expected in groups:
        entries = [results.entry(model, benchmark, attack, expected) for model in models]
        n = next((entry.n for entry in entries if entry), 0)
        for label, pick in (("ASR" if expected == HARMFUL else "compliance", lambda e: e.main),
                            ("degenerate", lambda e: e.degenerate),
                            ("degenerate (non-compliant)", lambda e: e.degenerate_noncompliant)):
            rates = [pick(entry) if entry else None for entry in entries]
            cells = [percent(rate) for rate in rates]
            deltas = [delta(_value(rate), _value(rates[0])) for rate in rates[1:]]
            lines.append(f"| {benchmark} | {attack} | {label} | {n} | " + " | ".join(cells + deltas) + " |")

    tasks = results.capability_tasks()
    if tasks:
        lines += ["", "| capability task | metric | " + " | ".join(models) + " |", "|" + "---|" * (2 + len(models))]
        for task in tasks:
            scores = [results.capability_score(model, task) for model in models]
            metric = next((s.metric for s in scores if s), "")
            cells = [percent(s) for s in scores]
            lines.append(f"| {task} | {metric} | " + " | ".join(cells) + " |")

    lines += ["", "| summary | " + " | ".join(models) + " |", "|" + "---|" * (1 + len(models))]
    for label, pick, scale in SUMMARY_ROWS:
        values = [pick(results.summary[model]) if model in results.summary else None for model in models]
        cells = ["-" if value is None else f"{scale * value:.1f}" for value in values]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(results: EvalResults, path: Path) -> None:
    write_text(path, render_markdown(results))


def load_results(run_dirs: list) -> EvalResults:
    """Merge the results.json of several runs: models side by side (later runs win on a
    name clash), one judge required. The merged results carry no config or versions."""
    merged = None
    for run in run_dirs:
        path = Path(run)
        path = path / "results.json" if path.is_dir() else path
        if not path.is_file():
            raise ConfigError(f"{run}: no results.json there (run `repbend eval` first)")
        results = EvalResults.load(path)
        if merged is None:
            merged = EvalResults(models={}, judge=results.judge, metrics=[])
        if merged.judge != results.judge:
            raise ConfigError(f"{path}: judged by {results.judge}, the others by {merged.judge}; tables would not compare")
        names = set(results.models)
        merged.metrics = [m for m in merged.metrics if m.model not in names] + results.metrics
        merged.models.update(results.models)
        merged.capability.update(results.capability)
        merged.summary.update(results.summary)
    if merged is None:
        raise ConfigError("no results to load: name at least one evaluation folder")
    return merged
