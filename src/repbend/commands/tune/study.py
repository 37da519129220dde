"""The study of `repbend tune`: the Optuna study in SQLite, resumed trial by trial, the
base model's figures, the Pareto front and the best point (best.yaml), then the final
`repbend run` of best.yaml."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections import defaultdict
from pathlib import Path

from ...config import Config, TuneConfig, load_config, save_config, to_dict
from ...errors import ConfigError
from ...plots import tuning_front
from ..data import build_data
from ..compare import TASK_ARITHMETIC, with_overlay
from ..evaluate import evaluate
from ..run import run, with_built_data
from .report import TuneResult, write_front
from .space import TUNABLE_SECTIONS, check_tune, enqueued_points, grid_points, parse_space, with_values
from .split import TuneSplit, dev_split
from .trials import DIRECTIONS, Objective, choose_best, pareto_front, scores_of, trial_row, tune_eval

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # runs of one trial's values cut off by interruptions before it is given up


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
    for number, tried in sorted(attempts.items()):
        if all(t.state == TrialState.FAIL for t in tried) and len(tried) < MAX_ATTEMPTS:
            log.info("trial %d was cut off; running it again", number)
            study.enqueue_trial(tried[-1].params, user_attrs={"run": number})


def method_study_config(config: Config, method: str) -> Config:
    """``tune.method``: the config with that method's `repbend compare` overlay (its launch
    settings scaled by the rule), in OUTPUT_DIR/<method>. Not compare.overrides: that is
    where the study's winner goes, and a study that read it would search around its own
    last result."""
    overlaid = with_overlay(dataclasses.replace(config, compare=dataclasses.replace(config.compare, overrides={})),
                            method)
    if overlaid.loss.method == TASK_ARITHMETIC:
        raise ConfigError(f"tune.method={method}: task arithmetic merges two trained runs, which a trial does not "
                          "do; search refusal_sft (its safe run) instead")
    return dataclasses.replace(overlaid, output_dir=str(Path(config.output_dir) / method))


def tune(config: Config, progress: bool = True) -> TuneResult:
    import optuna
    from optuna.trial import TrialState


    t = config.tune
    check_tune(t)
    if t.method is not None:
        config = method_study_config(config, t.method)
    dimensions = parse_space(t.space, config)
    points = enqueued_points(t, dimensions) + grid_points(t, dimensions)
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
