"""Typed configuration: dataclasses, YAML files and ``key=value`` overrides.

A config file is a YAML mapping whose sections mirror :class:`Config`. Overrides use
dotted keys (``train.lr=1e-4``, ``loss.repbend.target_layers=[10,20]``); a few common keys
have top-level shortcuts (``output_dir``, ``steps``, ``model``). Unknown keys are errors that
list the closest valid keys, so a typo never silently trains the wrong recipe.

Each training method's own settings are a dataclass registered with its loss
(:func:`repbend.methods.register_method`), read from the loss section named after the
method: ``loss: {method: rmu, rmu: {steering_coef: 120}}``. Keys renamed since (the flat
``loss.cb_alpha``, ``loss.kl_coef``, ...) still work, with a warning: see :data:`RENAMED`.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional, Union

import yaml

from . import goals
from .atomic import write_text
from .errors import ConfigError
from .resources import find_config, shipped_path

# Hidden-state indices or decoder blocks: "auto" (the setting's default band), "all", or a
# list of indices.
Layers = Union[list, Literal["auto", "all"]]


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
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
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
    layers: Layers = "auto"


@dataclass
class SourceConfig:
    path: str = ""
    # "auto" (told by the first record's keys) or a layout of repbend.data.readers.LAYOUTS
    # (generic, wildguardmix, wildjailbreak, ultrachat, ...), checked where sources are read.
    layout: str = "auto"
    # Restrict a source to some sets (e.g. only "retain"); empty = all it yields.
    kinds: list[str] = field(default_factory=list)


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=list)
    max_safe: Optional[int] = None
    max_unsafe_safe: Optional[int] = None
    max_unsafe_unsafe: Optional[int] = None
    max_retain: Optional[int] = None
    seed: int = 0
    max_prompt_tokens: int = 512  # prompts are cut from the left: the header survives
    max_response_tokens: int = 512  # responses are cut from the right
    max_retain_tokens: int = 1024
    # Which part of a retain conversation longer than max_retain_tokens is kept. "start":
    # its first tokens (the reference's truncation). "last_answer": the context before the
    # last assistant turn loses its beginning and the answer its end, each keeping at
    # least half the window when it has that many tokens. With short windows "start"
    # leaves long prompts few or no answer tokens, and the KL then never reads where the
    # model chooses between answering and refusing.
    retain_window: Literal["start", "last_answer"] = "start"
    # Sort rows of similar length into the same micro-batch (less padding).
    group_by_length: bool = False
    # What one item of a micro-batch holds. "streams": one row of each set a method reads
    # (safe = P_s and P_us mixed, unsafe, retain). "recipe": the reference code's item, a
    # P_s row and a P_us refusal (two safe rows), two P_uu rows and one retain row, so
    # each step sees twice the harmful rows and the cosine term 2m(2m-1) pairs, not m(m-1).
    batch_composition: Literal["streams", "recipe"] = "streams"
    # The response span ends with the chat template's end-of-turn marker (<|eot_id|>,
    # <|im_end|> and its newline, </s>). False: the answer's text only, as the reference
    # code tokenized responses; the distance terms then never read the marker's states.
    response_end_of_turn: bool = True
    # Beyond the recipe (off there): this share of the P_us rows that have a P_uu answer
    # to the same prompt also come as "first 1..recovery_max_words words of that answer,
    # then the refusal", the opening as context only, so the model learns to stop after
    # a compliant start (Qi et al. 2024's safety-recovery examples; the prefill attack).
    recovery_fraction: float = 0.0
    recovery_max_words: int = 24


@dataclass
class LossConfig:
    """The training loss: ``method`` names a registered method (``repbend``, the baselines
    ``circuit_breaker``, ``rmu``, ``npo``, ``dpo``, ``refusal_sft``, ``task_arithmetic``, or
    one registered with :func:`repbend.methods.register_method`). A method's own settings
    are the loss section named after it, parsed into the settings class it registered with
    its loss (``loss: {method: rmu, rmu: {steering_coef: 120}}``): its own section is always
    there (defaults filled in); a config may also hold other methods' sections. Settings
    that the common terms of several methods read stay here."""

    method: str = "repbend"
    # Weight of the retain cross-entropy of npo (NPO-RT) and refusal_sft (task arithmetic's
    # safe run is a refusal_sft run).
    retain_coef: float = 1.0
    # Method name -> its settings. In a file each is a section of loss named after its
    # method, never a "sections" key (see to_dict).
    sections: dict = field(default_factory=dict, metadata={"method_sections": True})

    def __post_init__(self):
        own = method_settings(self.method)  # an unknown method fails here, listing the known ones
        given = {name: _section(name, value) for name, value in self.sections.items()}
        if own is not None and self.method not in given:
            given[self.method] = own()
        # Copies (not the caller's objects), the method's own section first.
        self.sections = dict(sorted(given.items(), key=lambda item: item[0] != self.method))

    @property
    def settings(self):
        """The method's own settings (None for a method without any, e.g. refusal_sft)."""
        return self.sections.get(self.method)

    def section(self, name: str):
        """The settings of method ``name``: this config's section of it, or its defaults."""
        if name in self.sections:
            return self.sections[name]
        return _section(name, {})

    def with_settings(self, **changes) -> LossConfig:
        """A copy with the method's own settings changed: ``loss.with_settings(beta=0.2)``."""
        changed = dataclasses.replace(self.section(self.method), **changes)
        return dataclasses.replace(self, sections={**self.sections, self.method: changed})


@dataclass
class TrainConfig:
    steps: int = 450
    micro_batch: int = 4  # items per micro-batch (what an item holds: data.batch_composition)
    grad_accum: int = 4
    lr: float = 1e-5
    scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: Optional[float] = 1.0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
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
    # Experiment trackers that also receive metrics.jsonl's numbers (one point per
    # optimizer step) and the resolved config, through accelerate: "none" (default), one of
    # tensorboard | wandb | mlflow | comet_ml | aim | clearml | dvclive, or a list of them.
    # Each needs its package installed. tensorboard and aim write under
    # <output_dir>/trackers/ (tensorboard: <output_dir>/trackers/repbend/, so
    # `tensorboard --logdir <output_dir>/trackers`), dvclive under
    # <output_dir>/trackers/dvclive/; wandb, mlflow, comet_ml and clearml go where their
    # own settings send them (e.g. WANDB_MODE=offline, MLFLOW_TRACKING_URI). Free to
    # change on --resume.
    report_to: Optional[Union[list, str]] = "none"


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


# The offline capability tasks' items (repbend.eval.capability.tasks): all, or the dev or
# test half.
CAPABILITY_SPLITS = ("all", "dev", "test")


def check_capability_split(split: str) -> None:
    if split not in CAPABILITY_SPLITS:
        raise ConfigError(f"eval.capability_split: {split!r} is not one of {', '.join(CAPABILITY_SPLITS)}")


@dataclass
class EvalConfig:
    benchmarks: list[BenchmarkSpec] = field(default_factory=list)
    # Adapter folders (PEFT) or merged model folders compared with the base model.
    adapters: list = field(default_factory=list)
    include_base: bool = True
    judge: str = "default"
    judge_options: dict = field(default_factory=dict)
    attack_options: dict = field(default_factory=dict)  # attack name -> its options
    backend: Literal["hf", "vllm", "endpoint"] = "hf"
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
    # Rows per lm-eval batch (None: batch_size): scoring keeps every position's logits over
    # the vocabulary, so its memory grows faster with the batch than generation's.
    capability_batch_size: Optional[int] = None
    capability_limit: Optional[int] = None
    # The offline capability tasks' items: all, or their seeded dev or test half (choices
    # of defaults read dev, final reports test).
    capability_split: str = "all"
    seed: int = 0
    output_dir: Optional[str] = None  # default: <output_dir>/eval
    # JSONL of finished generations (default <eval output>/cache/generations.jsonl); keyed
    # by weights, prompt and settings, so runs may share one (`repbend run` keeps it beside
    # its built data: the base model's answers are then generated once per build).
    generation_cache: Optional[str] = None

    def __post_init__(self):
        check_capability_split(self.capability_split)


@dataclass
class BuildConfig:
    """`repbend data`: the four training sets and the evaluation sets, built offline from
    packaged data and the base model's own answers. Every evaluation set is split into
    dev (every choice of a default, sweep or tuning run reads it) and test (read only by
    the final evaluation of `repbend run` / `repbend compare`)."""

    # Prompt sources: registered benchmarks or the builder's own (`repbend.data.sources`).
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
    layers: Layers = "all"  # hidden-state indices: "all" (0..L), "auto" or a list
    positions: int = 6  # last prompt positions in the logit-lens heat maps
    max_answer_tokens: int = 8  # response tokens in the heat maps (generated or teacher-forced)
    # Teacher-forced answer when neither the unsafe set (target) nor P_uu has one.
    answer_text: str = "Sure, here is how to do that. First,"
    batch_size: int = 8
    output_dir: Optional[str] = None  # default: <output_dir>/analysis


@dataclass
class TuneConfig:
    """`repbend tune`: a multi-objective Optuna search over training settings (see repbend.commands.tune)."""

    trials: int = 8  # finished (complete or pruned) trials the study should hold
    timeout_minutes: Optional[float] = None  # no new trial starts after this (None = no limit)
    storage: Optional[str] = None  # an Optuna storage URL; None = sqlite:///OUTPUT_DIR/tune/study.db
    study_name: str = "repbend"
    # grid: every combination of the space's choices, each tried once (trials = their number).
    sampler: Literal["tpe", "nsga2", "grid"] = "tpe"
    startup_trials: int = 4  # random trials before the sampler models the results
    seed: int = 0
    n_jobs: int = 1  # trials run at once (threads in one process)
    # Dotted config key -> {low, high[, log | step]}, {choices: [...]} or {factors: [...]}
    # (choices: the config's value times each factor).
    space: dict = field(default_factory=dict)
    # A `repbend compare` method: the study searches the config with its overlay
    # (compare.method_dir/<name>.yaml; not compare.overrides, where its winner goes).
    method: Optional[str] = None
    enqueue: list = field(default_factory=list)  # points (space key -> value) tried first
    # The best point: helpfulness and over-refusal compliance at least these shares of
    # the base model's, degenerate shares at most these (None = no bound); by default the
    # main job's goals (repbend.goals).
    min_helpful_ratio: Optional[float] = goals.MIN_HELPFUL_RATIO
    min_overrefusal_ratio: Optional[float] = goals.MIN_OVER_REFUSAL_RATIO
    max_benign_degenerate: Optional[float] = goals.MAX_BENIGN_DEGENERATE
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
class RunConfig:
    """`repbend run`'s own settings."""

    # The data build (when it must generate), the training and the evaluation with the
    # analysis each in a fresh process: the peak memory is the largest stage's, not what
    # one process accumulates across them (4.4 GB against 3.5 GB, measured). Costs one
    # package import per stage (about 4 s); off, monkeypatched functions reach every stage.
    isolate_stages: bool = True


@dataclass
class RelearnConfig:
    """`repbend relearn`: the re-learning attack. A fresh LoRA on the trained model (base +
    adapter merged) is fine-tuned with plain cross-entropy on ``rows`` harmful (P_uu) answers
    of the training data; ASR under one benchmark and attack is read after each number of
    optimizer steps in ``steps`` (one run, read at each point; 0 = no re-learning). A config
    without this section leaves it out of `repbend compare`."""

    rows: int = 32
    steps: list[int] = field(default_factory=lambda: [0, 8, 16, 32, 64])
    lr: float = 2e-4
    micro_batch: int = 4
    seed: int = 0  # the rows drawn, their order, the LoRA's initial weights
    # The label (or name) of the eval.benchmarks entry scored; None: the first one.
    benchmark: Optional[str] = None
    attack: str = "direct"
    output_dir: Optional[str] = None  # default: <output_dir>/relearn

    def __post_init__(self):
        if any(step < 0 for step in self.steps) or self.steps != sorted(set(self.steps)) or not self.steps:
            raise ConfigError(f"relearn.steps: expected optimizer step counts >= 0 in increasing order, "
                              f"each once, got {self.steps!r}")


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
    relearn: Optional[RelearnConfig] = None  # an optional section: off unless configured
    run: RunConfig = field(default_factory=RunConfig)
    output_dir: str = "runs/default"


# Top-level shortcuts a user types most often.
ALIASES = {"steps": "train.steps", "lr": "train.lr", "model": "model.name_or_path", "seed": "train.seed"}


@functools.cache
def _field_types(cls) -> dict:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _section_class(annotation):
    """The dataclass of a section field, ``X`` or an optional section ``Optional[X]``
    (None when absent, e.g. ``relearn``); None for a setting."""
    if dataclasses.is_dataclass(annotation):
        return annotation
    if typing.get_origin(annotation) not in (Union, types.UnionType):
        return None
    options = [option for option in typing.get_args(annotation) if option is not type(None)]
    return options[0] if len(options) == 1 and dataclasses.is_dataclass(options[0]) else None


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
        raise ConfigError(f"{key}: expected {_describe(annotation)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(annotation)
        if any(value == choice and type(value) is type(choice) for choice in choices):
            return value
        raise ConfigError(f"{key}: must be one of {', '.join(map(str, choices))}, got {value!r}")
    if dataclasses.is_dataclass(annotation):
        return value if isinstance(value, annotation) else _build(annotation, value, f"{key}.")
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
        if not isinstance(value, expected):
            raise ConfigError(f"{key}: expected a {expected.__name__}, got {value!r}")
        if origin is list:  # list[item type]: each item checked (and a dataclass built) like a field
            (item,) = typing.get_args(annotation)
            return [_coerce(entry, item, f"{key}[{i}]") for i, entry in enumerate(value)]
        return value
    raise ConfigError(f"{key}: unsupported type {annotation}")


def _describe(annotation) -> str:
    """What a value of ``annotation`` looks like, for error messages."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(option) for option in typing.get_args(annotation))
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(annotation)))
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "a mapping", type(None): "null"}
    return names.get(origin or annotation, str(annotation))


def _build(cls, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    if cls is LossConfig:
        data = _upgrade_loss(data)
    types_ = _field_types(cls)
    spread = _sections_field(cls)  # LossConfig.sections: its entries are keys named after methods
    sections = method_settings_classes() if spread else {}
    kwargs = {spread: {}} if spread else {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key in sections:
            kwargs[spread][key] = _build(sections[key], value or {}, f"{full}.")
        elif key not in types_ or key == spread:
            raise ConfigError(unknown_key(full, all_keys(cls, prefix)))
        elif _section_class(types_[key]) is not None:
            section = _section_class(types_[key])
            optional = section is not types_[key]
            kwargs[key] = None if optional and value is None else _build(section, value or {}, f"{full}.")
        else:
            kwargs[key] = _coerce(value, types_[key], full)
    built = cls(**kwargs)
    _check_rules(built, _RULES.get(cls.__name__, {}), prefix)
    return built


# Range rules: (check, description) pairs for _RULES and the methods' settings classes
# (MethodSettings.rules); choices are Literal annotations.


def at_least(low):
    return lambda value: value >= low, f"must be >= {low}"


def above(low):
    return lambda value: value > low, f"must be > {low}"


def interval(low, high, bounds: str):
    """``bounds`` is "[)", "(]", "()" or "[]": which ends belong to the interval."""
    low_ok = (lambda v: v >= low) if bounds[0] == "[" else (lambda v: v > low)
    high_ok = (lambda v: v <= high) if bounds[1] == "]" else (lambda v: v < high)
    return lambda value: low_ok(value) and high_ok(value), f"must be in {bounds[0]}{low}, {high}{bounds[1]}"


# The experiment trackers train.report_to may name (accelerate's log_with values).
TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive")


def _trackers():
    """none, one tracker, or a list of trackers (none alone)."""

    def valid(value) -> bool:
        names = [value] if isinstance(value, str) else value
        if names == ["none"]:
            return True
        return all(isinstance(name, str) and name in TRACKERS for name in names)

    return valid, "must be none, or one or a list of " + ", ".join(TRACKERS)


# Ranges of numeric settings (and checks beyond a type), checked at load so a bad value is
# named with its file and key instead of failing deep in torch (None passes: "off").
# Enumerated settings are Literal annotations, checked with their types.
_RULES = {
    "LoraSettings": {"r": at_least(1), "alpha": above(0), "dropout": interval(0, 1, "[)")},
    "LossConfig": {"retain_coef": at_least(0)},
    "DataConfig": {"max_prompt_tokens": at_least(1), "max_response_tokens": at_least(1),
                   "max_retain_tokens": at_least(1), "recovery_fraction": interval(0, 1, "[]"),
                   "recovery_max_words": at_least(1), "max_safe": at_least(0), "max_unsafe_safe": at_least(0),
                   "max_unsafe_unsafe": at_least(0), "max_retain": at_least(0)},
    "TrainConfig": {"steps": at_least(1), "micro_batch": at_least(1), "grad_accum": at_least(1), "lr": above(0),
                    "warmup_steps": at_least(0), "weight_decay": at_least(0), "max_grad_norm": above(0),
                    "save_every": at_least(1), "keep_checkpoints": at_least(0), "log_every": at_least(1),
                    "max_unsafe_distance": above(0), "divergence_factor": above(1), "divergence_window": at_least(1),
                    "num_threads": at_least(1), "report_to": _trackers()},
    "EvalConfig": {"max_new_tokens": at_least(1), "batch_size": at_least(1), "max_batch_tokens": at_least(1),
                   "capability_batch_size": at_least(1)},
    "RelearnConfig": {"rows": at_least(1), "lr": above(0), "micro_batch": at_least(1)},
    "BuildConfig": {"dev_fraction": interval(0, 1, "()"), "heldout_benign_fraction": interval(0, 1, "()"),
                    "near_duplicate_cosine": interval(0, 1, "(]"), "max_new_tokens": at_least(1),
                    "batch_size": at_least(1), "temperature": above(0)},
}


def _check_rules(obj, rules: dict, prefix: str) -> None:
    for name, (valid, rule) in rules.items():
        value = getattr(obj, name)
        if value is not None and not valid(value):
            raise ConfigError(f"{prefix}{name}: {rule}, got {value!r}")


class MethodSettings:
    """Base of a training method's own settings: a dataclass registered with its loss
    (``@register_method("rmu", settings=RMUSettings)``, :mod:`repbend.methods`) and read
    from the loss section named after the method. ``__post_init__`` checks every field's
    type (``Literal`` choices included) and ``rules`` (field -> a rule such as
    ``above(0)``), naming the full key, so a settings object is valid however it was made:
    from a file, an override or in Python."""

    section: ClassVar[str] = ""  # "loss.<method>": set by register_method
    rules: ClassVar[dict] = {}

    def __post_init__(self):
        prefix = f"{self.section or type(self).__name__}."
        for name, annotation in _field_types(type(self)).items():
            setattr(self, name, _coerce(getattr(self, name), annotation, prefix + name))
        _check_rules(self, self.rules, prefix)


# Method name -> its settings class (None: no settings of its own), filled by
# :func:`repbend.methods.register_method` as each method's module is imported.
METHOD_SETTINGS: dict = {}
# The built-in methods' package: imported by name when a config is read, the way a plugin
# registry discovers its entries, so that this lowest layer imports no method module.
BUILTIN_METHODS = "repbend.methods"


def registered_methods() -> dict:
    """Every registered method name -> its settings class (None: it has none)."""
    importlib.import_module(BUILTIN_METHODS)
    return METHOD_SETTINGS


def method_settings(method: str):
    """The settings class registered with ``method`` (None: it has no settings of its own);
    an unknown method is an error listing the registered ones."""
    methods = registered_methods()
    if method not in methods:
        raise ConfigError(f"loss.method {method!r} is unknown; available: {', '.join(sorted(methods))}")
    return methods[method]


def method_settings_classes() -> dict:
    """Registered method name -> its settings class, for the methods that have one."""
    return {name: cls for name, cls in registered_methods().items() if cls is not None}


def _section(method: str, value):
    """A copy of ``value`` (settings or a mapping of them) as method's settings class."""
    cls = method_settings(method)
    if cls is None:
        raise ConfigError(f"loss.{method}: method {method} has no settings of its own")
    if isinstance(value, cls):
        return dataclasses.replace(value)
    return _build(cls, value, f"loss.{method}.")


def _sections_field(cls):
    """The field that holds method sections (LossConfig.sections), or None."""
    return next((f.name for f in dataclasses.fields(cls) if f.metadata.get("method_sections")), None)


# Keys renamed since (old key -> the keys it sets now), still read with a warning once per
# key: the flat loss section before each method had its own. npo_beta was the beta of the
# npo method and of RepBend's NPO term alike.
RENAMED = {
    "loss.cb_alpha": ("loss.circuit_breaker.alpha",),
    "loss.cb_target_layers": ("loss.circuit_breaker.target_layers",),
    "loss.rmu_layer": ("loss.rmu.layer",),
    "loss.rmu_steering_coef": ("loss.rmu.steering_coef",),
    "loss.rmu_retain_coef": ("loss.rmu.retain_coef",),
    "loss.rmu_seed": ("loss.rmu.seed",),
    "loss.npo_beta": ("loss.npo.beta", "loss.repbend.unsafe_npo_beta"),
    "loss.dpo_beta": ("loss.dpo.beta",),
    "loss.ta_safe_weight": ("loss.task_arithmetic.safe_weight",),
    "loss.ta_unsafe_weight": ("loss.task_arithmetic.unsafe_weight",),
    **{f"loss.{name}": (f"loss.repbend.{name}",) for name in (
        "loss_mode", "target_layers", "safe_layers", "safe_coef", "unsafe_coef", "cosine_coef", "kl_coef",
        "paired_coef", "paired_positions", "norm", "kl_temperature", "kl_reduction", "cosine_rows",
        "cosine_positions", "unsafe_distance_cap", "refusal_ce_coef", "safe_kl_coef", "unsafe_npo_coef",
        "safe_includes_refusals")},
}
_WARNED: set = set()  # renamed keys already warned about in this process


def current_keys(key: str, warn: bool = True, where: str = "") -> tuple:
    """The keys that ``key`` sets: itself, or the new keys of a renamed one (RENAMED), with
    a FutureWarning once per key (a DeprecationWarning is hidden outside __main__, so a
    command-line user would never see it). ``where``: the file or override, for the message."""
    if key not in RENAMED:
        return (key,)
    if warn and key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(f"{where}config key {key} is deprecated; use {' and '.join(RENAMED[key])}", FutureWarning,
                      stacklevel=2)
    return RENAMED[key]


def _upgrade_loss(loss, warn: bool = True, where: str = ""):
    """A raw loss mapping with renamed keys moved into their method sections (a new
    mapping; the argument is left as it was). A renamed key and its new key with another
    value in the same mapping is an error."""
    if not isinstance(loss, dict) or not any(f"loss.{key}" in RENAMED for key in loss):
        return loss
    upgraded = {key: value for key, value in loss.items() if f"loss.{key}" not in RENAMED}
    for key, value in loss.items():
        if f"loss.{key}" not in RENAMED:
            continue
        for target in current_keys(f"loss.{key}", warn, where):
            _, section, name = target.split(".")
            given = loss.get(section) if isinstance(loss.get(section), dict) else {}
            if name in given and given[name] != value:
                raise ConfigError(f"loss.{key} (renamed {target}) and {target} are both given, with different values")
            upgraded[section] = {**(upgraded.get(section) or {}), name: value}
    return upgraded


def all_keys(cls, prefix: str = "") -> list:
    """Every dotted leaf key of a config dataclass (of LossConfig: every registered
    method's settings, ``loss.<method>.<setting>``)."""
    keys = []
    for name, annotation in _field_types(cls).items():
        if name == _sections_field(cls):
            for method, settings in method_settings_classes().items():
                keys += all_keys(settings, f"{prefix}{method}.")
        elif _section_class(annotation) is not None:
            keys += all_keys(_section_class(annotation), f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def field_annotation(key: str):
    """The type annotation of the config field at dotted ``key`` (e.g. ``train.lr``,
    ``loss.rmu.steering_coef``; a renamed key: of its first new key)."""
    *sections, name = current_keys(key)[0].split(".")
    cls = Config
    for section in sections:
        types_ = _field_types(cls)
        cls = _section_class(types_[section]) if section in types_ else method_settings_classes()[section]
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
    if isinstance(data.get("loss"), dict):
        data["loss"] = _upgrade_loss(data["loss"])
    for text in overrides:
        key, value = parse_override(text)
        set_value(data, key, value, f"override {text!r}")
    return data


def set_value(data: dict, key: str, value, where: str = "") -> None:
    """Set dotted ``key`` (a section, a setting, an alias or a renamed key) in a raw config
    mapping, creating the sections on the way."""
    valid = all_keys(Config)
    for target in current_keys(ALIASES.get(key, key), where=f"{where}: " if where else ""):
        if target not in valid and not any(v.startswith(target + ".") for v in valid):
            raise ConfigError(unknown_key(key, valid + list(ALIASES)))
        node = data
        parts = target.split(".")
        for part in parts[:-1]:
            if node.get(part) is None:  # an empty YAML section reads as null
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"{where or key}: {part} is not a section")
        node[parts[-1]] = value


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
    can say only how it differs from another one instead of copying it. A list replaces
    the included one; under ``KEY+:`` it is appended to it."""
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
    try:
        data = _upgraded(_resolve_paths(data, path.parent), f"{path}: ")
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    include = data.pop("include", None)
    if include is not None and not isinstance(include, str):
        raise ConfigError(f"{path}: include: expected one file name, got {include!r}")
    base = _read_with_includes(path.parent / include, (*seen, path.resolve())) if include else {}
    try:
        return _merged(base, data)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def merged_config(base: dict, top: dict) -> dict:
    """``top`` laid over ``base`` (raw config mappings), mappings merged key by key as
    ``include:`` does; renamed loss keys in either are moved into their sections first."""
    return _merged(_upgraded(base), _upgraded(top))


def _upgraded(data: dict, where: str = "") -> dict:
    if not isinstance(data.get("loss"), dict):
        return data
    return {**data, "loss": _upgrade_loss(data["loss"], where=where)}


def _merged(base: dict, top: dict) -> dict:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(key, str) and key.endswith("+"):
            key = key[:-1]
            before = merged.get(key) or []
            if not isinstance(value, list) or not isinstance(before, list):
                raise ConfigError(f"{key}+: appends a list to a list, got {value!r} after {before!r}")
            value = before + value
        elif isinstance(value, dict):
            value = _merged(merged[key] if isinstance(merged.get(key), dict) else {}, value)
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
    """The config as plain data, what config.yaml holds: each method's settings a section
    of loss named after the method."""
    data = dataclasses.asdict(config)
    data["loss"].update(data["loss"].pop(_sections_field(LossConfig)))
    return data


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


# Training settings that do not change what is trained: where and how often a run writes,
# threads, the divergence guard, the trackers. A resumed or reused run may change them.
RESUME_FREE = {"train.save_every", "train.keep_checkpoints", "train.log_every", "train.num_threads",
               "train.save_merged", "train.max_unsafe_distance", "train.divergence_factor", "train.divergence_window",
               "train.report_to"}


def changed_training_settings(saved_path: Path, config: Config) -> dict:
    """Dotted key -> (saved value, value in ``config``) for every training setting that
    differs from the resolved config saved at ``saved_path`` (empty when none is saved),
    but those in :data:`RESUME_FREE`."""
    if not saved_path.is_file():
        return {}
    saved = yaml.safe_load(saved_path.read_text()) or {}
    current = yaml.safe_load(yaml.safe_dump(to_dict(config), sort_keys=False))
    old, new = _flat(_trained_settings(saved)), _flat(_trained_settings(current))
    defaults = _flat(_trained_settings(to_dict(Config())))
    # A key the saved config lacks (it predates the setting) had the default's effect.
    old = {**{key: defaults[key] for key in new if key not in old and key in defaults}, **old}
    return {key: (old.get(key), new.get(key)) for key in sorted(set(old) | set(new))
            if old.get(key) != new.get(key) and key not in RESUME_FREE}


def _trained_settings(data: dict) -> dict:
    """The training sections of a config mapping; of the loss only what its method reads,
    the shared settings and the method's own section (another method's section changes
    nothing trained). A config saved before the per-method sections reads as the same
    settings in today's keys."""
    sections = {section: data.get(section) or {} for section in TRAINING_SECTIONS}
    loss = _upgrade_loss(sections["loss"], warn=False)
    shared = set(_field_types(LossConfig)) - {_sections_field(LossConfig)}
    method = loss.get("method", LossConfig.method)
    sections["loss"] = {key: value for key, value in loss.items() if key in shared or key == method}
    return sections


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config (every default filled in) as YAML, atomically."""
    write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))
