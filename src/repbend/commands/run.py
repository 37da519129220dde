"""``repbend run``: data -> train -> eval -> report, each step cached.

Re-running the same config reuses what is done: the data build is cached by content, a
finished training run with the same config is kept (a killed one resumes), and
generations come from the evaluation's cache.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..analysis import report_lines
from ..config import TRAINING_SECTIONS, Config, SourceConfig, changed_training_settings
from ..errors import ConfigError
from ..eval.report import render_markdown
# The main job's goals, shared with `repbend tune`'s constraints.
from ..goals import (MAX_ASR_RATIO, MAX_ASR_RATIO_OTHER, MAX_BENIGN_DEGENERATE, MAX_CAPABILITY_DROP,
                     MAX_PEAK_MEMORY_GB, MIN_HELPFUL_RATIO, MIN_OVER_REFUSAL_RATIO)
from ..eval.results import EvalResults
from ..files import read_jsonl
from ..plots import rates_by_attack, training_curves
from ..resources import CONFIG_DIR
from ..training import train
from .analyze import analyze
from .data import build_data, cached_build
from .evaluate import evaluate, label_of
from .stages import peak_memory_gb, run_stage

# `repbend run` without CONFIG: the embedded model on 2 CPU cores.
DEFAULT_CONFIG = CONFIG_DIR / "smollm2-cpu.yaml"
# The evaluation's answers, kept beside the build they were asked from (their own file:
# the build's cache holds the build's answers).
EVALUATION_CACHE = "evaluation-generations.jsonl"
HARMFUL_EXAMPLE_WORDS = 8  # harmful answers in reports are cut to their first words


@dataclass
class RunResult:
    output_dir: Path
    report: Path
    results: EvalResults
    seconds: dict = field(default_factory=dict)
    checks: list = field(default_factory=list)  # of Check
    peak_memory_gb: float = 0.0


@dataclass
class Check:
    name: str
    value: float
    goal: str
    passed: bool


def target_checks(results: EvalResults, trained: str, over_refusal: set, peak_gb: float | None = None) -> list:
    """The main job's targets for ``trained`` against ``base``, one :class:`Check` each."""
    checks = []
    for benchmark, attack in results.pairs():
        base, bent = results.entry("base", benchmark, attack), results.entry(trained, benchmark, attack)
        if base is None or bent is None:
            continue
        where = f"{benchmark} / {attack}"
        # Compared as rate <= goal * base (not as a ratio), so a base rate of 0 is fine.
        if base.asr is not None:
            goal = MAX_ASR_RATIO.get(attack, MAX_ASR_RATIO_OTHER)
            value, reference = bent.asr.value, base.asr.value
            checks.append(Check(f"ASR vs base, {where}", _ratio(value, reference), f"<= {goal:.2f}",
                                value <= goal * reference + 1e-9))
            continue
        goal = MIN_OVER_REFUSAL_RATIO if benchmark in over_refusal else MIN_HELPFUL_RATIO
        value, reference = bent.compliance.value, base.compliance.value
        checks.append(Check(f"compliance vs base, {where}", _ratio(value, reference), f">= {goal:.2f}",
                            value >= goal * reference - 1e-9))
        degenerate = bent.degenerate.value
        checks.append(Check(f"degenerate, {where}", degenerate, f"<= {MAX_BENIGN_DEGENERATE:.2f}",
                            degenerate <= MAX_BENIGN_DEGENERATE))
    for task, score in results.capability.get("base", {}).items():
        bent = results.capability_score(trained, task)
        if bent and score.value is not None and bent.value is not None:
            drop = score.value - bent.value
            checks.append(Check(f"capability drop, {task}", drop, f"<= {MAX_CAPABILITY_DROP:.2f}",
                                drop <= MAX_CAPABILITY_DROP))
    if peak_gb is not None:
        checks.append(Check("peak memory (GB)", peak_gb, f"<= {MAX_PEAK_MEMORY_GB:.1f}", peak_gb <= MAX_PEAK_MEMORY_GB))
    return checks


def _ratio(value: float, base: float) -> float:
    """value / base, shown in the report; 0/0 is 0 and x/0 infinite."""
    if base:
        return value / base
    return 0.0 if not value else float("inf")


def with_built_data(config: Config, data_dir: Path) -> Config:
    """The config with training data and evaluation paths pointing at the built folder,
    and the evaluation's generation cache beside them unless one is set."""
    sources = [SourceConfig(path=str(data_dir / "train.jsonl"), layout="generic")]
    benchmarks = [
        dataclasses.replace(spec, path=spec.path.format(data_dir=data_dir) if spec.path else None)
        for spec in config.eval.benchmarks
    ]
    cache = config.eval.generation_cache or str(data_dir / "cache" / EVALUATION_CACHE)
    return dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, sources=sources),
        eval=dataclasses.replace(config.eval, benchmarks=benchmarks, generation_cache=cache),
    )


def training_is_done(config: Config) -> bool:
    """A finished run with the same training settings is reused; a different one in the
    same folder is an error rather than silently mixed or overwritten."""
    out = Path(config.output_dir)
    saved = out / "config.yaml"
    if not saved.is_file():
        return False
    keys = changed_training_settings(saved, config)
    changed = [s for s in TRAINING_SECTIONS if any(key.startswith(f"{s}.") for key in keys)]
    if changed and ((out / "adapter").exists() or (out / "checkpoints").exists()):
        raise ConfigError(f"{out} holds a training run with other {', '.join(changed)} settings; choose another output_dir")
    return (out / "adapter" / "adapter_model.safetensors").is_file() and not changed


def train_stage(config: Config, resume: bool, progress: bool) -> None:
    """Training whose result stays where it ran: the saved adapter is what later stages
    read (the trained model in memory would be pickled back from a stage's process)."""
    train(config, resume=resume, progress=progress)


def evaluate_and_analyze(config: Config, adapter: str, progress: bool) -> tuple:
    """The evaluation and the analysis of ``adapter``, and the seconds the analysis took
    (one stage: the analysis is too small to pay for a process of its own)."""
    evaluation = evaluate(dataclasses.replace(config, eval=dataclasses.replace(config.eval, adapters=[adapter])), progress)
    started = time.time()
    analysis = analyze(config, adapter=adapter, out_dir=Path(config.output_dir) / "analysis", progress=progress)
    return evaluation, analysis, time.time() - started


def run(config: Config, progress: bool = True) -> RunResult:
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    isolate = config.run.isolate_stages
    seconds = {}

    started = time.time()
    built = cached_build(config) or run_stage(isolate, "data build", build_data, config, progress)
    seconds["data"] = time.time() - started
    config = with_built_data(config, built.output_dir)

    started = time.time()
    if not training_is_done(config):
        run_stage(isolate, "training", train_stage, config, (out / "checkpoints").exists(), progress)
    seconds["train"] = time.time() - started

    started = time.time()
    adapter = str(out / "adapter")
    evaluation, analysis, analysis_seconds = run_stage(isolate, "evaluation", evaluate_and_analyze, config, adapter, progress)
    seconds["eval"] = time.time() - started - analysis_seconds  # with the stage's process start
    seconds["analysis"] = analysis_seconds

    peak = peak_memory_gb()
    over_refusal = {spec.label or spec.name for spec in config.eval.benchmarks if spec.role == "over_refusal"}
    checks = target_checks(evaluation.results, label_of(Path(adapter)), over_refusal, peak)
    report = write_run_report(out, evaluation.results, built, seconds, checks, report_lines(analysis, out))
    return RunResult(out, report, evaluation.results, seconds, checks, peak)


def summary_lines(result: RunResult) -> list:
    """The one-screen summary printed at the end of `repbend run`."""
    lines = [f"report:  {result.report}", f"results: {result.output_dir / 'results.json'}",
             "time:    " + ", ".join(f"{step} {value / 60:.1f} min" for step, value in result.seconds.items())
             + f"; peak memory {result.peak_memory_gb:.1f} GB", ""]
    models = list(result.results.models)
    lines.append(f"{'benchmark / attack':<42}" + "".join(f"{m[:30]:>32}" for m in models))
    for benchmark, attack in result.results.pairs():
        cells = []
        for model in models:
            entry = result.results.entry(model, benchmark, attack)
            rate = entry.main if entry else None
            name = "ASR" if entry and entry.asr is not None else "ok"
            value = rate.value if rate else None
            degenerate = (entry.degenerate.value or 0.0) if entry else 0.0
            # None: every answer complied
            noncompliant = entry.degenerate_noncompliant.value if entry and entry.degenerate_noncompliant else None
            noncompliant = "-" if noncompliant is None else f"{100 * noncompliant:.1f}%"
            cells.append(f"{name} {100 * value:5.1f}% deg {100 * degenerate:4.1f}% / {noncompliant:>6}"
                         if value is not None else "-")
        lines.append(f"{benchmark + ' / ' + attack:<42}" + "".join(f"{cell:>32}" for cell in cells))
    lines.append("deg: degenerate share of all answers / of the answers that did not comply")
    if result.checks:
        missed = [check.name for check in result.checks if not check.passed]
        lines += ["", f"targets: {len(result.checks) - len(missed)}/{len(result.checks)} met"
                  + (" (missed: " + "; ".join(missed) + ")" if missed else "")]
    return lines


def checks_table(checks: list) -> list:
    lines = ["| target | value | goal | met |", "|---|---|---|---|"]
    for check in checks:
        lines.append(f"| {check.name} | {check.value:.3f} | {check.goal} | {'yes' if check.passed else 'no'} |")
    return lines


def cut_words(text: str, words: int) -> str:
    parts = text.split()
    return " ".join(parts[:words]) + (" [...]" if len(parts) > words else "")


def examples(generations: Path, per_group: int = 2) -> list:
    """Markdown lines: a few responses per (benchmark, attack, model); answers to
    harmful prompts cut to their first words."""
    records = read_jsonl(generations)
    seen: dict = {}
    lines = []
    for record in records:
        key = (record["benchmark"], record["attack"], record["model"])
        if seen.get(key, 0) >= per_group:
            continue
        seen[key] = seen.get(key, 0) + 1
        harmful = record["expected"] == "harmful"
        prompt = cut_words(record["prompt"], 16)
        response = cut_words(record["response"], HARMFUL_EXAMPLE_WORDS if harmful else 40)
        lines.append(f"- **{record['model']}**, {record['benchmark']} / {record['attack']} "
                     f"({record['outcome']}): _{prompt}_ -> {response!r}")
    return lines


def write_run_report(out: Path, results: EvalResults, built, seconds: dict, checks: list = (), analysis_lines: list = ()) -> Path:
    eval_dir = out / "eval"
    curves = training_curves(out / "metrics.jsonl", out / "training_curves.png")
    asr = rates_by_attack(results, out / "asr_by_attack.png")
    manifest = json.loads((built.output_dir / "manifest.json").read_text())
    lines = [
        "# RepBend run report",
        "",
        f"Model `{results.config['model']['name_or_path']}`, adapter `{out / 'adapter'}`. "
        + ", ".join(f"{step} {value / 60:.1f} min" for step, value in seconds.items()) + ".",
        "",
        "## Data",
        "",
        "```json",
        json.dumps({k: manifest[k] for k in ("sources", "counts") if k in manifest}, indent=2),
        "```",
        "",
        "## Results: base vs trained",
        "",
        render_markdown(results),
        f"![ASR per attack]({asr.name})",
        "",
        "## Targets",
        "",
        "Ratios are the trained model's rate over the base model's on the same prompts.",
        "",
        *checks_table(checks),
        "",
        "## Training curves",
        "",
        f"![training curves]({curves.name})",
        "",
        *analysis_lines,
        "",
        "## Example responses",
        "",
        f"Answers to harmful prompts are cut to their first {HARMFUL_EXAMPLE_WORDS} words.",
        "",
        *examples(eval_dir / "generations.jsonl"),
        "",
        "Files: [results.json](eval/results.json), [generations.jsonl](eval/generations.jsonl), "
        "[config.yaml](config.yaml), [metrics.jsonl](metrics.jsonl).",
    ]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    results.save(out / "results.json")
    return report
