"""PNG plots for reports: training curves and rates per attack (matplotlib, no display)."""
from __future__ import annotations

import json
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: CI and servers have no display
    import matplotlib.pyplot as plt

    return plt


def training_curves(metrics_path: Path, png: Path) -> Path:
    """One panel per logged loss term (and the total) over optimizer steps."""
    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
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


def rates_by_attack(results: dict, png: Path, key: str = "asr") -> Path:
    """Grouped bars: one group per (benchmark, attack), one bar per model, with the
    95 % interval as error bars."""
    entries = [e for e in results["metrics"] if key in e]
    models = list(results["models"])
    groups = sorted({(e["benchmark"], e["attack"]) for e in entries})
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(max(5, 1.6 * len(groups) * max(1, len(models)) / 2), 3.6))
    width = 0.8 / max(1, len(models))
    by_key = {(e["model"], e["benchmark"], e["attack"]): e[key] for e in entries}
    for index, model in enumerate(models):
        values, lows, highs = [], [], []
        for group in groups:
            rate = by_key.get((model, *group)) or {}
            value = rate.get("value") or 0.0
            values.append(100 * value)
            lows.append(100 * (value - (rate.get("low") if rate.get("low") is not None else value)))
            highs.append(100 * ((rate.get("high") if rate.get("high") is not None else value) - value))
        positions = [g + index * width for g in range(len(groups))]
        axis.bar(positions, values, width, yerr=[lows, highs], capsize=3, label=model)
    axis.set_xticks([g + width * (len(models) - 1) / 2 for g in range(len(groups))])
    axis.set_xticklabels([f"{b}\n{a}" for b, a in groups], fontsize=8)
    axis.set_ylabel(f"{key.upper() if key == 'asr' else key} (%)")
    axis.set_ylim(0, 100)
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(png, dpi=110)
    plt.close(figure)
    return png
