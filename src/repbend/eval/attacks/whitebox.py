"""What the white-box optimising attacks (GCG, input embedding) share: the prompt laid
out around the behavior, the target loss behind a cached prompt prefix, settings from
attack options, and the on-disk cache of optimised results.

A prompt is ``before | attack | after`` followed by the target: ``before`` is the chat
template up to and including the behavior, ``attack`` the optimised part at the end of
the user turn (its text starts with the space that separates it from the behavior),
``after`` the rest of the user turn and the assistant header. Splitting one rendering of
the whole prompt keeps the ids exactly those the model sees at evaluation.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ...config import _build as build_dataclass
from ...atomic import write_text
from ...errors import ConfigError, RepbendError
from ...types import BehaviorRow
from . import SHARED_OPTIONS

# Private-use characters: no chat template or behavior contains them.
PLACEHOLDER = "\ue000attack\ue000"


@dataclass(frozen=True)
class PromptLayout:
    """Token ids (1-D LongTensors, CPU) of ``before | attack | after`` and of the target,
    and the template text around the attack."""

    before_ids: torch.Tensor
    attack_ids: torch.Tensor
    after_ids: torch.Tensor
    target_ids: torch.Tensor
    before_text: str
    after_text: str

    def prompt_text(self, attack_text: str) -> str:
        return self.before_text + attack_text + self.after_text


def build_layout(tokenizer, behavior: str, attack_text: str, target: str) -> PromptLayout:
    """Render the user turn ``behavior + attack_text`` with the chat template and the
    assistant header, tokenize it once and split the ids where the attack text starts
    and ends. The target is tokenized on its own, as the model would generate it."""
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": behavior + PLACEHOLDER}], tokenize=False, add_generation_prompt=True
    )
    if rendered.count(PLACEHOLDER) != 1:
        raise RepbendError("the chat template does not keep the user message verbatim; cannot place the attack")
    before_text, after_text = rendered.split(PLACEHOLDER)
    start, end = len(before_text), len(before_text) + len(attack_text)
    encoded = tokenizer(before_text + attack_text + after_text, add_special_tokens=False, return_offsets_mapping=True)
    regions = {"before": [], "attack": [], "after": []}
    for token, (token_start, token_end) in zip(encoded["input_ids"], encoded["offset_mapping"]):
        if token_end <= start:
            regions["before"].append(token)
        elif token_start >= end:
            regions["after"].append(token)
        elif token_start >= start and token_end <= end:
            regions["attack"].append(token)
        else:
            raise RepbendError(f"the tokenizer merges the attack text {attack_text!r} with the prompt around it")
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    if not regions["attack"] or not target_ids:
        raise RepbendError(f"the attack text {attack_text!r} or the target {target!r} renders to no tokens")
    as_tensor = lambda ids: torch.tensor(ids, dtype=torch.long)  # noqa: E731
    return PromptLayout(
        as_tensor(regions["before"]), as_tensor(regions["attack"]), as_tensor(regions["after"]),
        as_tensor(target_ids), before_text, after_text,
    )


class TargetLoss:
    """Cross-entropy of the target after ``before | attack | after`` for a batch of attack
    embeddings. ``before`` runs once; its KV cache is copied for every call."""

    def __init__(self, model, layout: PromptLayout):
        self.model = model
        embedding = model.get_input_embeddings()
        device = embedding.weight.device
        with torch.no_grad():
            self.prefix_cache = model(input_ids=layout.before_ids[None].to(device), use_cache=True).cache
            self.tail_embeds = embedding(torch.cat([layout.after_ids, layout.target_ids])[None].to(device))
        self.target_ids = layout.target_ids.to(device)

    def __call__(self, attack_embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """attack_embeds [B, n, D] -> (loss [B] float32 mean over target tokens,
        generated [B] bool: greedy decoding would produce the whole target)."""
        batch = attack_embeds.shape[0]
        cache = copy.deepcopy(self.prefix_cache)  # the forward pass appends to it
        cache.batch_repeat_interleave(batch)
        inputs = torch.cat([attack_embeds, self.tail_embeds.expand(batch, -1, -1)], dim=1)
        n_target = len(self.target_ids)
        # The logits at the last n_target + 1 positions, minus the last, predict the target.
        logits = self.model(
            inputs_embeds=inputs, cache=cache, use_cache=True, logits_to_keep=n_target + 1
        ).logits[:, :-1].float()
        targets = self.target_ids.expand(batch, -1)
        loss = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").mean(dim=1)
        return loss, (logits.argmax(dim=-1) == targets).all(dim=1)


def settings_from(settings_class, options: dict, attack: str):
    """The attack's settings dataclass from its options, checked and converted as config
    values are (so ``lr: 1e-4``, a string to YAML, is a number); unknown names are an error."""
    own = {name: value for name, value in options.items() if name not in SHARED_OPTIONS}
    return build_dataclass(settings_class, own, f"eval.attack_options.{attack}.")


def require_white_box(context, attack: str) -> None:
    if context.model is None or context.tokenizer is None:
        raise ConfigError(f"attack {attack!r} needs the model's weights: use the hf backend")


def row_seed(seed: int, row: BehaviorRow) -> int:
    """A seed per behavior, so a result does not depend on which rows ran before it."""
    return int(hashlib.sha256(f"{seed}:{row.id}".encode()).hexdigest()[:15], 16)


def weights_fingerprint(model) -> str:
    """An identity for a model whose options carry none: a strided sample of every weight."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().flatten()
        digest.update(name.encode())
        digest.update(flat[:: max(1, flat.numel() // 1024)].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


class ResultCache:
    """Optimised results on disk, one file per behavior under ``cache_dir/<attack>/``,
    named by the model's identity (``options["identity"]``, else a weight fingerprint),
    the behavior, the target, the seed and the settings that change a result."""

    def __init__(self, context, attack: str, settings, extension: str):
        self.folder = Path(context.cache_dir) / attack if context.cache_dir is not None else None
        self.extension = extension
        if self.folder is not None:
            self.common = {
                "model": context.options.get("identity") or weights_fingerprint(context.model),
                "dtype": str(context.model.get_input_embeddings().weight.dtype),
                "settings": {name: value for name, value in asdict(settings).items() if name != "batch_size"},
                "seed": context.seed,
            }

    def key(self, row: BehaviorRow, target: str) -> dict:
        """What the file for ``row`` holds a result of; also written into it, so each file
        says which model and row it belongs to."""
        return {**self.common, "behavior": [row.id, row.prompt, row.context, target]}

    def path(self, row: BehaviorRow, target: str) -> Path | None:
        """The file for ``row``; None without a cache folder."""
        if self.folder is None:
            return None
        key = json.dumps(self.key(row, target), sort_keys=True)
        readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", row.id)[:80]
        return self.folder / f"{readable}-{hashlib.sha256(key.encode()).hexdigest()[:16]}{self.extension}"


def write_json_atomic(path: Path, data: dict) -> None:
    write_text(path, json.dumps(data, indent=1))
