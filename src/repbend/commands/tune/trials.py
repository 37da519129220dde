"""One trial of `repbend tune`: sampled values -> train (with the intermediate check) ->
evaluate on the tuning split, its scores and constraints, and the rows front.json lists."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ...checkpoint import PREFIX, list_checkpoints
from ...config import BenchmarkSpec, Config, SourceConfig, TuneConfig
from ...errors import TrainingDiverged
from ...eval.results import EvalResults, JsonRecord
from ...eval.stats import non_dominated
from ...training import train
from ..evaluate import evaluate, label_of
from .space import with_values
from .split import BENIGN_LABEL, HARMFUL_LABEL, OVERREFUSAL_LABEL, TuneSplit

OBJECTIVES = ("harmful_compliance", "helpful", "overrefusal")
DIRECTIONS = ("minimize", "maximize", "maximize")


def tune_eval(config: Config, split: TuneSplit, output_dir: Path, adapters: list, labels=None) -> Config:
    """``config`` evaluating ``adapters`` (the base model when empty) on the tuning split:
    few new tokens, no capability tasks."""
    t = config.tune
    attacks = {HARMFUL_LABEL: list(t.harmful_attacks), BENIGN_LABEL: ["direct"], OVERREFUSAL_LABEL: ["direct"]}
    benchmarks = [BenchmarkSpec(name="generic", label=label, path=str(split.files[label]), attacks=attacks[label])
                  for label in labels or attacks]
    return dataclasses.replace(config, eval=dataclasses.replace(
        config.eval, benchmarks=benchmarks, adapters=[str(a) for a in adapters], include_base=not adapters,
        capability_tasks=[], max_new_tokens=t.max_new_tokens, output_dir=str(output_dir)))


def scores_of(results: EvalResults, model: str) -> dict:
    """The tuning figures of one model in an evaluation's results (fractions)."""
    entries = [e for e in results.metrics if e.model == model]

    def mean(label: str, pick) -> Optional[float]:
        rates = [pick(e) for e in entries if e.benchmark == label]
        values = [rate.value for rate in rates if rate is not None and rate.value is not None]
        return sum(values) / len(values) if values else None

    return {
        "harmful_compliance": mean(HARMFUL_LABEL, lambda e: e.asr),
        "harmful_degenerate": mean(HARMFUL_LABEL, lambda e: e.degenerate),
        "helpful": mean(BENIGN_LABEL, lambda e: e.compliance),
        "benign_degenerate": mean(BENIGN_LABEL, lambda e: e.degenerate),
        "benign_refused": mean(BENIGN_LABEL, lambda e: e.refused),
        "overrefusal": mean(OVERREFUSAL_LABEL, lambda e: e.compliance),
        "overrefusal_degenerate": mean(OVERREFUSAL_LABEL, lambda e: e.degenerate),
    }


def violations(tune: TuneConfig, scores: dict, base: dict) -> dict:
    """Constraint name -> value, feasible when <= 0 (Optuna's convention)."""
    found = {}
    if tune.min_helpful_ratio is not None:
        found["helpful_ratio"] = tune.min_helpful_ratio * base["helpful"] - scores["helpful"]
    if tune.min_overrefusal_ratio is not None:
        found["overrefusal_ratio"] = tune.min_overrefusal_ratio * base["overrefusal"] - scores["overrefusal"]
    if tune.max_benign_degenerate is not None:
        found["benign_degenerate"] = scores["benign_degenerate"] - tune.max_benign_degenerate
    if tune.max_harmful_degenerate is not None:
        found["harmful_degenerate"] = scores["harmful_degenerate"] - tune.max_harmful_degenerate
    return found


def _reached(run_dir: Path) -> int:
    """The step of the run's last checkpoint (0: none)."""
    found = list_checkpoints(run_dir / "checkpoints")
    return int(found[-1].name[len(PREFIX):]) if found else 0


class Objective:
    """One trial: sampled values -> train (with the intermediate check) -> evaluate."""

    def __init__(self, config: Config, dimensions: list, split: TuneSplit, folder: Path, base: dict, progress: bool):
        self.config, self.dimensions, self.split, self.folder = config, dimensions, split, folder
        self.base, self.progress = base, progress

    def __call__(self, trial):
        import optuna

        run = trial.user_attrs.get("run", trial.number)  # a rerun of a cut-off trial keeps its folder
        trial.set_user_attr("run", run)
        values = {d.key: d.suggest(trial) for d in self.dimensions}
        out = self.folder / f"trial-{run:03d}"
        config = with_values(self.config, values)
        config = dataclasses.replace(config, output_dir=str(out), data=dataclasses.replace(
            config.data, sources=[SourceConfig(path=str(self.split.files["train"]), layout="generic")]))
        started = time.time()
        try:
            self._train(trial, config)
        except TrainingDiverged as error:
            trial.set_user_attr("pruned", str(error))
            raise optuna.TrialPruned(str(error)) from None
        adapter = out / "adapter"
        result = evaluate(tune_eval(config, self.split, out / "eval", [adapter]), self.progress)
        scores = scores_of(result.results, label_of(adapter))
        trial.set_user_attr("scores", scores)
        trial.set_user_attr("seconds", round(time.time() - started, 1))
        for name, value in violations(config.tune, scores, self.base).items():
            trial.set_constraint(name, value)
        return tuple(scores[name] for name in OBJECTIVES)

    def _train(self, trial, config: Config) -> None:
        import optuna

        t, out = config.tune, Path(config.output_dir)
        check = t.intermediate_check_step
        if check and check < config.train.steps and _reached(out) <= check:
            if _reached(out) < check:
                short = dataclasses.replace(config, train=dataclasses.replace(config.train, steps=check))
                train(short, resume=_reached(out) > 0, progress=self.progress)
            result = evaluate(tune_eval(config, self.split, out / "check", [out / "adapter"], [BENIGN_LABEL]),
                              self.progress)
            share = scores_of(result.results, label_of(out / "adapter"))["benign_degenerate"]
            trial.set_user_attr("check", {"step": check, "benign_degenerate": share})
            if share > t.max_benign_degenerate:
                reason = (f"at step {check}, {share:.0%} of benign answers are degenerate "
                          f"(tune.max_benign_degenerate={t.max_benign_degenerate})")
                trial.set_user_attr("pruned", reason)
                raise optuna.TrialPruned(reason)
        # From the check's (or a cut-off run's) checkpoint; a finished run only re-saves its adapter.
        # The check's run saved fewer steps; the schedule is constant, so growing them is exact.
        train(config, resume=_reached(out) > 0, progress=self.progress,
              allow_changes=frozenset({"train.steps"}) if check else frozenset())


@dataclass(kw_only=True)
class TrialRow(JsonRecord):
    """One trial of a study, as front.json lists it: its number and ``run`` (the first
    trial of these values: a rerun of a cut-off trial keeps its folder), Optuna's state,
    the config values, the tuning figures (:func:`scores_of`; None until it completes),
    the constraint values (:func:`violations`) and whether it meets them all, why it was
    pruned, the intermediate check and how long it took."""

    number: int
    run: int
    state: str
    params: dict
    scores: Optional[dict]
    violations: dict
    feasible: bool
    pruned: Optional[str] = None
    check: Optional[dict] = None
    seconds: Optional[float] = None


def trial_row(trial, dimensions: list, tune: TuneConfig, base: dict) -> TrialRow:
    by_key = {d.key: d for d in dimensions}
    # Values sampled under an earlier space that this one no longer lists stay as stored.
    params = {k: by_key[k].value(v) if k in by_key and by_key[k].knows(v) else v for k, v in trial.params.items()}
    scores = trial.user_attrs.get("scores")
    found = violations(tune, scores, base) if scores else {}
    return TrialRow(number=trial.number, run=trial.user_attrs.get("run", trial.number), state=trial.state.name,
                    params=params, scores=scores, violations=found,
                    feasible=bool(scores) and all(v <= 0 for v in found.values()),
                    pruned=trial.user_attrs.get("pruned"), check=trial.user_attrs.get("check"),
                    seconds=trial.user_attrs.get("seconds"))


def signed(row: TrialRow) -> list:
    """Objectives as quantities to minimise."""
    return [value if direction == "minimize" else -value
            for value, direction in zip((row.scores[name] for name in OBJECTIVES), DIRECTIONS)]


def pareto_front(rows: list) -> list:
    """The rows no other row dominates (at least as good everywhere, better somewhere)."""
    return [rows[i] for i in non_dominated([signed(row) for row in rows])]


def choose_best(rows: list) -> tuple:
    """(best row, whether it meets every bound): the feasible row with the lowest harmful
    compliance (ties: more helpful, then more over-refusal compliance); without a feasible
    row, the one that misses the bounds by the least."""
    feasible = [row for row in rows if row.feasible]
    if feasible:
        return min(feasible, key=signed), True
    if not rows:
        return None, False
    return min(rows, key=lambda row: (sum(max(0.0, v) for v in row.violations.values()), signed(row))), False
