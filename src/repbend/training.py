"""The one training loop every method runs on (accelerate: devices, processes, precision).

Per optimizer step it runs ``grad_accum`` micro-batches, clips, steps, and appends one
line to ``metrics.jsonl`` (each loss term, total, grad norm, lr, tokens, tokens/s). It
checkpoints every ``save_every`` steps, resumes exactly (weights, optimizer, scheduler,
RNG, data position), and stops with :class:`TrainingDiverged` on a non-finite loss or
gradient, an unsafe distance beyond the configured bound, or a loss or gradient norm that
jumps far above its recent median, keeping the last good checkpoint (one written before
the diverged step).
"""
from __future__ import annotations

import json
import logging
import math
import os
import statistics
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import (
    atomic_dir, checkpoint_dir, checkpoint_step, commit_dir, finish_checkpoint, list_checkpoints, load_checkpoint,
    load_plain, rng_state, save_checkpoint, set_rng_state, temporary,
)
from .config import Config, changed_training_settings, save_config, to_dict
from .data.collate import Composite, Draw, MicroBatches, pair_rows
from .data.examples import RETAIN, SAFE, UNSAFE_SAFE, UNSAFE_UNSAFE
from .data.render import render_all
from .data.sets import build_sets, caps_from_config, recovery_rows, require_sets
from .errors import ConfigError, TrainingDiverged
from .methods import TrainingModule, build_method
from .methods.shards import Shards
from .models import attach_lora, drop_quantizer, find_blocks, load_model, load_tokenizer, resolve_device

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    output_dir: Path
    adapter_dir: Path
    steps: int
    last_metrics: dict
    model: object = None  # the trained model in memory (merged when save_merged)


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """accelerate's mixed_precision value: bf16 where the hardware does it natively."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_bf16() else "no"
    mapping = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
    if precision not in mapping:
        raise ConfigError(f"train.precision: {precision!r} is not one of auto, fp32, bf16, fp16")
    return mapping[precision]


def build_streams(config: Config, tokenizer, method) -> dict:
    """The four training sets rendered, arranged into the streams the method reads:
    safe = P_s + P_us, unsafe = P_uu, retain, and pairs (P_uu, P_us with one prompt),
    whose rows then leave the safe and unsafe streams. ``data.batch_composition=recipe``
    fills each item's safe rows with a P_s row and a refusal, and gives it two P_uu rows."""
    sets = build_sets(config.data.sources, caps_from_config(config.data), config.data.seed)
    needed = [kind for stream, kind in (("unsafe", UNSAFE_UNSAFE), ("retain", RETAIN)) if stream in method.streams]
    require_sets(sets, needed, config.data.sources)
    if "safe" in method.streams and not (sets[SAFE] or sets[UNSAFE_SAFE]):
        require_sets(sets, [SAFE], config.data.sources)
    d = config.data
    sets[UNSAFE_SAFE] = sets[UNSAFE_SAFE] + recovery_rows(sets, d.recovery_fraction, d.recovery_max_words, d.seed)
    rendered = {kind: render_all(tokenizer, rows, config.data) for kind, rows in sets.items()}
    refusals, unsafe_rows = rendered[UNSAFE_SAFE], rendered[UNSAFE_UNSAFE]
    streams = {}
    if "pairs" in method.streams:
        unpaired, pairs = pair_rows(refusals + unsafe_rows)
        if not pairs:
            why = "loss.repbend.paired_coef > 0" if method.name == "repbend" else f"loss.method={method.name}"
            raise ConfigError(f"{why} reads P_us/P_uu pairs (rows that share a pair_id); the data has none")
        streams["pairs"] = pairs
        refusals = [row for row in unpaired if row.kind == UNSAFE_SAFE]
        unsafe_rows = [row for row in unpaired if row.kind == UNSAFE_UNSAFE]
    named = {"safe": rendered[SAFE] + refusals, "unsafe": unsafe_rows, "retain": rendered[RETAIN]}
    if d.batch_composition == "recipe":
        for label, rows in (("P_s (safe)", rendered[SAFE]), ("refusal (P_us, unsafe_safe)", refusals)):
            if "safe" in method.streams and not rows:
                outside = " outside the P_us/P_uu pairs" if "pairs" in streams else ""
                raise ConfigError(f"data.batch_composition=recipe gives every item a {label} row, but the data has "
                                  f"none{outside}; add such rows or set data.batch_composition=streams")
        named["safe"] = Composite((Draw("safe", rendered[SAFE]), Draw("refusal", refusals)))
        named["unsafe"] = Composite((Draw("unsafe", unsafe_rows, per_item=2),))
    streams.update({name: rows for name, rows in named.items() if name in method.streams})
    return streams


class MetricsLog:
    """``metrics.jsonl``, one JSON line per optimizer step; a resumed run first drops the
    lines past its checkpoint so the file reads as one uninterrupted run."""

    def __init__(self, path: Path, keep_through_step: int):
        self.path = path
        lines = path.read_text().splitlines() if path.exists() else []
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= keep_through_step]
        path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")


class Progress:
    """A tqdm bar on a terminal; plain lines (about twenty per run) elsewhere, e.g. CI."""

    def __init__(self, total: int, start: int, enabled: bool):
        self.total, self.enabled = total, enabled
        self.interactive = enabled and sys.stderr.isatty()
        self.every = max(1, total // 20)
        self.bar = None
        if self.interactive:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)

    def update(self, step: int, record: dict) -> None:
        summary = {k: round(v, 4) for k, v in record.items() if k in ("total", "safe_distance", "unsafe_distance", "kl")}
        if self.bar is not None:
            self.bar.set_postfix(summary, refresh=False)
            self.bar.update(1)
        elif self.enabled and (step % self.every == 0 or step == self.total):
            print(f"step {step}/{self.total} " + " ".join(f"{k}={v}" for k, v in summary.items()), flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def prepare(config: Config) -> tuple:
    """(tokenizer, LoRA model in train mode, method, streams) for a config: everything a
    training run, a benchmark or a test needs before the first step."""
    from accelerate.utils import set_seed

    set_seed(config.train.seed)
    tokenizer = load_tokenizer(config.model)
    model = load_model(config.model, tokenizer)
    method = build_method(config.loss, find_blocks(model).count)
    streams = build_streams(config, tokenizer, method)
    set_seed(config.train.seed)  # LoRA's initial weights do not depend on data loading
    model = attach_lora(model, config.lora, method.loss_layers)
    if config.train.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return tokenizer, model, method, streams


# Changes a resumed run accepts only when asked by name (--allow-change).
RESUME_ALLOWED = {"train.steps"}

# train.report_to: accelerate's trackers. Those that write files do so under
# <output_dir>/TRACKER_DIR (tensorboard: <output_dir>/trackers/repbend/); TRACKER_PROJECT
# is the project (wandb, comet_ml), experiment (mlflow) or run folder (tensorboard) name.
TRACKER_DIR = "trackers"
TRACKER_PROJECT = "repbend"
# What to pip install for each tracker.
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "comet_ml": "comet-ml",
                    "aim": "'aim<4'", "clearml": "clearml", "dvclive": "dvclive"}


def tracker_names(report_to) -> list:
    """train.report_to as a list of tracker names ([] for none); a ConfigError naming the
    package to install when a tracker's package is missing (accelerate would drop it)."""
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    names = list(dict.fromkeys(name for name in names if name != "none"))
    unknown = [name for name in names if name not in TRACKER_PACKAGES]
    if unknown:
        raise ConfigError(f"train.report_to: {', '.join(map(repr, unknown))} is not one of none, {', '.join(TRACKER_PACKAGES)}")
    if not names:
        return []
    import accelerate.utils

    missing = [name for name in names if not getattr(accelerate.utils, f"is_{name}_available")()]
    if missing:
        raise ConfigError(f"train.report_to: {', '.join(missing)} needs its package, which is not installed; "
                          f"install it with: pip install {' '.join(TRACKER_PACKAGES[name] for name in missing)}")
    return names


def tracker_config(config: Config) -> dict:
    """The resolved config as trackers take it: dotted keys -> bool, int, float or str
    (lists, mappings and None as JSON text)."""
    flat = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict) and value:
                walk(value, f"{prefix}{key}.")
            elif isinstance(value, (bool, int, float, str)):
                flat[f"{prefix}{key}"] = value
            else:
                flat[f"{prefix}{key}"] = json.dumps(value, default=str)

    walk(to_dict(config), "")
    return flat


def _tracker_kwargs(trackers: list, out: Path, start: int) -> dict:
    kwargs = {"mlflow": {"run_name": out.name}, "dvclive": {"dir": str(out / TRACKER_DIR / "dvclive")}}
    if "WANDB_NAME" not in os.environ:
        kwargs["wandb"] = {"name": out.name}
    if start:
        # A resumed run: TensorBoard drops what the interrupted run logged past the
        # checkpoint, as metrics.jsonl does.
        kwargs["tensorboard"] = {"purge_step": start + 1}
    return {name: value for name, value in kwargs.items() if name in trackers}


def _finish_trackers(accelerator) -> None:
    """Flush and close the trackers. Not accelerator.end_training(): that also destroys the
    process group, which the adapter gather below and a caller training again need."""
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers = []


def check_resume_settings(saved_path: Path, config: Config, allowed: set) -> None:
    """Refuse to resume a run with changed training settings (they would be written to
    config.yaml while the checkpoint trains on with the old ones), naming each key."""
    unknown = set(allowed) - RESUME_ALLOWED
    if unknown:
        raise ConfigError(f"--allow-change: {', '.join(sorted(unknown))} cannot change on resume; "
                          f"allowed: {', '.join(sorted(RESUME_ALLOWED))}")
    changes = changed_training_settings(saved_path, config)
    changed = [key for key in changes if key not in allowed]
    if changed:
        listed = "; ".join(f"{key}: {changes[key][0]!r} -> {changes[key][1]!r}" for key in changed)
        hint = " (train.steps may grow with --allow-change train.steps)" if "train.steps" in changed else ""
        raise ConfigError(f"--resume: {saved_path} was trained with other settings: {listed}. Resume with the "
                          f"saved settings, or train into another output_dir{hint}")


def train(config: Config, resume: bool = False, progress: bool = True, allow_changes: frozenset = frozenset()) -> TrainResult:
    from accelerate import Accelerator
    from transformers import get_scheduler

    t = config.train
    out = Path(config.output_dir)
    checkpoints = out / "checkpoints"
    if not resume and list_checkpoints(checkpoints):
        raise ConfigError(f"{out} already holds a training run; pass --resume to continue it or choose another output_dir")
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    device = resolve_device(config.model.device)
    trackers = tracker_names(t.report_to)
    # Without trackers the Accelerator is built exactly as before (no logging folder).
    tracking = {"log_with": trackers, "project_dir": str(out / TRACKER_DIR)} if trackers else {}
    accelerator = Accelerator(
        mixed_precision=resolve_precision(t.precision, device), cpu=device.type == "cpu", gradient_accumulation_steps=t.grad_accum,
        **tracking,
    )
    if t.save_merged and _sharded(accelerator):
        raise ConfigError("train.save_merged needs unsharded weights: under DeepSpeed or FSDP merge the saved adapter afterwards")
    if resume:
        check_resume_settings(out / "config.yaml", config, set(allow_changes))

    tokenizer, model, method, streams = prepare(config)
    batches = MicroBatches(
        streams, t.micro_batch, config.data.seed, tokenizer.pad_token_id, config.data.group_by_length,
        rank=accelerator.process_index, world=accelerator.num_processes,
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    scheduler = get_scheduler(t.scheduler, optimizer, num_warmup_steps=t.warmup_steps, num_training_steps=t.steps)
    _configure_deepspeed(accelerator, t)
    # LoRA is attached before prepare(), so the engine partitions and trains the adapter
    # with the rest; the frozen passes run the same engine with the adapter disabled.
    module, optimizer = accelerator.prepare(TrainingModule(model, method, Shards(accelerator.num_processes)), optimizer)
    runner = accelerator.unwrap_model(module).runner

    start = 0
    if resume:
        found = list_checkpoints(checkpoints)
        if found and _sharded(accelerator):
            accelerator.load_state(str(found[-1]))
            scheduler.load_state_dict(load_plain(found[-1] / "scheduler.pt"))
            start = checkpoint_step(found[-1])
        elif found:
            start, rng = load_checkpoint(found[-1], model, optimizer, scheduler)
            set_rng_state(rng[accelerator.process_index])
        if found:
            log.info("resumed from %s", found[-1])
    # Written once the checkpoint has loaded: a refused resume leaves the old file alone.
    if accelerator.is_main_process:
        save_config(config, out / "config.yaml")
    metrics = MetricsLog(out / "metrics.jsonl", start) if accelerator.is_main_process else None
    if trackers:
        accelerator.init_trackers(TRACKER_PROJECT, config=tracker_config(config), init_kwargs=_tracker_kwargs(trackers, out, start))
    bar = Progress(t.steps, start, progress and accelerator.is_main_process)
    record: dict = {}
    guard = JumpGuard(t.divergence_factor, t.divergence_window)
    try:
        for step in range(start + 1, t.steps + 1):
            record = _train_step(step, t, batches, module, optimizer, scheduler, runner, accelerator, guard)
            if metrics is not None:
                metrics.write(record)
            if trackers:
                accelerator.log({k: v for k, v in record.items() if k != "step" and v is not None}, step=step)
            bar.update(step, record)
            if step % t.save_every == 0 or step == t.steps:
                _save(checkpoints, step, model, optimizer, scheduler, t.keep_checkpoints, accelerator)
    except TrainingDiverged as error:
        found = list_checkpoints(checkpoints)
        kept = f"the last good checkpoint is {found[-1]}" if found else "no checkpoint had been written yet"
        raise TrainingDiverged(f"{error}; {kept}") from None
    finally:
        bar.close()
        _finish_trackers(accelerator)

    adapter_dir = out / "adapter"
    # Every process takes part: ZeRO-3 and FSDP gather the sharded weights to the main one.
    state = accelerator.get_state_dict(module)
    if accelerator.is_main_process:
        tmp = atomic_dir(adapter_dir)
        model.save_pretrained(str(tmp), state_dict={name.removeprefix("model."): value for name, value in state.items()})
        tokenizer.save_pretrained(str(tmp))
        commit_dir(tmp, adapter_dir)
        if t.save_merged:
            model = save_merged(model, tokenizer, out / "merged")
    accelerator.wait_for_everyone()
    return TrainResult(out, adapter_dir, t.steps, record, model.eval())


def _train_step(step, t, batches, module, optimizer, scheduler, runner, accelerator, guard) -> dict:
    started = time.perf_counter()
    accelerator.unwrap_model(module).method.start_step(step, t.steps)
    tokens_before = (runner.tokens.real, runner.tokens.processed)
    sums: dict = {}
    for micro in range(t.grad_accum):
        micro_batch = {name: batch.to(accelerator.device) for name, batch in batches((step - 1) * t.grad_accum + micro).items()}
        # accumulate() holds the gradient sync until the last micro-batch and divides the
        # loss by grad_accum (under DeepSpeed the engine does both and steps in backward).
        with accelerator.accumulate(module):
            with accelerator.autocast():
                output = module(micro_batch)
            if not torch.isfinite(output.total):
                raise TrainingDiverged(_diverged(step, f"the loss is {float(output.total.detach())}", output.terms))
            # The loss is this process's share of the global one; the engines average
            # gradients over processes (methods.shards).
            accelerator.backward(output.total * accelerator.num_processes)
        for name, value in {"total": float(output.total.detach()), **output.terms}.items():
            sums[name] = sums.get(name, 0.0) + value / t.grad_accum
    if not _deepspeed(accelerator):  # DeepSpeed keeps its own gradient buffers
        # DDP hands zeros to trainable parameters the loss did not reach (at step 1 only
        # the cosine term has a gradient: LoRA blocks above the target layers get none).
        # One process gives them zeros too, so AdamW's step counts, hence the run, do not
        # depend on the number of processes.
        for group in optimizer.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    param.grad = torch.zeros_like(param)
    real = runner.tokens.real - tokens_before[0]
    processed = runner.tokens.processed - tokens_before[1]
    if accelerator.num_processes > 1:
        names = sorted(sums)
        values = [sums[n] for n in names] + [real, processed]
        reduced = accelerator.reduce(torch.tensor(values, dtype=torch.float64, device=accelerator.device), "sum").tolist()
        sums = dict(zip(names, reduced))
        real, processed = int(reduced[-2]), int(reduced[-1])
    # All parameters: FSDP computes the global norm only when given the whole model's.
    grad_norm = accelerator.clip_grad_norm_(module.parameters(), t.max_grad_norm if t.max_grad_norm else math.inf)
    # DeepSpeed has stepped already (in the last backward) and may not report the norm.
    grad_norm = float(grad_norm) if grad_norm is not None else None
    if grad_norm is not None and not math.isfinite(grad_norm):
        raise TrainingDiverged(_diverged(step, f"the gradient norm is {grad_norm}", sums))
    if t.max_unsafe_distance is not None and sums.get("unsafe_distance", 0.0) > t.max_unsafe_distance:
        raise TrainingDiverged(
            _diverged(step, f"the unsafe distance {sums['unsafe_distance']:.4g} exceeds train.max_unsafe_distance={t.max_unsafe_distance}", sums)
        )
    guard.check(step, sums, grad_norm)  # before the optimizer step: a diverged step is never saved
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    elapsed = time.perf_counter() - started
    return {
        "step": step,
        **sums,
        "grad_norm": grad_norm,
        "lr": lr,
        "tokens": real,
        "processed_tokens": processed,
        "tokens_per_s": real / elapsed if elapsed > 0 else 0.0,
        "seconds": elapsed,
    }


class JumpGuard:
    """Stops a run whose |loss| or gradient norm jumps to ``factor`` x its level: the
    largest of its median over the last ``window`` steps, its median over the first steps
    and 1 (a loss that converges towards 0, as DPO's does, would otherwise make every
    later wobble a jump). A loss of -1e10 is finite, so the non-finite check alone keeps
    training and checkpointing through it. Off when ``factor`` is None."""

    MIN_HISTORY = 3
    FLOOR = 1.0  # a loss starting at 0 (RepBend's distances at step 1) is not a level to jump from

    def __init__(self, factor: float | None, window: int):
        self.factor = factor
        self.recent = {"|loss|": deque(maxlen=window), "gradient norm": deque(maxlen=window)}
        self.first = {name: [] for name in self.recent}

    def check(self, step: int, sums: dict, grad_norm: float | None) -> None:
        if self.factor is None:
            return
        values = {"|loss|": abs(sums["total"]), "gradient norm": grad_norm}
        for name, value in values.items():
            if value is None or len(self.recent[name]) < self.MIN_HISTORY:
                continue
            level = max(statistics.median(self.recent[name]), statistics.median(self.first[name]), self.FLOOR)
            if level > 0 and value > self.factor * level:
                raise TrainingDiverged(_diverged(
                    step, f"the {name} {value:.4g} is over train.divergence_factor={self.factor:g} x its level "
                          f"({level:.4g}: the largest of its recent median, its first steps' median and 1)", sums))
        for name, value in values.items():
            if value is not None:
                self.recent[name].append(value)
                if len(self.first[name]) < self.MIN_HISTORY:
                    self.first[name].append(value)


def _diverged(step: int, what: str, terms: dict) -> str:
    detail = ", ".join(f"{k}={v:.4g}" for k, v in terms.items())
    return f"training diverged at step {step}: {what} ({detail})"


def _deepspeed(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def _sharded(accelerator) -> bool:
    """DeepSpeed ZeRO and FSDP split weights or optimizer state over processes."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)


def _configure_deepspeed(accelerator, t) -> None:
    """No DataLoader goes through prepare(), so DeepSpeed learns the batch, accumulation
    and clipping from the config here (the accelerate config files leave them out)."""
    if not _deepspeed(accelerator):
        return
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = t.micro_batch // accelerator.num_processes
    ds["gradient_accumulation_steps"] = t.grad_accum
    ds["gradient_clipping"] = t.max_grad_norm or 0.0


def _save(root, step, model, optimizer, scheduler, keep, accelerator) -> None:
    if _sharded(accelerator):
        # Each process writes its part of the weights and optimizer state (and its RNG
        # state) through accelerate; the main process completes the folder.
        final = checkpoint_dir(root, step)
        if accelerator.is_main_process:
            atomic_dir(final)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(temporary(final)))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            torch.save(scheduler.state_dict(), temporary(final) / "scheduler.pt")
            finish_checkpoint(temporary(final), final, step, keep)
        accelerator.wait_for_everyone()
        return
    states = accelerator.gather_for_metrics([rng_state()], use_gather_object=True) if accelerator.num_processes > 1 else [rng_state()]
    if accelerator.is_main_process:
        save_checkpoint(root, step, model, optimizer, scheduler, dict(enumerate(states)), keep)
    accelerator.wait_for_everyone()


def save_merged(model, tokenizer, folder: Path):
    """Merge LoRA into the base weights (in place) and save plain safetensors that
    ``AutoModelForCausalLM.from_pretrained`` loads; returns the merged model."""
    merged = model.merge_and_unload()
    drop_quantizer(merged)
    tmp = atomic_dir(folder)
    merged.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    commit_dir(tmp, folder)
    return merged
