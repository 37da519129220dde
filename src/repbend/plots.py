"""PNG plots for reports: training curves and rates per attack (matplotlib, no display)."""
from __future__ import annotations

from pathlib import Path

from .eval.results import EvalResults, RelearnResults
from .files import read_jsonl
from .types import HARMFUL


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: CI and servers have no display
    import matplotlib.pyplot as plt

    return plt


def training_curves(metrics_path: Path, png: Path) -> Path:
    """One panel per logged loss term (and the total) over optimizer steps."""
    rows = read_jsonl(metrics_path)
    skip = {"step", "grad_norm", "lr", "tokens", "processed_tokens", "tokens_per_s", "seconds"}
    terms = [key for key in rows[0] if key not in skip] if rows else []
    plt = _pyplot()
    columns = min(3, max(1, len(terms)))
    lines = (len(terms) + columns - 1) // columns or 1
    figure, axes = plt.subplots(lines, columns, figsize=(4 * columns, 2.8 * lines), squeeze=False)
    steps = [row["step"] for row in rows]
    for axis, term in zip(axes.flat, terms):
        axis.plot(steps, [row.get(term) for row in rows], marker=".")
        axis.set_title(term)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(terms):]:
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(png, dpi=110)
    plt.close(figure)
    return png


def rates_by_attack(results: EvalResults, png: Path, expected: str = HARMFUL) -> Path:
    """Grouped bars of the rows expecting ``expected`` (ASR of harmful rows, compliance of
    benign ones): one group per (benchmark, attack), one bar per model, with the 95 %
    interval as error bars."""
    models = list(results.models)
    groups = results.pairs(expected)
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(max(5, 1.6 * len(groups) * max(1, len(models)) / 2), 3.6))
    width = 0.8 / max(1, len(models))
    for index, model in enumerate(models):
        values, lows, highs = [], [], []
        for group in groups:
            entry = results.entry(model, *group, expected)
            rate = entry.main if entry else None
            value = (rate.value if rate else None) or 0.0
            values.append(100 * value)
            lows.append(100 * (value - (rate.low if rate and rate.low is not None else value)))
            highs.append(100 * ((rate.high if rate and rate.high is not None else value) - value))
        positions = [g + index * width for g in range(len(groups))]
        axis.bar(positions, values, width, yerr=[lows, highs], capsize=3, label=model)
    axis.set_xticks([g + width * (len(models) - 1) / 2 for g in range(len(groups))])
    axis.set_xticklabels([f"{b}\n{a}" for b, a in groups], fontsize=8)
    axis.set_ylabel("ASR (%)" if expected == HARMFUL else "compliance (%)")
    axis.set_ylim(0, 100)
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(png, dpi=110)
    plt.close(figure)
    return png


def tuning_front(rows: list, front: set, base: dict, best, png: Path) -> Path:
    """A tuning study's completed trials (:class:`repbend.commands.tune.trials.TrialRow`): harmful
    compliance against helpfulness, coloured by over-refusal compliance; the Pareto front
    joined and ringed, the base model a star, the best point (a row or None) a square,
    points that miss the bounds drawn as crosses."""
    done = [row for row in rows if row.scores]
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4.4))
    colours = dict(cmap="viridis", vmin=0, vmax=100)
    scatter = None
    for feasible, marker in ((True, "o"), (False, "X")):
        points = [row for row in done if row.feasible == feasible]
        if points:
            scatter = axis.scatter([100 * r.scores["harmful_compliance"] for r in points],
                                   [100 * r.scores["helpful"] for r in points],
                                   c=[100 * r.scores["overrefusal"] for r in points], marker=marker, s=55,
                                   edgecolors=["black" if r.number in front else "none" for r in points],
                                   label="meets the bounds" if feasible else "misses a bound", **colours)
    on_front = sorted((r for r in done if r.number in front), key=lambda r: r.scores["harmful_compliance"])
    if on_front:
        axis.plot([100 * r.scores["harmful_compliance"] for r in on_front],
                  [100 * r.scores["helpful"] for r in on_front], color="black", lw=0.8, alpha=0.6, label="Pareto front")
    for row in done:
        axis.annotate(str(row.number), (100 * row.scores["harmful_compliance"], 100 * row.scores["helpful"]),
                      fontsize=7, xytext=(4, 3), textcoords="offset points")
    axis.scatter([100 * base["harmful_compliance"]], [100 * base["helpful"]], c=[100 * base["overrefusal"]],
                 marker="*", s=180, edgecolors="black", label="base model", **colours)
    if best is not None:
        axis.scatter([100 * best.scores["harmful_compliance"]], [100 * best.scores["helpful"]], marker="s",
                     s=160, facecolors="none", edgecolors="red", label="best point")
    if scatter is not None:
        figure.colorbar(scatter, ax=axis, label="over-refusal compliance (%)")
    axis.set_xlabel("harmful compliance (%), lower is safer")
    axis.set_ylabel("benign helpfulness (%)")
    axis.set_xlim(-3, 103)
    axis.set_ylim(-3, 103)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="best")
    figure.tight_layout()
    figure.savefig(png, dpi=110)
    plt.close(figure)
    return png


def relearn_curves(result: RelearnResults, png: Path) -> Path:
    """ASR against the re-learning attack's optimizer steps, one line per model, its 95 %
    interval as a band: how long each model's refusals hold."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.5, 4.2))
    for model, points in result.curves.items():
        shown = [p for p in points if p.asr is not None]
        steps = [p.steps for p in shown]
        line, = axis.plot(steps, [100 * p.asr for p in shown], marker="o", label=model)
        axis.fill_between(steps, [100 * (p.low if p.low is not None else p.asr) for p in shown],
                          [100 * (p.high if p.high is not None else p.asr) for p in shown],
                          color=line.get_color(), alpha=0.12)
    axis.set_xticks(result.settings.get("steps") or [])
    axis.set_xlabel(f"re-learning steps ({result.settings.get('rows')} harmful answers)")
    axis.set_ylabel(f"ASR (%): {result.benchmark} / {result.attack}")
    axis.set_ylim(-3, 103)  # 0 and 100 % stay visible
    axis.grid(alpha=0.3)
    if result.curves:
        axis.legend(fontsize=7, loc="best")
    figure.tight_layout()
    figure.savefig(png, dpi=110)
    plt.close(figure)
    return png
