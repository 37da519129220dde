"""``repbend tune``: a multi-objective Optuna search over training settings.

Each trial applies the sampled values (``tune.space``: dotted config keys) to CONFIG, trains
with the core trainer on the built training data, and is evaluated by the evaluation path
on seeded samples of the build's *dev* split (harmful, benign and everyday, over-refusal
prompts). The test split is read only by the final evaluation, so its numbers are not
tuned ones.

Objectives: harmful compliance (minimised), benign helpfulness and over-refusal compliance
(maximised). Degenerate shares are recorded, and with the helpfulness and over-refusal
ratios to the base model they are Optuna constraints (``trial.set_constraint``): the
sampler prefers feasible points, and the best point is the feasible one with the lowest
harmful compliance (the least infeasible one when none is feasible, flagged as such).

Pruning: Optuna's ``trial.report``/``should_prune`` do not support multi-objective
studies, so a trial raises ``optuna.TrialPruned`` itself when the trainer's divergence
guard stops it, or when its benign answers at ``tune.intermediate_check_step`` are more
often degenerate than ``tune.max_benign_degenerate`` (training then resumes from that
step's checkpoint).

Resume: the study lives in SQLite (``OUTPUT_DIR/tune/study.db``); running the same command
again runs only the trials still missing from ``tune.trials`` (complete or pruned ones
count). A trial cut off by an interruption is run again with its own values in its own
folder, so its training resumes from its last checkpoint. One ``repbend tune`` process
per study: parallel trials are ``tune.n_jobs`` threads in that process.

Output in ``OUTPUT_DIR/tune``: ``front.md``/``front.json``/``front.png`` (Pareto front and
every trial), ``best.yaml`` (the best point as a ready ``repbend run`` config) and
``final/`` (``repbend run`` of ``best.yaml``: trained on all training data, evaluated on
the test split).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
import typing
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .atomic import write_text
from .cache import file_digest
from .checkpoint import PREFIX, list_checkpoints
from .config import (ALIASES, BenchmarkSpec, Config, SourceConfig, TuneConfig, all_keys, field_annotation,
                     from_dict, load_config, save_config, to_dict, unknown_key)
from .errors import ConfigError, TrainingDiverged
from .eval.benchmarks import load_benchmark, sample_rows
from .eval.results import EvalResults, JsonRecord
from .eval.stats import non_dominated

log = logging.getLogger(__name__)

# Keys a trial may change: training settings only (the data build, model and evaluation
# are fixed for a study, so every trial is scored on the same prompts).
TUNABLE_SECTIONS = ("lora", "data", "loss", "train")
TUNABLE = tuple(f"{section}." for section in TUNABLE_SECTIONS)
FIXED = ("data.sources",)
SPEC_KEYS = {"low", "high", "log", "step", "choices"}
OBJECTIVES = ("harmful_compliance", "helpful", "overrefusal")
DIRECTIONS = ("minimize", "maximize", "maximize")
HARMFUL_LABEL, BENIGN_LABEL, OVERREFUSAL_LABEL = "tune_harmful", "tune_benign", "tune_overrefusal"
MAX_ATTEMPTS = 3  # runs of one trial's values cut off by interruptions before it is given up


# --- the search space ---------------------------------------------------------------


@dataclass(frozen=True)
class Dimension:
    """One searched key: a numeric range or a list of choices."""

    key: str
    low: Any = None
    high: Any = None
    step: Any = None
    log: bool = False
    integer: bool = False
    choices: Optional[tuple] = None

    def labels(self) -> list:
        # Optuna's categorical values are scalars: lists (a layer band) travel as JSON text.
        return [c if c is None or isinstance(c, (bool, int, float, str)) else json.dumps(c) for c in self.choices]

    def label(self, value):
        """Optuna's parameter value for a config value."""
        return self.labels()[self.choices.index(value)] if self.choices is not None else value

    def value(self, label):
        """The config value for Optuna's parameter value."""
        return self.choices[self.labels().index(label)] if self.choices is not None else label

    def knows(self, label) -> bool:
        return self.choices is None or label in self.labels()

    def contains(self, value) -> bool:
        if self.choices is not None:
            return value in self.choices
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high

    def suggest(self, trial):
        if self.choices is not None:
            return self.value(trial.suggest_categorical(self.key, self.labels()))
        if self.integer:
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)


def with_values(config: Config, values: dict) -> Config:
    """``config`` with dotted keys set to values, type-checked like a config file."""
    data = to_dict(config)
    for key, value in values.items():
        *sections, name = key.split(".")
        node = data
        for section in sections:
            node = node[section]
        node[name] = value
    return from_dict(data)


def _numeric_type(key: str):
    """int or float when the config field at ``key`` holds a number (None allowed), else None."""
    annotation = field_annotation(key)
    options = typing.get_args(annotation) or (annotation,)
    return float if float in options else int if int in options else None


def parse_space(space: dict, config: Config) -> list:
    """The dimensions of ``tune.space``; unknown or untunable keys and malformed specs are
    errors that name the key."""
    valid = all_keys(Config)
    dimensions = []
    for raw, spec in space.items():
        key = ALIASES.get(raw, raw)
        where = f"tune.space.{key}"
        if key not in valid:
            raise ConfigError("tune.space: " + unknown_key(key, valid + list(ALIASES)))
        if not key.startswith(TUNABLE) or key in FIXED:
            raise ConfigError(f"{where}: not tunable; a study searches lora., data. (but not data.sources), "
                              "loss. and train. keys")
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: expected {{low, high[, log | step]}} or {{choices: [...]}}, got {spec!r}")
        unknown = sorted(set(spec) - SPEC_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown spec key(s) {', '.join(unknown)}; use low, high, log, step or choices")
        if "choices" in spec:
            dimensions.append(_choices(key, spec, config))
        else:
            dimensions.append(_range(key, spec, config))
    return dimensions


def _choices(key: str, spec: dict, config: Config) -> Dimension:
    where = f"tune.space.{key}"
    choices = spec["choices"]
    if set(spec) != {"choices"} or not isinstance(choices, list) or not choices:
        raise ConfigError(f"{where}: choices must be a non-empty list, alone")
    for choice in choices:
        with_values(config, {key: choice})  # a wrong type fails here, naming the key
    dimension = Dimension(key, choices=tuple(choices))
    if len(set(map(str, dimension.labels()))) < len(choices):
        raise ConfigError(f"{where}: choices repeat")
    return dimension


def _range(key: str, spec: dict, config: Config) -> Dimension:
    where = f"tune.space.{key}"
    kind = _numeric_type(key)
    if kind is None:
        raise ConfigError(f"{where}: not a numeric setting; give {{choices: [...]}}")
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: a range needs low and high")
    numbers = {name: spec[name] for name in ("low", "high", "step") if spec.get(name) is not None}
    for name, value in numbers.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
            raise ConfigError(f"{where}: {name} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    low, high, step, use_log = spec["low"], spec["high"], spec.get("step"), bool(spec.get("log", False))
    if not low < high:
        raise ConfigError(f"{where}: low must be below high, got {low} and {high}")
    if step is not None and (step <= 0 or use_log):
        raise ConfigError(f"{where}: step must be positive and cannot go with log")
    if use_log and low <= 0:
        raise ConfigError(f"{where}: log needs low > 0")
    with_values(config, {key: kind(low)})
    return Dimension(key, kind(low), kind(high), kind(step) if step is not None else None, use_log, kind is int)


def check_tune(tune: TuneConfig) -> None:
    """Settings a study cannot run with."""
    for name in ("trials", "n_jobs", "startup_trials", "harmful_prompts", "benign_prompts", "overrefusal_prompts",
                 "max_new_tokens"):
        if getattr(tune, name) < 1:
            raise ConfigError(f"tune.{name} must be at least 1, got {getattr(tune, name)}")
    if tune.sampler not in ("tpe", "nsga2"):
        raise ConfigError(f"tune.sampler: {tune.sampler!r} is not one of tpe, nsga2")
    if not tune.space:
        raise ConfigError("tune.space is empty: name at least one key to search")
    for name in ("min_helpful_ratio", "min_overrefusal_ratio", "max_benign_degenerate", "max_harmful_degenerate"):
        value = getattr(tune, name)
        if value is not None and not 0 <= value <= 1:
            raise ConfigError(f"tune.{name} must be in [0, 1] or null, got {value}")
    if tune.intermediate_check_step is not None:
        if tune.intermediate_check_step < 1:
            raise ConfigError(f"tune.intermediate_check_step must be at least 1, got {tune.intermediate_check_step}")
        if tune.max_benign_degenerate is None:
            raise ConfigError("tune.intermediate_check_step needs tune.max_benign_degenerate (its bound)")


def enqueued_points(tune: TuneConfig, dimensions: list) -> list:
    """``tune.enqueue`` as Optuna parameters, each value checked against its dimension."""
    by_key = {d.key: d for d in dimensions}
    points = []
    for index, point in enumerate(tune.enqueue):
        if not isinstance(point, dict):
            raise ConfigError(f"tune.enqueue[{index}]: expected a mapping of space keys to values, got {point!r}")
        params = {}
        for raw, value in point.items():
            key = ALIASES.get(raw, raw)
            if key not in by_key:
                raise ConfigError(f"tune.enqueue[{index}]: {key!r} is not in tune.space")
            if not by_key[key].contains(value):
                raise ConfigError(f"tune.enqueue[{index}]: {key}={value!r} lies outside tune.space.{key}")
            params[key] = by_key[key].label(value)
        points.append(params)
    return points


# --- the tuning split ---------------------------------------------------------------


@dataclass
class TuneSplit:
    files: dict  # label (and "train") -> path
    counts: dict
    digest: str


def _dev_sample(data_dir: Path, names: tuple, n: int, seed: int, what: str) -> list:
    """``n`` seeded rows of the build's dev files ``dev_<name>.jsonl``."""
    from .data.packaged import split_file

    rows = [row for name in names for row in load_benchmark("generic", data_dir / split_file("dev", name))]
    if n > len(rows):
        raise ConfigError(f"tune.{what}_prompts={n}, but the build's dev split holds {len(rows)} such prompts "
                          f"({', '.join(split_file('dev', name) for name in names)})")
    return sample_rows(rows, n, seed)


def dev_split(config: Config, data_dir: Path, folder: Path) -> TuneSplit:
    """Write the tuning sets to ``folder``: seeded samples of the build's dev split (harmful,
    benign and everyday, over-refusal prompts). Trials train on the whole training file;
    the test split is never read."""
    from .data.packaged import TRAIN_FILE, eval_record

    t = config.tune
    sets = {
        HARMFUL_LABEL: _dev_sample(data_dir, ("harmful",), t.harmful_prompts, t.seed, "harmful"),
        BENIGN_LABEL: _dev_sample(data_dir, ("benign", "everyday"), t.benign_prompts, t.seed, "benign"),
        OVERREFUSAL_LABEL: _dev_sample(data_dir, ("over_refusal",), t.overrefusal_prompts, t.seed, "overrefusal"),
    }
    texts = {label: "".join(json.dumps(eval_record(row), ensure_ascii=False) + "\n" for row in rows)
             for label, rows in sets.items()}
    files = {label: write_text(folder / f"{label}.jsonl", text) for label, text in texts.items()}
    files["train"] = data_dir / TRAIN_FILE
    counts = {label: len(rows) for label, rows in sets.items()}
    digest = hashlib.sha256(json.dumps({**texts, "train": file_digest(files["train"])}, sort_keys=True)
                            .encode()).hexdigest()[:16]
    return TuneSplit(files, counts, digest)


# --- trials -------------------------------------------------------------------------


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

        from .eval.run import evaluate, label_of

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

        from .eval.run import evaluate, label_of
        from .training import train

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
        train(config, resume=_reached(out) > 0, progress=self.progress)


# --- the study ----------------------------------------------------------------------


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
    final: Any = None  # pipeline.RunResult of best.yaml


def _sampler(tune: TuneConfig):
    import optuna

    if tune.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=tune.seed, population_size=max(2, tune.startup_trials))
    return optuna.samplers.TPESampler(seed=tune.seed, n_startup_trials=tune.startup_trials)


def _setup_digest(config: Config, split: TuneSplit, dimensions: list) -> str:
    """What trials' scores depend on besides their own values: the split, the settings
    they do not search, and how they are evaluated."""
    data = to_dict(config)
    searched = {d.key for d in dimensions}
    fixed = {s: {k: v for k, v in data[s].items() if f"{s}.{k}" not in searched} for s in TUNABLE_SECTIONS}
    blob = {"split": split.digest, "fixed": fixed, "model": data["model"],
            "eval": {k: data["eval"][k] for k in ("judge", "judge_options", "attack_options", "seed", "batch_size")},
            "tune": {k: data["tune"][k] for k in ("harmful_attacks", "max_new_tokens")}}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _retry_cut_off(study) -> None:
    """Trials left running by a killed process, or failed (an interruption, an error), are
    enqueued again with their values and folder, up to :data:`MAX_ATTEMPTS` runs each."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)  # one process per study: nobody runs it now
    attempts = defaultdict(list)
    for trial in study.get_trials(deepcopy=False):
        attempts[trial.user_attrs.get("run", trial.number)].append(trial)
    for run, tried in sorted(attempts.items()):
        if all(t.state == TrialState.FAIL for t in tried) and len(tried) < MAX_ATTEMPTS:
            log.info("trial %d was cut off; running it again", run)
            study.enqueue_trial(tried[-1].params, user_attrs={"run": run})


def tune(config: Config, progress: bool = True) -> TuneResult:
    import optuna
    from optuna.trial import TrialState

    from .data.packaged import build_data
    from .eval.run import evaluate
    from .pipeline import run, with_built_data
    from .plots import tuning_front

    t = config.tune
    check_tune(t)
    dimensions = parse_space(t.space, config)
    points = enqueued_points(t, dimensions)
    if t.intermediate_check_step and (config.train.scheduler != "constant" or "train.scheduler" in t.space):
        # The check trains a run of intermediate_check_step steps first, which would squeeze a decaying schedule.
        raise ConfigError("tune.intermediate_check_step needs train.scheduler=constant, not searched")
    folder = Path(config.output_dir) / "tune"
    folder.mkdir(parents=True, exist_ok=True)
    if not progress:
        optuna.logging.set_verbosity(optuna.logging.WARNING)

    built = build_data(config, progress=progress)
    base_config = with_built_data(config, built.output_dir)
    split = dev_split(base_config, built.output_dir, folder)
    storage = t.storage or f"sqlite:///{(folder / 'study.db').resolve()}"
    study = optuna.create_study(storage=storage, study_name=t.study_name, directions=list(DIRECTIONS),
                                sampler=_sampler(t), load_if_exists=True)
    setup = _setup_digest(base_config, split, dimensions)
    if study.user_attrs.get("setup", setup) != setup:
        raise ConfigError(f"study {t.study_name!r} in {storage} was run with another tuning split or other fixed "
                          "settings; choose another tune.study_name or output_dir")
    study.set_user_attr("setup", setup)
    base = study.user_attrs.get("base")
    if base is None:  # the base model's figures on the tuning split, once per study
        result = evaluate(tune_eval(base_config, split, folder / "base", []), progress)
        base = scores_of(result.results, "base")
        study.set_user_attr("base", base)

    for params in points:
        study.enqueue_trial(params, skip_if_exists=True)
    _retry_cut_off(study)
    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    if done < t.trials:
        objective = Objective(base_config, dimensions, split, folder, base, progress and t.n_jobs == 1)
        study.optimize(objective, n_trials=t.trials - done, n_jobs=t.n_jobs, gc_after_trial=True,
                       timeout=t.timeout_minutes * 60 if t.timeout_minutes is not None else None)

    rows = [trial_row(trial, dimensions, t, base) for trial in study.get_trials(deepcopy=False)]
    complete = [row for row in rows if row.state == "COMPLETE"]
    front = pareto_front(complete)
    best, feasible = choose_best(complete)
    best_path = None
    if best is not None:
        chosen = with_values(config, best.params)
        chosen = dataclasses.replace(chosen, output_dir=str(folder / "final"),
                                     build=dataclasses.replace(chosen.build, output_dir=str(built.output_dir)))
        best_path = folder / "best.yaml"
        save_config(chosen, best_path)
    counts = {state.name.lower(): sum(row.state == state.name for row in rows) for state in TrialState}
    result = TuneResult(folder, storage, {k: v for k, v in counts.items() if v}, base, front, best, feasible, best_path)
    write_front(result, rows, split)
    tuning_front(rows, {row.number for row in front}, base, best, folder / "front.png")
    if best_path is not None and t.final:
        result.final = run(load_config(best_path), progress=progress)
        write_front(result, rows, split)
    return result


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


def _signed(row: TrialRow) -> list:
    """Objectives as quantities to minimise."""
    return [value if direction == "minimize" else -value
            for value, direction in zip((row.scores[name] for name in OBJECTIVES), DIRECTIONS)]


def pareto_front(rows: list) -> list:
    """The rows no other row dominates (at least as good everywhere, better somewhere)."""
    return [rows[i] for i in non_dominated([_signed(row) for row in rows])]


def choose_best(rows: list) -> tuple:
    """(best row, whether it meets every bound): the feasible row with the lowest harmful
    compliance (ties: more helpful, then more over-refusal compliance); without a feasible
    row, the one that misses the bounds by the least."""
    feasible = [row for row in rows if row.feasible]
    if feasible:
        return min(feasible, key=_signed), True
    if not rows:
        return None, False
    return min(rows, key=lambda row: (sum(max(0.0, v) for v in row.violations.values()), _signed(row))), False


# --- reports ------------------------------------------------------------------------


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
             *[line(row) for row in sorted(result.front, key=_signed)], ""]
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
    from .pipeline import summary_lines as run_summary

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
