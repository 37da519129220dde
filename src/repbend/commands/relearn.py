"""``repbend relearn``: the re-learning attack, how long a trained model's refusals hold.

Each model under test (the base model and each adapter or merged folder, as ``repbend
eval`` finds them) is the starting point of an attacker who fine-tunes it: a fresh LoRA on
every block of the model (an adapter merged into its base weights first), trained with
plain cross-entropy on ``relearn.rows`` harmful answers (P_uu rows) of the training data
(``sft_unsafe`` on the one training loop). ASR under ``relearn.attack`` on one benchmark of
``eval.benchmarks`` is read after each number of optimizer steps in ``relearn.steps``
(step 0: the model as trained). The run trains once: to the first point, where its adapter
is kept, then resumed to the next (a resumed run is the uninterrupted one, and the learning
rate is constant, so no schedule depends on where it stops). One evaluation per model
scores every point. A re-run reuses merges, adapters and generations.

Writes under relearn.output_dir (default OUTPUT_DIR/relearn): rows.jsonl (the attacker's
rows), per model <name>/start (the merge), <name>/train (the attack's run), <name>/steps-N
(its adapter after N steps) and <name>/eval, and relearn.json and relearn.png (the curves).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..atomic import write_text
from ..cache import file_digest
from ..checkpoint import atomic_dir, checkpoint_step, commit_dir, list_checkpoints
from ..config import (
    BenchmarkSpec, Config, LossConfig, RelearnConfig, TrainConfig, changed_training_settings, save_config,
)
from ..data.benchmarks import load_benchmark, normalise_text
from ..data.examples import UNSAFE_UNSAFE
from ..data.sets import build_sets, caps_from_config
from ..errors import ConfigError
from ..eval.attacks import ATTACKS
from ..eval.report import percent
from ..eval.results import RelearnPoint, RelearnResults
from ..files import write_jsonl
from ..generate import weights_identity
from ..plots import relearn_curves
from ..training import train
from ..types import HARMFUL
from .evaluate import candidates, evaluate, folder_model, label_of
from .task_arithmetic import merge_task_vectors

log = logging.getLogger(__name__)

ATTACK_METHOD = "sft_unsafe"  # cross-entropy on the P_uu answers alone
TARGET = "target.json"  # what a model folder attacked: a re-run on other weights is refused


@dataclass
class RelearnRun:
    output_dir: Path
    results: RelearnResults


def settings_of(config: Config) -> RelearnConfig:
    """The relearn section, its defaults where the config has none."""
    return config.relearn or RelearnConfig()


def output_dir(config: Config) -> Path:
    return Path(settings_of(config).output_dir or Path(config.output_dir) / "relearn")


def scored_benchmark(config: Config) -> BenchmarkSpec:
    """The eval.benchmarks entry whose ASR the attack reads, with relearn.attack alone."""
    settings, specs = settings_of(config), config.eval.benchmarks
    ATTACKS.get(settings.attack)  # a typo fails before any training
    if not specs:
        raise ConfigError("relearn: eval.benchmarks is empty; name the benchmark whose ASR the attack reads")
    wanted = settings.benchmark
    found = specs[:1] if wanted is None else ([s for s in specs if (s.label or s.name) == wanted]
                                             or [s for s in specs if s.name == wanted])
    if not found:
        listed = ", ".join(spec.label or spec.name for spec in specs)
        raise ConfigError(f"relearn.benchmark: {wanted!r} is not an eval.benchmarks entry; entries: {listed}")
    return dataclasses.replace(found[0], attacks=[settings.attack])


def attack_data(config: Config):
    """The data section of the attack: relearn.rows P_uu rows drawn with relearn.seed, the
    other sets capped at 0 (the training loop then draws exactly these rows)."""
    settings = settings_of(config)
    return dataclasses.replace(config.data, max_safe=0, max_unsafe_safe=0, max_retain=0,
                               max_unsafe_unsafe=settings.rows, seed=settings.seed)


def attacker_rows(config: Config, spec: BenchmarkSpec) -> list:
    """The attacker's rows; an error when the data has too few, or when one shares its
    prompt with a scored row (the attack would train on the test)."""
    settings, data = settings_of(config), attack_data(config)
    rows = build_sets(data.sources, caps_from_config(data), data.seed)[UNSAFE_UNSAFE]
    if len(rows) < settings.rows:
        raise ConfigError(f"relearn.rows={settings.rows}: the training data holds {len(rows)} harmful answers "
                          f"(P_uu rows); lower relearn.rows")
    scored = load_benchmark(spec.name, spec.path, limit=spec.limit, seed=config.eval.seed)
    harmful = {normalise_text(row.prompt) for row in scored if row.expected == HARMFUL}
    if not harmful:
        raise ConfigError(f"relearn: benchmark {spec.label or spec.name!r} has no harmful rows whose ASR to read")
    shared = [row.source for row in rows if normalise_text(row.prompt) in harmful]
    if shared:
        raise ConfigError(f"relearn: {len(shared)} of the attacker's rows ask a prompt the benchmark "
                          f"{spec.label or spec.name!r} scores (e.g. {shared[0]}); train and evaluate on disjoint prompts")
    return rows


def attack_inputs(config: Config) -> tuple:
    """(the scored benchmark, the attacker's rows): every check of the settings and the
    data, before any model loads."""
    spec = scored_benchmark(config)
    return spec, attacker_rows(config, spec)


def attack_config(config: Config, start, steps: int, run: Path) -> Config:
    """The attack's training run: a fresh LoRA on every block of ``start`` (the config's
    LoRA shape), cross-entropy on the attacker's rows, ``steps`` optimizer steps."""
    settings, t = settings_of(config), config.train
    return dataclasses.replace(
        config, model=start, output_dir=str(run), data=attack_data(config),
        lora=dataclasses.replace(config.lora, layers="all"), loss=LossConfig(method=ATTACK_METHOD),
        train=TrainConfig(steps=steps, micro_batch=settings.micro_batch, grad_accum=1, lr=settings.lr,
                          scheduler="constant", precision=t.precision, gradient_checkpointing=t.gradient_checkpointing,
                          seed=settings.seed, save_every=steps, num_threads=t.num_threads),
    )


def starting_model(model_config, adapter, folder: Path):
    """The attacked model as a model config: the base or a merged folder as it is, an
    adapter merged into its base weights (``folder/start``, made once)."""
    target = {"model": weights_identity(model_config),
              "adapter": file_digest(Path(adapter) / "adapter_model.safetensors") if adapter else None}
    target = json.loads(json.dumps(target))
    record = folder / TARGET
    if record.is_file() and json.loads(record.read_text()) != target:
        raise ConfigError(f"{folder} holds a re-learning attack on other weights; choose another relearn.output_dir")
    write_text(record, json.dumps(target, indent=2))
    if adapter is None:
        return model_config
    start = folder / "start"
    if not (start / "config.json").is_file():
        merge_task_vectors(model_config, {"trained": Path(adapter)}, {"trained": 1.0}, start)
    return folder_model(model_config, start)


def relearned(config: Config, start, folder: Path, progress: bool) -> dict:
    """{steps: adapter folder} for every grid point above 0, from one run in folder/train."""
    settings, run = settings_of(config), folder / "train"
    last = attack_config(config, start, settings.steps[-1], run)
    changed = [key for key in changed_training_settings(run / "config.yaml", last) if key != "train.steps"]
    if changed:
        raise ConfigError(f"{run} holds a re-learning run with other settings ({', '.join(changed)}); "
                          "choose another relearn.output_dir")
    points = {}
    for steps in (s for s in settings.steps if s):
        points[steps] = point = folder / f"steps-{steps}"
        if (point / "adapter_model.safetensors").is_file():
            continue
        found = list_checkpoints(run / "checkpoints")
        if found and checkpoint_step(found[-1]) > steps:
            raise ConfigError(f"{run} has trained past step {steps} (a grid point added since?); "
                              "choose another relearn.output_dir")
        result = train(attack_config(config, start, steps, run), resume=bool(found), progress=progress,
                       allow_changes=frozenset({"train.steps"}))
        tmp = atomic_dir(point)
        shutil.copytree(result.adapter_dir, tmp, dirs_exist_ok=True)
        commit_dir(tmp, point)
    return points


def folder_name(name: str) -> str:
    """A model's name as one folder name (``repbend/adapter`` -> ``repbend-adapter``)."""
    return re.sub(r"[^\w.-]+", "-", name).strip(".") or "model"


def relearn(config: Config, names: dict | None = None, progress: bool = True) -> RelearnRun:
    """Attack every model ``candidates(config)`` finds and write relearn.json and
    relearn.png; ``names`` maps evaluation labels to curve names (compare: method names)."""
    settings, out = settings_of(config), output_dir(config)
    spec, rows = attack_inputs(config)
    targets = candidates(config)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    write_jsonl(out / "rows.jsonl", (row.to_dict() for row in rows))
    curves, judge = {}, None
    for index, (label, model_config, adapter) in enumerate(targets, 1):
        name = (names or {}).get(label, label)
        folder = out / folder_name(name)
        log.info("relearn: %s (%d/%d) in %s", name, index, len(targets), folder)
        start = starting_model(model_config, adapter, folder)
        points = relearned(config, start, folder, progress)
        evaluation = evaluate(dataclasses.replace(config, model=start, eval=dataclasses.replace(
            config.eval, benchmarks=[spec], adapters=[str(point) for point in points.values()],
            include_base=0 in settings.steps, capability_tasks=[], output_dir=str(folder / "eval"),
        )), progress).results
        labels = {steps: label_of(point) for steps, point in points.items()}
        curves[name] = []
        for steps in settings.steps:
            rate = evaluation.entry(labels.get(steps, "base"), spec.label or spec.name, settings.attack, HARMFUL).asr
            curves[name].append(RelearnPoint(steps=steps, asr=rate.value, low=rate.low, high=rate.high, n=rate.n))
        judge = evaluation.judge
    results = RelearnResults(benchmark=spec.label or spec.name, attack=settings.attack, judge=judge,
                             settings=dataclasses.asdict(settings), curves=curves)
    results.save(out / "relearn.json")
    relearn_curves(results, out / "relearn.png")
    return RelearnRun(out, results)


def table_lines(results: RelearnResults) -> list:
    """The curves as a Markdown table: a row per model, ASR in % [95 % interval] per step count."""
    steps = [point.steps for point in next(iter(results.curves.values()), [])]
    lines = ["| model | " + " | ".join(f"{s} steps" for s in steps) + " |", "|" + "---|" * (len(steps) + 1)]
    for model, points in results.curves.items():
        cells = [percent({"value": p.asr, "low": p.low, "high": p.high}) for p in points]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return lines


def description(results: RelearnResults) -> str:
    s = results.settings
    return (f"ASR (%, 95 % interval) on `{results.benchmark} / {results.attack}` (judge `{results.judge}`) after "
            f"N steps of LoRA fine-tuning on {s['rows']} harmful answers of the training data "
            f"(lr {s['lr']:g}, {s['micro_batch']} rows a step, seed {s['seed']}); 0 steps: the model as trained.")


def summary_lines(run: RelearnRun) -> list:
    """The summary printed at the end of `repbend relearn`."""
    return [description(run.results), "", *table_lines(run.results), "",
            f"relearn.json: {run.output_dir / 'relearn.json'}", f"relearn.png:  {run.output_dir / 'relearn.png'}"]
