"""What `repbend tune` reports: the study's result, front.md and front.json in the study
folder, and the one-screen summary."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ...atomic import write_text
from ..run import summary_lines as run_summary
from .split import TuneSplit
from .trials import DIRECTIONS, OBJECTIVES, TrialRow, signed


@dataclass
class TuneResult:
    folder: Path
    storage: str
    counts: dict  # trial states
    base: dict
    front: list  # of TrialRow
    best: Optional[TrialRow]
    best_feasible: bool
    best_config: Optional[Path]
    final: Any = None  # repbend.commands.run.RunResult of best.yaml


def _pct(value) -> str:
    return f"{100 * value:.1f}" if value is not None else "-"


def _params_text(params: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def write_front(result: TuneResult, rows: list, split: TuneSplit) -> None:
    """front.json and front.md in the study folder."""
    folder, base = result.folder, result.base
    final = result.final.results.summary if result.final is not None else None
    write_text(folder / "front.json", json.dumps({
        "objectives": dict(zip(OBJECTIVES, DIRECTIONS)), "storage": result.storage, "counts": result.counts,
        "split": split.counts, "base": base, "front": [row.to_json() for row in result.front],
        "trials": [row.to_json() for row in rows], "best": result.best.to_json() if result.best else None,
        "best_feasible": result.best_feasible, "best_config": str(result.best_config) if result.best_config else None,
        "final": {model: found.to_json() for model, found in final.items()} if final is not None else None},
        indent=2))
    header = "| trial | harmful compliance % | helpful % | over-refusal compliance % | harmful degenerate % | benign degenerate % | feasible | values |"
    rule = "|---" * 8 + "|"

    def line(row: TrialRow) -> str:
        s = row.scores
        return (f"| {row.number} | {_pct(s['harmful_compliance'])} | {_pct(s['helpful'])} | {_pct(s['overrefusal'])} "
                f"| {_pct(s['harmful_degenerate'])} | {_pct(s['benign_degenerate'])} | {'yes' if row.feasible else 'no'} "
                f"| {_params_text(row.params)} |")

    lines = ["# Tuning study", "",
             "Trials: " + ", ".join(f"{k} {v}" for k, v in result.counts.items()) + f". Storage `{result.storage}`.",
             "Tuning sets (samples of the dev split; the test split is not read): "
             + ", ".join(f"{k} {v}" for k, v in split.counts.items()) + ".", "",
             f"Base model on the tuning split: harmful compliance {_pct(base['harmful_compliance'])} %, helpful "
             f"{_pct(base['helpful'])} %, over-refusal compliance {_pct(base['overrefusal'])} %, benign degenerate "
             f"{_pct(base['benign_degenerate'])} %.", "",
             "## Pareto front", "", "![front](front.png)", "", header, rule,
             *[line(row) for row in sorted(result.front, key=signed)], ""]
    if result.best is not None:
        kind = "meets every bound" if result.best_feasible else "meets no bound set: the least infeasible point"
        lines += ["## Best point", "", f"Trial {result.best.number} ({kind}): {_params_text(result.best.params)}. "
                  f"Config: [best.yaml](best.yaml).", ""]
    if final is not None:
        lines += ["## Final evaluation of best.yaml on the test split", "",
                  "| model | mean ASR % | mean benign compliance % | harmful degenerate % | benign degenerate % |",
                  "|---|---|---|---|---|",
                  *[f"| {m} | {_pct(v.mean_asr)} | {_pct(v.mean_compliance)} | "
                    f"{_pct(v.degenerate_harmful)} | {_pct(v.degenerate_benign)} |" for m, v in final.items()],
                  "", "Full report: [final/report.md](final/report.md).", ""]
    lines += ["## All trials", "", "| trial | state | harmful compliance % | helpful % | over-refusal % | minutes | note |",
              "|---|---|---|---|---|---|---|"]
    for row in rows:
        s = row.scores or {}
        cut = "cut off or failed (run again in its folder by the next invocation): " if row.state == "FAIL" else ""
        note = row.pruned or cut + _params_text(row.params)
        minutes = f"{row.seconds / 60:.1f}" if row.seconds else "-"
        lines.append(f"| {row.number} | {row.state.lower()} | {_pct(s.get('harmful_compliance'))} | "
                     f"{_pct(s.get('helpful'))} | {_pct(s.get('overrefusal'))} | {minutes} | {note} |")
    write_text(folder / "front.md", "\n".join(lines) + "\n")


def summary_lines(result: TuneResult) -> list:
    """The one-screen summary printed at the end of `repbend tune`."""
    base = result.base
    lines = [f"study:   {', '.join(f'{k} {v}' for k, v in result.counts.items())} ({result.storage})",
             f"front:   {result.folder / 'front.md'} ({len(result.front)} points), {result.folder / 'front.png'}",
             f"base:    harmful {_pct(base['harmful_compliance'])} %, helpful {_pct(base['helpful'])} %, "
             f"over-refusal {_pct(base['overrefusal'])} % (tuning split)"]
    best = result.best
    if best is None:
        return lines + ["best:    no trial completed"]
    s = best.scores
    lines += [f"best:    trial {best.number}{'' if result.best_feasible else ' (misses the bounds: none met them)'}: "
              f"{_params_text(best.params)}",
              f"         harmful {_pct(s['harmful_compliance'])} %, helpful {_pct(s['helpful'])} %, over-refusal "
              f"{_pct(s['overrefusal'])} %, benign degenerate {_pct(s['benign_degenerate'])} % (tuning split)",
              f"config:  {result.best_config}"]
    if result.final is not None:
        lines += ["", "final evaluation of best.yaml (test split):", *run_summary(result.final)]
    return lines
