"""Typed configuration: dataclasses, YAML files and ``key=value`` overrides.

A config file is a YAML mapping whose sections mirror :class:`Config`. Overrides use
dotted keys (``train.lr=1e-4``, ``loss.target_layers=[10,20]``); a few common keys have
top-level shortcuts (``output_dir``, ``steps``, ``model``). Unknown keys are errors that
list the closest valid keys, so a typo never silently trains the wrong recipe.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from .atomic import write_text
from .errors import ConfigError
from .resources import find_config, shipped_path


@dataclass
class ModelConfig:
    # Hub id, local folder, path to a .gguf file, or the alias "smollm2-135m" (embedded).
    name_or_path: str = "smollm2-135m"
    gguf_file: Optional[str] = None
    # A GGUF is dequantized once into a cached transformers folder (fp32 safetensors,
    # about 4 bytes a weight on disk) instead of being parsed again at every load.
    cache_dequantized: bool = True
    revision: Optional[str] = None
    # Build a randomly initialised model from this transformers config dict instead of
    # loading weights (tests, benchmarks at a given shape). Needs "model_type".
    random_init: Optional[dict] = None
    # Tokenizer source when it differs from the model; "byte" is a built-in byte-level
    # tokenizer with a ChatML template (for random models).
    tokenizer: Optional[str] = None
    # A Jinja chat template (text, or a path to a file) for tokenizers that lack one.
    chat_template: Optional[str] = None
    dtype: str = "auto"  # float32 | bfloat16 | float16 | auto
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    trust_remote_code: bool = False
    seed: int = 42  # for random_init weights


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 16
    dropout: float = 0.05
    # Module name suffixes inside each decoder block, or "all-linear".
    target_modules: Union[list, str] = "all-linear"
    # Which decoder blocks get LoRA: "auto" = blocks 0..max loss layer,
    # "all", or an explicit list of block indices.
    layers: Union[list, str] = "auto"


@dataclass
class SourceConfig:
    path: str = ""
    # auto | generic | wildguardmix | wildjailbreak | ultrachat
    layout: str = "auto"
    # Restrict a source to some sets (e.g. only "retain"); empty = all it yields.
    kinds: list = field(default_factory=list)


@dataclass
class DataConfig:
    sources: list = field(default_factory=list)  # of SourceConfig
    max_safe: Optional[int] = None
    max_unsafe_safe: Optional[int] = None
    max_unsafe_unsafe: Optional[int] = None
    max_retain: Optional[int] = None
    seed: int = 0
    max_prompt_tokens: int = 512  # prompts are cut from the left: the header survives
    max_response_tokens: int = 512  # responses are cut from the right
    max_retain_tokens: int = 1024
    # Sort rows of similar length into the same micro-batch (less padding).
    group_by_length: bool = False
    # Beyond the recipe (off there): this share of the P_us rows that have a P_uu answer
    # to the same prompt also come as "first 1..recovery_max_words words of that answer,
    # then the refusal", the opening as context only, so the model learns to stop after
    # a compliant start (Qi et al. 2024's safety-recovery examples; the prefill attack).
    recovery_fraction: float = 0.0
    recovery_max_words: int = 24


@dataclass
class LossConfig:
    method: str = "repbend"
    # Which tokens the two distance terms read: response_all | prompt_last |
    # prompt_all | prompt_response.
    loss_mode: str = "response_all"
    # Hidden-state indices (0 = embeddings, i = output of block i) for the unsafe and
    # cosine terms: "auto" scales the recipe's 20..30 of 32 to the model's depth.
    target_layers: Union[list, str] = "auto"
    safe_layers: str = "all"  # all | target
    safe_coef: float = 0.5
    unsafe_coef: float = 0.5
    cosine_coef: float = 0.1
    kl_coef: float = 0.3
    paired_coef: float = 0.0  # eta
    paired_positions: int = 20
    norm: str = "l2"  # l2 (recipe) | squared (the paper's 1/2 ||.||^2)
    kl_temperature: float = 2.0
    kl_reduction: str = "batchmean"  # batchmean (recipe) | token_mean
    cosine_rows: str = "unsafe"  # unsafe (recipe) | unsafe_and_refusal (Algorithm 1)
    cosine_positions: str = "prompt_last"
    # Options beyond the recipe (off there): a cap on the unsafe distance so it stops
    # pushing once far enough, and a refusal cross-entropy term on P_us responses.
    unsafe_distance_cap: Optional[float] = None
    refusal_ce_coef: float = 0.0
    # KL(base || LoRA) on P_s responses, the first token included: keeps the answer-or-
    # refuse choice on benign prompts where the base model had it.
    safe_kl_coef: float = 0.0
    # NPO on P_uu answers (the output-level twin of d_u, beta = npo_beta): pushes their
    # likelihood below the base model's, saturating once it is (Zhang et al. 2024).
    unsafe_npo_coef: float = 0.0
    # Leave P_us rows out of the safe distance (they are still used by other terms).
    safe_includes_refusals: bool = True

    # Baselines, each on the same training loop; a method reads only its group.
    # Weight of the retain cross-entropy of npo (NPO-RT) and refusal_sft.
    retain_coef: float = 1.0
    # circuit_breaker: ReLU(cos(h', h)) on harmful text at cb_target_layers ("auto": 10
    # and 20 of 32, scaled to depth) plus the L2 retain distance on every hidden state up
    # to the highest of them; at optimizer step t of T the breaker weighs
    # cb_alpha * (1 - t/(2T)) and the retain term cb_alpha * t/(2T) (CB's launch: 10).
    cb_alpha: float = 10.0
    cb_target_layers: Union[list, str] = "auto"
    # rmu: hidden states at rmu_layer ("auto": index 8 of 32, the output of RMU's module 7,
    # scaled) on harmful text pushed to rmu_steering_coef times a fixed random unit
    # direction drawn with rmu_seed; on retain text the mean squared distance to the
    # frozen model, weighted rmu_retain_coef (RMU's launch: 6.5 and 1200).
    rmu_layer: Union[int, str] = "auto"
    rmu_steering_coef: float = 6.5
    rmu_retain_coef: float = 1200.0
    rmu_seed: int = 0
    # npo and dpo: the inverse temperature beta of the log-ratio against the frozen model.
    npo_beta: float = 0.1
    dpo_beta: float = 0.1
    # task_arithmetic: theta0 + ta_safe_weight * tau_safe - ta_unsafe_weight * tau_unsafe.
    ta_safe_weight: float = 0.5
    ta_unsafe_weight: float = 0.1


@dataclass
class TrainConfig:
    steps: int = 450
    micro_batch: int = 4  # items per micro-batch (each item: one row of every set)
    grad_accum: int = 4
    lr: float = 1e-5
    scheduler: str = "constant"  # constant | linear | cosine
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: Optional[float] = 1.0
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    gradient_checkpointing: bool = False
    seed: int = 42
    save_every: int = 50
    keep_checkpoints: int = 1
    log_every: int = 1
    # Divergence guard: stop when the unsafe distance exceeds this (None = off), and when
    # |loss| or the gradient norm exceeds divergence_factor x its level, the largest of its
    # median over the last divergence_window steps, over the first 3, and 1 (None = off).
    max_unsafe_distance: Optional[float] = None
    divergence_factor: Optional[float] = 10.0
    divergence_window: int = 10
    save_merged: bool = False
    num_threads: Optional[int] = None


@dataclass
class BenchmarkSpec:
    name: str = ""  # a registered benchmark (see `repbend eval --list`)
    path: Optional[str] = None  # local file; None for sets found in installed packages
    limit: Optional[int] = None  # seeded sample of at most this many rows
    attacks: list = field(default_factory=lambda: ["direct"])
    label: Optional[str] = None  # the name in tables (default: name); tells two files of one layout apart
    # "over_refusal" marks scary-but-benign sets (XSTest-like): their compliance is the
    # over-refusal figure, kept apart from plain benign helpfulness.
    role: Optional[str] = None


@dataclass
class EvalConfig:
    benchmarks: list = field(default_factory=list)  # of BenchmarkSpec
    # Adapter folders (PEFT) or merged model folders compared with the base model.
    adapters: list = field(default_factory=list)
    include_base: bool = True
    judge: str = "default"
    judge_options: dict = field(default_factory=dict)
    attack_options: dict = field(default_factory=dict)  # attack name -> its options
    backend: str = "hf"  # hf | vllm | endpoint
    # hf backend: fold the LoRA weights into the evaluated copy (same model, no per-layer
    # adapter detour: generation about 10 % faster on CPU); false keeps the PEFT wrapper.
    merge_adapter: bool = True
    endpoint_url: Optional[str] = None
    endpoint_model: Optional[str] = None
    endpoint_key_env: Optional[str] = "OPENAI_API_KEY"
    max_new_tokens: int = 512
    batch_size: int = 8
    # hf backend: batches whose rows x longest prompt exceed this many tokens are halved
    # (long jailbreak templates set the memory peak otherwise); None: no limit.
    max_batch_tokens: Optional[int] = None
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    capability_tasks: list = field(default_factory=list)
    capability_limit: Optional[int] = None
    # The offline capability tasks' items: all, or their seeded dev or test half (choices
    # of defaults read dev, final reports test).
    capability_split: str = "all"
    seed: int = 0
    output_dir: Optional[str] = None  # default: <output_dir>/eval

    def __post_init__(self):
        # The splits live with the tasks; imported here so that importing config does not import eval.
        from .eval.capability import check_split

        check_split(self.capability_split)


@dataclass
class BuildConfig:
    """`repbend data`: the four training sets and the evaluation sets, built offline from
    packaged data and the base model's own answers. Every evaluation set is split into
    dev (every choice of a default, sweep or tuning run reads it) and test (read only by
    the final evaluation of `repbend run` / `repbend compare`)."""

    # Prompt sources: registered benchmarks or the builder's own (`repbend.data.packaged`).
    train_harmful: list = field(default_factory=lambda: ["advbench_pkg", "uncensorbench_pkg", "rho_harmful_pkg"])
    heldout_harmful: list = field(default_factory=lambda: ["harmbench_pkg", "strongreject_pkg"])
    benign: list = field(default_factory=list)  # benign prompt sources; empty = the builder's default pool
    # Everyday instructions from sources no training row comes from: helpfulness outside
    # the training distribution (never trained on).
    everyday: list = field(default_factory=lambda: ["everyday_pkg"])
    # Benign prompts that sound harmful (over-refusal), never trained on.
    over_refusal: list = field(default_factory=lambda: ["xstest_like_pkg"])
    # Broad instructions answered by the base model for the retain set only (never P_s,
    # never evaluated): keeps its answers to everyday requests where they were, beyond
    # the benign pool's topics.
    retain_instructions: list = field(default_factory=lambda: ["instructions_pkg"])
    max_retain_instructions: Optional[int] = 120
    # Sets evaluated elsewhere: no split may hold their prompts or near duplicates.
    exclude: list = field(default_factory=list)
    max_train_harmful: Optional[int] = 300
    max_heldout_harmful: Optional[int] = None  # None: every held-out prompt left after deduplication
    max_benign: Optional[int] = 300
    max_everyday: Optional[int] = 300
    heldout_benign_fraction: float = 0.3  # of the benign pool, kept out of training for dev and test
    dev_fraction: float = 0.3  # of each evaluation set (per source), the rest is test
    max_new_tokens: int = 96
    temperature: float = 0.7
    judge: str = "default"
    # Prompts of different splits within this MiniLM cosine count as duplicates (None = exact only).
    near_duplicate_cosine: Optional[float] = 0.85
    batch_size: int = 8
    seed: int = 0
    output_dir: Optional[str] = None  # default: <output_dir>/data


@dataclass
class AnalysisConfig:
    """`repbend analyze`: logit lens and safe-vs-unsafe geometry, base vs adapter."""

    # Prompt sets (generic JSONL, "{data_dir}" = the built data folder); None = the dev split.
    safe_path: Optional[str] = None
    unsafe_path: Optional[str] = None
    adapter: Optional[str] = None  # adapter folder or training run folder; None = OUTPUT_DIR/adapter
    limit: Optional[int] = 40  # prompts per group (seeded sample)
    layers: Union[list, str] = "all"  # hidden-state indices: "all" (0..L), "auto" or a list
    positions: int = 6  # last prompt positions in the logit-lens heat maps
    max_answer_tokens: int = 8  # response tokens in the heat maps (generated or teacher-forced)
    # Teacher-forced answer when neither the unsafe set (target) nor P_uu has one.
    answer_text: str = "Sure, here is how to do that. First,"
    batch_size: int = 8
    output_dir: Optional[str] = None  # default: <output_dir>/analysis


@dataclass
class TuneConfig:
    """`repbend tune`: a multi-objective Optuna search over training settings (see tune.py)."""

    trials: int = 8  # finished (complete or pruned) trials the study should hold
    timeout_minutes: Optional[float] = None  # no new trial starts after this (None = no limit)
    storage: Optional[str] = None  # an Optuna storage URL; None = sqlite:///OUTPUT_DIR/tune/study.db
    study_name: str = "repbend"
    sampler: str = "tpe"  # tpe | nsga2
    startup_trials: int = 4  # random trials before the sampler models the results
    seed: int = 0
    n_jobs: int = 1  # trials run at once (threads in one process)
    # Dotted config key -> {low, high[, log | step]} or {choices: [...]}.
    space: dict = field(default_factory=dict)
    enqueue: list = field(default_factory=list)  # points (space key -> value) tried first
    # The best point: helpfulness and over-refusal compliance at least these shares of
    # the base model's, degenerate shares at most these (None = no bound).
    min_helpful_ratio: Optional[float] = 0.95
    min_overrefusal_ratio: Optional[float] = 0.85
    max_benign_degenerate: Optional[float] = 0.03
    max_harmful_degenerate: Optional[float] = None
    # The tuning sets: seeded samples of the build's dev split (never its test split).
    harmful_prompts: int = 30
    benign_prompts: int = 20  # benign and everyday prompts together
    overrefusal_prompts: int = 20
    harmful_attacks: list = field(default_factory=lambda: ["direct"])
    max_new_tokens: int = 48
    # Train this many steps, check benign answers for degeneration, then finish (None = no check).
    intermediate_check_step: Optional[int] = None
    final: bool = True  # `repbend run` the best point's config (test-split numbers)


@dataclass
class CompareConfig:
    """`repbend compare`: the methods trained with the same data, seed and step budget,
    then evaluated together with the base model."""

    methods: list = field(default_factory=lambda: [
        "repbend", "circuit_breaker", "rmu", "npo", "refusal_sft", "dpo", "task_arithmetic"])
    # Folder of <method>.yaml overlays (loss, lora and train sections) applied on top of
    # this config for each method; relative paths that do not exist here are taken from
    # the repository root (an installed wheel: its packaged copy, repbend.resources.ROOT).
    method_dir: str = "configs/methods"
    # method -> list of key=value overrides applied after its overlay.
    overrides: dict = field(default_factory=dict)
    # Build the data first as `repbend run` does (its cached build is reused).
    build_data: bool = False
    output_dir: Optional[str] = None  # default: <output_dir>


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    build: BuildConfig = field(default_factory=BuildConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    output_dir: str = "runs/default"


# Top-level shortcuts a user types most often.
ALIASES = {"steps": "train.steps", "lr": "train.lr", "model": "model.name_or_path", "seed": "train.seed"}


def _field_types(cls) -> dict:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, annotation, key: str):
    """Check and convert ``value`` to ``annotation``; errors name the key and value."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        if list in options and isinstance(value, int) and not isinstance(value, bool):
            return [value]  # a single layer index means a list of one
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: value {value!r} fits none of {annotation}")
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if annotation in (list, dict) or origin in (list, dict):
        expected = origin or annotation
        if isinstance(value, expected):
            return value
        raise ConfigError(f"{key}: expected a {expected.__name__}, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {annotation}")


def _build(cls, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    types_ = _field_types(cls)
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in types_:
            raise ConfigError(unknown_key(full, all_keys(cls, prefix)))
        annotation = types_[key]
        if dataclasses.is_dataclass(annotation):
            kwargs[key] = _build(annotation, value or {}, f"{full}.")
        elif (cls.__name__, key) in _LIST_FIELDS:
            item_cls = _LIST_FIELDS[(cls.__name__, key)]
            if not isinstance(value, list):
                raise ConfigError(f"{full}: expected a list, got {value!r}")
            kwargs[key] = [
                item if isinstance(item, item_cls) else _build(item_cls, item, f"{full}[{i}].")
                for i, item in enumerate(value)
            ]
        else:
            kwargs[key] = _coerce(value, annotation, full)
    built = cls(**kwargs)
    _check_ranges(built, prefix)
    return built


_LIST_FIELDS = {("DataConfig", "sources"): SourceConfig, ("EvalConfig", "benchmarks"): BenchmarkSpec}


def _at_least(low):
    return lambda value: value >= low, f"must be >= {low}"


def _above(low):
    return lambda value: value > low, f"must be > {low}"


def _interval(low, high, bounds: str):
    """``bounds`` is "[)", "(]", "()" or "[]": which ends belong to the interval."""
    above = (lambda v: v >= low) if bounds[0] == "[" else (lambda v: v > low)
    below = (lambda v: v <= high) if bounds[1] == "]" else (lambda v: v < high)
    return lambda value: above(value) and below(value), f"must be in {bounds[0]}{low}, {high}{bounds[1]}"


def _one_of(*choices):
    return lambda value: value in choices, "must be one of " + ", ".join(choices)


# Ranges and choices of numeric and enumerated settings, checked at load so a bad value is
# named with its file and key instead of failing deep in torch (None passes: "off").
_RULES = {
    "LoraSettings": {"r": _at_least(1), "alpha": _above(0), "dropout": _interval(0, 1, "[)")},
    "DataConfig": {"max_prompt_tokens": _at_least(1), "max_response_tokens": _at_least(1),
                   "max_retain_tokens": _at_least(1), "recovery_fraction": _interval(0, 1, "[]"),
                   "recovery_max_words": _at_least(1), "max_safe": _at_least(0), "max_unsafe_safe": _at_least(0),
                   "max_unsafe_unsafe": _at_least(0), "max_retain": _at_least(0)},
    "TrainConfig": {"steps": _at_least(1), "micro_batch": _at_least(1), "grad_accum": _at_least(1),
                    "lr": _above(0), "scheduler": _one_of("constant", "constant_with_warmup", "linear", "cosine"),
                    "warmup_steps": _at_least(0), "weight_decay": _at_least(0), "max_grad_norm": _above(0),
                    "precision": _one_of("auto", "fp32", "bf16", "fp16"), "save_every": _at_least(1),
                    "keep_checkpoints": _at_least(0), "log_every": _at_least(1), "max_unsafe_distance": _above(0),
                    "divergence_factor": _above(1), "divergence_window": _at_least(1), "num_threads": _at_least(1)},
    "EvalConfig": {"max_new_tokens": _at_least(1), "batch_size": _at_least(1), "max_batch_tokens": _at_least(1)},
    "BuildConfig": {"dev_fraction": _interval(0, 1, "()"), "heldout_benign_fraction": _interval(0, 1, "()"),
                    "near_duplicate_cosine": _interval(0, 1, "(]"), "max_new_tokens": _at_least(1),
                    "batch_size": _at_least(1), "temperature": _above(0)},
}


def _check_ranges(obj, prefix: str) -> None:
    for name, (valid, rule) in _RULES.get(type(obj).__name__, {}).items():
        value = getattr(obj, name)
        if value is not None and not valid(value):
            raise ConfigError(f"{prefix}{name}: {rule}, got {value!r}")


def all_keys(cls, prefix: str = "") -> list:
    """Every dotted leaf key of a config dataclass."""
    keys = []
    for name, annotation in _field_types(cls).items():
        if dataclasses.is_dataclass(annotation):
            keys += all_keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def field_annotation(key: str):
    """The type annotation of the config field at dotted ``key`` (e.g. ``train.lr``)."""
    *sections, name = key.split(".")
    cls = Config
    for section in sections:
        cls = _field_types(cls)[section]
    return _field_types(cls)[name]


def unknown_key(key: str, valid: list) -> str:
    """The error message for an unknown key, with the closest valid ones."""
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown config key {key!r}{hint}"


def parse_override(text: str) -> tuple:
    """``a.b=value`` -> ("a.b", parsed value); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    key = ALIASES.get(key.strip(), key.strip())
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: cannot read value: {error}") from None
    return key, value


def apply_overrides(data: dict, overrides: list) -> dict:
    """Apply ``key=value`` overrides to a raw (not yet typed) config mapping."""
    valid = all_keys(Config)
    for text in overrides:
        key, value = parse_override(text)
        if key not in valid and not any(v.startswith(key + ".") for v in valid):
            raise ConfigError(unknown_key(key, valid + list(ALIASES)))
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if node.get(part) is None:  # an empty YAML section reads as null
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {part} is not a section")
        node[parts[-1]] = value
    return data


def load_config(path: Optional[str | Path] = None, overrides: tuple | list = ()) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None) and apply overrides.

    ``path`` is a file, or a shipped config by name (``tiny-test``, ``smollm2-cpu.yaml``)
    or by its path in the repository (``configs/recipe.yaml``) when no such file is here;
    see :func:`repbend.resources.find_config`."""
    data: dict = {}
    if path is not None:
        path = find_config(path)
        data = _read_with_includes(path, ())
    data = apply_overrides(data, list(overrides))
    try:
        return _build(Config, data, "")
    except ConfigError as error:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{error}") from None


def _read_with_includes(path: Path, seen: tuple) -> dict:
    """A config file's mapping. ``include: other.yaml`` (relative to the file) is read
    first and this file's keys are laid over it, mappings merged key by key, so a config
    can say only how it differs from another one instead of copying it."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist" + (f" (included from {seen[-1]})" if seen else ""))
    if path.resolve() in seen:
        raise ConfigError(f"{path}: includes itself through {' -> '.join(map(str, seen))}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    data = _resolve_paths(data, path.parent)
    include = data.pop("include", None)
    if include is None:
        return data
    if not isinstance(include, str):
        raise ConfigError(f"{path}: include: expected one file name, got {include!r}")
    return _merged(_read_with_includes(path.parent / include, (*seen, path.resolve())), data)


def _merged(base: dict, top: dict) -> dict:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = _merged(merged[key], value)
        merged[key] = value
    return merged


def _resolve_paths(data: dict, base: Path) -> dict:
    """Relative data-source paths in a config file are relative to the working folder
    when they exist there, else to the config file's folder, else to the shipped files'
    root (``examples/data/...``: the repository, or the installed package's copy)."""
    for source in (data.get("data") or {}).get("sources") or []:
        if isinstance(source, dict) and source.get("path"):
            candidate = Path(source["path"])
            if not candidate.is_absolute() and not candidate.exists():
                beside = base / candidate
                shipped = shipped_path(candidate)
                if beside.exists():
                    source["path"] = str(beside)
                elif shipped is not None:
                    source["path"] = str(shipped)
    return data


def to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def from_dict(data: dict) -> Config:
    """A typed config from a mapping such as :func:`to_dict` returns (checked like a file)."""
    return _build(Config, data, "")


# The sections that decide what a training run trains.
TRAINING_SECTIONS = ("model", "lora", "data", "loss", "train")


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed_training_settings(saved_path: Path, config: Config) -> dict:
    """Dotted key -> (saved value, value in ``config``) for every training setting that
    differs from the resolved config saved at ``saved_path`` (empty when none is saved)."""
    if not saved_path.is_file():
        return {}
    saved = yaml.safe_load(saved_path.read_text()) or {}
    current = yaml.safe_load(yaml.safe_dump(to_dict(config), sort_keys=False))
    old = _flat({section: saved.get(section) or {} for section in TRAINING_SECTIONS})
    new = _flat({section: current[section] for section in TRAINING_SECTIONS})
    return {key: (old.get(key), new.get(key)) for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)}


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config (every default filled in) as YAML, atomically."""
    write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))
