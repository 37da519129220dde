"""``repbend eval``: benchmark rows -> attack -> generate -> judge -> metrics -> report.

Each model under test (the base, each adapter or merged folder) gets every configured
(benchmark, attack) pair. Generations are cached on disk as they finish, so an
interrupted evaluation resumes where it stopped; judges run on every response, and a
judge failure stops the evaluation (never a silent "safe").
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import Config, save_config, to_dict
from ..data.benchmarks import load_benchmark
from ..errors import ConfigError
from ..eval.attacks import ATTACKS, AttackContext
from ..eval.capability import OFFLINE_TASKS, evaluate_capability, offline_task_docs
from ..eval.judges import DEFAULT_JUDGE, build_judge
from ..eval.judging import judge_responses
from ..eval.metrics import group_metrics, rate, summary
from ..eval.report import write_report
from ..files import package_versions, write_jsonl
from ..eval.results import CapabilityScore, EvalResults, EvaluatedModel
from ..generate import (
    EndpointBackend,
    GenerationCache,
    GenerationSettings,
    HFBackend,
    VLLMBackend,
    digest,
    generate,
    weights_identity,
)
from ..types import CAPABILITY

log = logging.getLogger(__name__)

# Beside the generation cache: the capability scores of each model, keyed by content.
CAPABILITY_CACHE = "capability-scores.jsonl"

VERSIONED = ("repbend", "torch", "transformers", "peft", "accelerate", "lm-eval")


@dataclass
class EvalResult:
    output_dir: Path
    results: EvalResults  # as written to results.json
    generated: int  # responses generated now (the rest came from the cache)


def candidates(config: Config) -> list:
    """(label, model config, adapter folder or None) for every model under test."""
    found = [("base", config.model, None)] if config.eval.include_base else []
    for path in config.eval.adapters:
        folder = Path(path)
        if (folder / "adapter_config.json").is_file():
            found.append((label_of(folder), config.model, str(folder)))
        elif (folder / "config.json").is_file():
            found.append((label_of(folder), folder_model(config.model, folder), None))
        else:
            raise ConfigError(f"eval.adapters: {folder} holds neither a PEFT adapter (adapter_config.json) nor a model (config.json)")
    if not found:
        raise ConfigError("nothing to evaluate: eval.include_base is false and eval.adapters is empty")
    return found


def folder_model(model_config, folder: Path):
    """The model config of a model folder (a merge of ``model_config``'s model): its
    settings, the folder's weights and tokenizer (the built-in byte tokenizer stays)."""
    return dataclasses.replace(model_config, name_or_path=str(folder), gguf_file=None, random_init=None,
                               tokenizer=None if model_config.tokenizer != "byte" else "byte")


def label_of(folder: Path) -> str:
    """A short, readable name: the run folder for ``RUN/adapter`` and ``RUN/merged``."""
    return f"{folder.parent.name}/{folder.name}" if folder.name in ("adapter", "merged") else folder.name


class BaseModel:
    """The base model, for attacks that read it besides the model under test (steering's
    refusal direction): the base candidate's own backend while that is evaluated, else
    loaded anew on ``load()`` (the attack caches what it computes, so once at most)."""

    def __init__(self, model_config):
        self.model_config, self.current = model_config, None

    @functools.cached_property
    def identity(self) -> str:
        return "base:" + digest({"weights": weights_identity(self.model_config),
                                 "model": dataclasses.asdict(self.model_config)})

    def load(self) -> tuple:
        backend = self.current or HFBackend.load(self.model_config)
        return backend.model, backend.tokenizer


def capability_key(identity: str, e, batch_size: int) -> str | None:
    """The cache key of a model's capability scores under ``e`` (the eval settings), scored
    ``batch_size`` rows at a time: the model, every item and setting of each task, and what
    scores them. None when a task is a standard one: its items sit in the Hugging Face
    cache, outside what the key can read."""
    tasks = sorted(e.capability_tasks)
    if any(name not in OFFLINE_TASKS for name in tasks):
        return None
    return digest({
        "model": identity,
        "tasks": {name: {"items": offline_task_docs(name, e.capability_split), "settings": OFFLINE_TASKS[name].yaml}
                  for name in tasks},
        "limit": e.capability_limit,
        "batch_size": batch_size,  # padding changes the scores' last digits
        "lm_eval": package_versions(["lm-eval"])["lm-eval"],
    })


def make_backend(config: Config, model_config, adapter):
    e = config.eval
    if e.backend == "hf":
        return HFBackend.load(model_config, adapter, merge=e.merge_adapter)
    if e.backend == "vllm":
        return VLLMBackend(model_config, adapter)
    if e.backend == "endpoint":
        if not e.endpoint_url or not e.endpoint_model:
            raise ConfigError("eval.backend=endpoint needs eval.endpoint_url and eval.endpoint_model")
        # The endpoint answers as its served model whatever the label: an adapter's rows
        # would hold the base model's answers.
        if e.adapters:
            raise ConfigError(
                f"eval.backend=endpoint evaluates the served model {e.endpoint_model!r} only and cannot apply "
                f"eval.adapters ({', '.join(map(str, e.adapters))}); serve each adapter as its own model (vLLM: "
                "--lora-modules NAME=PATH) and evaluate it in its own run with eval.endpoint_model=NAME and "
                "eval.adapters=[]")
        return EndpointBackend(e.endpoint_url, e.endpoint_model, e.endpoint_key_env)
    raise ConfigError(f"eval.backend {e.backend!r} is not one of hf, vllm, endpoint")


def evaluate(config: Config, progress: bool = True) -> EvalResult:
    e = config.eval
    out = Path(e.output_dir or Path(config.output_dir) / "eval")
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    if not e.benchmarks and not e.capability_tasks:
        raise ConfigError("eval.benchmarks is empty: name at least one benchmark (and its attacks)")
    for spec in e.benchmarks:
        for attack in spec.attacks:
            ATTACKS.get(attack)  # fail on a typo before any model loads
    rows = {
        spec.label or spec.name: [
            dataclasses.replace(row, benchmark=spec.label or row.benchmark)
            for row in load_benchmark(spec.name, spec.path, limit=spec.limit, seed=e.seed)
        ]
        for spec in e.benchmarks
    }
    if len(rows) < len(e.benchmarks):
        raise ConfigError("eval.benchmarks: two entries share a name; give them different labels")
    judge = build_judge(DEFAULT_JUDGE if e.judge == "default" else e.judge, **e.judge_options)
    refusals = build_judge("keywords")
    settings = GenerationSettings(e.max_new_tokens, e.do_sample, e.temperature, e.top_p, e.seed, e.batch_size,
                                  e.max_batch_tokens)
    cache = GenerationCache(Path(e.generation_cache) if e.generation_cache else out / "cache" / "generations.jsonl")
    scores_cache = GenerationCache(cache.path.with_name(CAPABILITY_CACHE))
    capability_batch = e.capability_batch_size or e.batch_size

    records, capability, generated = [], {}, 0
    base = BaseModel(config.model)
    for label, model_config, adapter in candidates(config):
        backend = make_backend(config, model_config, adapter)
        base.current = backend if model_config is config.model and adapter is None else None
        groups = []  # the attacked prompts of each (benchmark, attack)
        for spec in e.benchmarks:
            benchmark_rows = [row for row in rows[spec.label or spec.name] if row.expected != CAPABILITY]
            for attack_name in spec.attacks:
                context = AttackContext(
                    model=getattr(backend, "model", None), tokenizer=getattr(backend, "tokenizer", None),
                    cache_dir=out / "cache" / "attacks", seed=e.seed,
                    options={"identity": backend.identity, **e.attack_options.get(attack_name, {})}, base=base,
                )
                groups.append(ATTACKS.get(attack_name)().prepare(benchmark_rows, context))
        # One generation over every set and attack, so batches are full and sorted by length
        # across them (a batch runs as long as its longest answer, however few rows it has).
        started = time.perf_counter()
        responses, fresh = generate(backend, [p for prompts in groups for p in prompts], settings, cache, progress)
        generated += fresh
        log.info("%s: %d answers (%d generated now) in %.0f s", label, len(responses), fresh, time.perf_counter() - started)
        started = time.perf_counter()
        start = 0
        for prompts in groups:
            records += judge_responses(label, prompts, responses[start:start + len(prompts)], judge, refusals)
            start += len(prompts)
        log.info("%s: judged in %.0f s", label, time.perf_counter() - started)
        if e.capability_tasks:
            if not isinstance(backend, HFBackend):
                raise ConfigError("capability tasks run through lm-eval on the hf backend")
            started = time.perf_counter()
            key = capability_key(backend.identity, e, capability_batch)
            scores = scores_cache.entries.get(key) if key else None
            if scores is None:
                scores = evaluate_capability(
                    backend.model, backend.tokenizer, e.capability_tasks, out / "cache" / "capability",
                    limit=e.capability_limit, split=e.capability_split,
                    batch_size=capability_batch,
                )
                if key:
                    scores_cache.add({key: scores})
            log.info("%s: capability tasks scored in %.0f s", label, time.perf_counter() - started)
            capability[label] = {task: CapabilityScore.from_json(score, f"capability[{task!r}]")
                                 for task, score in scores.items()}
            for score in capability[label].values():  # the same bootstrap interval as every other rate
                if score.correct:
                    interval = rate(score.correct, e.seed)
                    score.low, score.high = interval.low, interval.high
        base.current = None  # else the base model's weights stay loaded while the next model loads
        del backend

    entries = group_metrics(records, e.seed)
    results = EvalResults(
        models={label: EvaluatedModel(model=mc.name_or_path, adapter=adapter) for label, mc, adapter in candidates(config)},
        judge=judge.name,
        metrics=entries,
        capability=capability,
        summary=summary(entries, capability),
        config=to_dict(config),
        versions={name: version for name, version in package_versions(VERSIONED).items() if version},
    )
    write_jsonl(out / "generations.jsonl", records)
    results.save(out / "results.json")
    write_report(results, out / "results.md")
    return EvalResult(out, results, generated)
