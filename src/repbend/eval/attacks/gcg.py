"""GCG (Zou et al. 2023, Greedy Coordinate Gradient): an adversarial suffix after the
behavior, optimised token by token so that the model's answer starts with the target.

Each step takes the gradient of the target loss with respect to the one-hot suffix
tokens, samples ``search_width`` candidates that each swap one position for one of the
``topk`` tokens with the most negative gradient, keeps the candidates whose text
tokenizes back to the same ids inside the prompt, and moves to the candidate with the
lowest loss. Defaults are HarmBench's (500 steps, 20 "!" tokens, 512 candidates, top 256,
ASCII tokens only); the best suffix seen is returned. Each behavior's result (best suffix,
its ids, the loss curve) is saved as JSON under the cache folder, with the key naming the
model and row, and reused.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ...errors import RepbendError
from ...types import AttackedPrompt, BehaviorRow
from . import Attack, AttackContext, register
from .simple import GENERIC_OPENING, request_text, user_turn
from .whitebox import (
    PromptLayout,
    ResultCache,
    TargetLoss,
    build_layout,
    require_white_box,
    row_seed,
    settings_from,
    write_json_atomic,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GCGSettings:
    steps: int = 500
    search_width: int = 512  # candidates per step
    topk: int = 256  # token substitutions per position, by negative gradient
    batch_size: int = 128  # candidates per forward pass (speed and memory only)
    early_stop_loss: float = 0.05  # also stops once greedy decoding gives the target
    init: str = " ".join(["!"] * 20)
    allow_non_ascii: bool = False


@dataclass(frozen=True)
class SuffixResult:
    suffix: str
    suffix_ids: list
    loss: float
    initial_loss: float
    steps: int
    losses: list  # the loss curve: the start, then the chosen candidate's loss at each step


def allowed_tokens(tokenizer, vocab_size: int, allow_non_ascii: bool) -> torch.Tensor:
    """[vocab_size] bool: tokens a suffix may use. Never special or added tokens, nor ids
    past the tokenizer's vocabulary; by default only printable ASCII."""
    allowed = torch.zeros(vocab_size, dtype=torch.bool)
    excluded = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    ids = [i for i in range(min(vocab_size, len(tokenizer))) if i not in excluded]
    for token_id, text in zip(ids, tokenizer.batch_decode([[i] for i in ids])):
        allowed[token_id] = bool(text) and (allow_non_ascii or (text.isascii() and text.isprintable()))
    return allowed


def embed_one_hot(embedding, one_hot: torch.Tensor) -> torch.Tensor:
    """[n, V] one-hot -> [n, D] embeddings, as the embedding layer would give them
    (Gemma's layer scales its output)."""
    embeds = one_hot @ embedding.weight
    scale = getattr(embedding, "embed_scale", None)
    return embeds if scale is None else embeds * scale


def token_gradient(target_loss: TargetLoss, embedding, ids: torch.Tensor) -> torch.Tensor:
    """[n] suffix ids -> [n, V] gradient of the target loss w.r.t. the one-hot tokens."""
    weight = embedding.weight
    with torch.enable_grad():
        one_hot = F.one_hot(ids.to(weight.device), weight.shape[0]).to(weight.dtype)
        one_hot.requires_grad_()
        loss, _ = target_loss(embed_one_hot(embedding, one_hot)[None])
        return torch.autograd.grad(loss[0], one_hot)[0]


def sample_candidates(ids: torch.Tensor, grad: torch.Tensor, allowed: torch.Tensor, settings: GCGSettings,
                      generator: torch.Generator) -> torch.Tensor:
    """[search_width, n] copies of ``ids`` with one random position each swapped for a
    random one of that position's top-k tokens by negative gradient."""
    scores = (-grad).float().cpu().masked_fill(~allowed, float("-inf"))
    top = scores.topk(min(settings.topk, int(allowed.sum())), dim=1).indices  # [n, k]
    positions = torch.randint(0, len(ids), (settings.search_width,), generator=generator)
    picks = torch.randint(0, top.shape[1], (settings.search_width,), generator=generator)
    candidates = ids.repeat(settings.search_width, 1)
    candidates[torch.arange(settings.search_width), positions] = top[positions, picks]
    return candidates


def attack_texts(tokenizer, layout: PromptLayout, candidates: torch.Tensor) -> list:
    """The text of each [n] row of ``candidates`` as it reads after the behavior: decoded
    behind the last ``before`` token, so tokenizers that drop a leading space at the start
    of a decode (SentencePiece) keep it."""
    anchor = layout.before_ids[-1:].tolist()
    anchor_text = tokenizer.decode(anchor, clean_up_tokenization_spaces=False)
    texts = tokenizer.batch_decode([anchor + row for row in candidates.tolist()], clean_up_tokenization_spaces=False)
    return [text[len(anchor_text) :] for text in texts]


def consistent(tokenizer, layout: PromptLayout, candidates: torch.Tensor) -> torch.Tensor:
    """The candidates whose text starts with the separating space and, put in the prompt,
    tokenizes back to exactly ``before | candidate | after``: what is optimised is what
    the model sees at evaluation."""
    texts = attack_texts(tokenizer, layout, candidates)
    encoded = tokenizer([layout.prompt_text(text) for text in texts], add_special_tokens=False)["input_ids"]
    before, after = layout.before_ids.tolist(), layout.after_ids.tolist()
    keep = [
        i for i, (text, ids, candidate) in enumerate(zip(texts, encoded, candidates.tolist()))
        if text.startswith(" ") and ids == before + candidate + after
    ]
    return candidates[keep]


@torch.no_grad()
def candidate_losses(target_loss: TargetLoss, embedding, candidates: torch.Tensor,
                     batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[C, n] candidates -> (loss [C], target generated [C]) on the CPU."""
    losses, generated = [], []
    for chunk in candidates.split(batch_size):
        loss, done = target_loss(embedding(chunk.to(embedding.weight.device)))
        losses.append(loss.cpu())
        generated.append(done.cpu())
    return torch.cat(losses), torch.cat(generated)


def optimise_suffix(model, tokenizer, layout: PromptLayout, settings: GCGSettings, allowed: torch.Tensor,
                    seed: int) -> SuffixResult:
    """Run GCG from ``layout.attack_ids``; the best suffix seen, its loss and the step count."""
    generator = torch.Generator().manual_seed(seed)
    embedding = model.get_input_embeddings()
    target_loss = TargetLoss(model, layout)
    current = layout.attack_ids
    losses, generated = candidate_losses(target_loss, embedding, current[None], 1)
    initial_loss = best_loss = losses.item()
    best_ids, best_generated = current, generated.item()
    curve = [initial_loss]
    steps = 0
    while steps < settings.steps and best_loss > settings.early_stop_loss and not best_generated:
        grad = token_gradient(target_loss, embedding, current)
        candidates = consistent(tokenizer, layout, sample_candidates(current, grad, allowed, settings, generator))
        if len(candidates) == 0:
            raise RepbendError(
                "gcg: no candidate suffix tokenizes back to its ids inside the prompt; try another option 'init'"
            )
        losses, generated = candidate_losses(target_loss, embedding, candidates, settings.batch_size)
        index = int(losses.argmin())
        current = candidates[index]
        curve.append(losses[index].item())
        steps += 1
        if losses[index].item() < best_loss:
            best_ids, best_loss, best_generated = current, losses[index].item(), bool(generated[index])
    text = attack_texts(tokenizer, layout, best_ids[None])[0]
    return SuffixResult(text[1:], best_ids.tolist(), best_loss, initial_loss, steps, curve)


@register
class GCGAttack(Attack):
    """User message = behavior + " " + optimised suffix; meta has the losses and steps."""

    name = "gcg"

    def prepare(self, rows: list[BehaviorRow], context: AttackContext) -> list[AttackedPrompt]:
        require_white_box(context, self.name)
        settings = settings_from(GCGSettings, context.options, self.name)
        cache = ResultCache(context, self.name, settings, ".json")
        model, tokenizer = context.model, context.tokenizer
        allowed = None  # built on the first behavior that is not cached
        prompts = []
        for row in rows:
            behavior, target = request_text(row), row.target or GENERIC_OPENING
            path = cache.path(row, target)
            if path is not None and path.is_file():
                result = SuffixResult(**json.loads(path.read_text())["result"])
            else:
                if allowed is None:
                    vocab_size = model.get_input_embeddings().weight.shape[0]
                    allowed = allowed_tokens(tokenizer, vocab_size, settings.allow_non_ascii)
                layout = build_layout(tokenizer, behavior, " " + settings.init, target)
                result = optimise_suffix(model, tokenizer, layout, settings, allowed, row_seed(context.seed, row))
                log.info("gcg %s: loss %.3f -> %.3f in %d steps",
                         row.id, result.initial_loss, result.loss, result.steps)
                if path is not None:
                    write_json_atomic(path, {"key": cache.key(row, target), "result": asdict(result)})
            prompts.append(AttackedPrompt(
                row=row,
                attack=self.name,
                messages=user_turn(f"{behavior} {result.suffix}"),
                meta={"loss": result.loss, "initial_loss": result.initial_loss, "steps": result.steps,
                      "suffix": result.suffix, "result_file": None if path is None else str(path)},
            ))
        return prompts
