"""Task arithmetic: a weight operation, not a loss.

Two LoRA runs on the one training loop, each with the full step budget: ``safe`` learns
the safe task (``refusal_sft``: P_s answers, P_us refusals, retain chat) and ``unsafe``
the harmful one (``sft_unsafe``: P_uu answers). Their merged deltas are the task vectors,
and ``merged/`` holds theta0 + a * tau_safe - b * tau_unsafe (loss.task_arithmetic.safe_weight
= 0.5, loss.task_arithmetic.unsafe_weight = 0.1) as plain safetensors that evaluation loads
as a model.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from ..atomic import write_text
from ..cache import file_digest
from ..config import Config, LossConfig
from ..errors import ConfigError
from ..models import load_model, load_tokenizer
from ..training import save_merged, train
from .run import training_is_done

RUNS = (("safe", "refusal_sft"), ("unsafe", "sft_unsafe"))
RECORD = "merge.json"


def trained(config: Config, progress: bool = True) -> Path:
    """The adapter of a finished run with this config: reused when it exists, resumed
    when a run was killed, trained otherwise."""
    out = Path(config.output_dir)
    if not training_is_done(config):
        train(config, resume=(out / "checkpoints").exists(), progress=progress)
    return out / "adapter"


def merge_task_vectors(model_config, adapters: dict, weights: dict, folder: Path) -> Path:
    """Save theta0 + sum of weights[name] * (merged LoRA delta of adapters[name]) to
    ``folder``. Scaling an adapter's B matrices scales its delta B A exactly."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    tokenizer = load_tokenizer(model_config)
    names = list(adapters)
    model = PeftModel.from_pretrained(load_model(model_config, tokenizer), str(adapters[names[0]]), adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(str(adapters[name]), adapter_name=name)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoraLayer):
                for name in names:
                    if name in module.lora_B:
                        module.lora_B[name].weight.mul_(weights[name])
    model.base_model.set_adapter(names)  # merge_and_unload merges the active adapters
    save_merged(model, tokenizer, folder)
    return folder


def task_arithmetic(config: Config, progress: bool = True) -> Path:
    """Train (or reuse) both runs under ``output_dir`` and write ``output_dir/merged``."""
    out = Path(config.output_dir)
    # Each run's loss holds only what it reads, so new merge weights reuse both runs.
    adapters = {
        part: trained(dataclasses.replace(config, output_dir=str(out / part),
                                          loss=LossConfig(method=method, retain_coef=config.loss.retain_coef)), progress)
        for part, method in RUNS
    }
    settings = config.loss.section("task_arithmetic")
    weights = {"safe": settings.safe_weight, "unsafe": -settings.unsafe_weight}
    record = {"weights": weights,
              "adapters": {part: file_digest(path / "adapter_model.safetensors") for part, path in adapters.items()}}
    merged, saved = out / "merged", out / RECORD
    if saved.is_file() and (merged / "config.json").is_file():
        if json.loads(saved.read_text()) == record:
            return merged
        # Evaluation caches generations by model folder: never change a merge in place.
        raise ConfigError(f"{merged} holds a merge with other settings; choose another output_dir")
    merge_task_vectors(config.model, adapters, weights, merged)
    write_text(saved, json.dumps(record, indent=2))
    return merged
