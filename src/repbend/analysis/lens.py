"""Logit lens: a layer's residual stream read through the model's final norm and
unembedding, as if the model stopped there (the paper's refusal-token figure).

At the last layer this is exactly the model's own logits; earlier layers show which
token the stream already points at.
"""
from __future__ import annotations

import re

import torch

from ..errors import ConfigError
from ..eval.judges.keywords import REFUSAL_OPENINGS, REFUSAL_PHRASES
from ..hidden import capture_hidden
from ..models import decoder_of, lm_head_logits

# Final-norm attribute of the backbone: Llama/Mistral/Qwen/Gemma, GPT-2, GPT-NeoX, Phi.
NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm")
# Words of the refusal phrases that carry the refusal (apology, negation, first person);
# the other words ("help", "provide", "with") are as common in answers that comply.
REFUSAL_WORD = re.compile(r"^(i|i'm|sorry|apolog\w*|cannot|can't|won't|wont|unable|not|no|nope|"
                          r"declin\w*|refus\w*|unfortunately|against|\w+n't)$")


def final_norm(model) -> torch.nn.Module:
    decoder = decoder_of(model)
    for name in NORM_NAMES:
        norm = getattr(decoder, name, None)
        if isinstance(norm, torch.nn.Module):
            return norm
    raise ConfigError(f"cannot find the final norm of {type(decoder).__name__} (looked for {', '.join(NORM_NAMES)})")


def lens_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """Logits of residual-stream states ``[..., D]`` (any layer), float32."""
    return lm_head_logits(model, final_norm(model)(hidden)).float()


def top_tokens(model, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(top token id, its probability) per row of ``hidden`` ``[..., D]``."""
    probs, ids = lens_logits(model, hidden).softmax(-1).max(-1)
    return ids, probs


def refusal_words() -> list[str]:
    """Refusal-bearing words of the keyword judge's phrases and openings."""
    words = {word for phrase in REFUSAL_PHRASES + REFUSAL_OPENINGS for word in re.findall(r"[a-z']+", phrase)}
    return sorted(word for word in words if REFUSAL_WORD.match(word))


def refusal_token_ids(tokenizer) -> set[int]:
    """The first token of each refusal word as the model would write it: lower case or
    capitalised, at the start of a text or after a space ("I", " cannot", "Sorry", ...).
    A top token in this set at the last prompt position means the stream points at a
    refusal; note "can't" contributes "can" in most tokenizers."""
    ids = set()
    for word in refusal_words():
        for variant in {word, word.capitalize()}:
            for text in (variant, " " + variant):
                encoded = tokenizer.encode(text, add_special_tokens=False)
                if encoded:
                    ids.add(encoded[0])
    return ids


@torch.no_grad()
def lens_grid(model, input_ids: torch.Tensor, layers: list[int], columns: range) -> dict:
    """Top token and probability per (layer, position) of one sequence ``[T]``;
    ``columns`` are the positions shown. Entry [l][c] is the lens's prediction of the
    token after position ``columns[c]``."""
    device = next(model.parameters()).device
    with capture_hidden(model, layers) as hidden:
        model(input_ids=input_ids[None].to(device))
        index = torch.tensor(list(columns), device=device)
        ids, probs = top_tokens(model, torch.stack([hidden[layer][0, index] for layer in layers]))
    return {"ids": ids.cpu(), "probs": probs.cpu()}
