"""Hidden states of a model: forward hooks that record the residual stream (always
removed), and the states at the last token of chat-rendered prompts, which the analysis
measures and the steering attack's refusal direction is made of."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch

from .models import decoder_of, find_blocks


# Older transformers blocks return (hidden, attentions, ...); newer ones the tensor.
def _output_tensor(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _with_tensor(output, tensor: torch.Tensor):
    return (tensor, *output[1:]) if isinstance(output, tuple) else tensor


@contextmanager
def _hooks(pairs: Iterable[tuple[torch.nn.Module, Callable]]) -> Iterator[None]:
    """Forward hooks on each (module, hook) pair while open, removed on exit, also when the
    body raises: a failed analysis or attack leaves the model as it was (the same model is
    then trained or evaluated)."""
    handles = []
    try:
        for module, hook in pairs:
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def capture_hidden(model, layers: Iterable[int]) -> Iterator[dict]:
    """While open, each forward writes ``{index: tensor [B, T, D]}`` into the yielded dict
    (overwriting the previous forward's): index 0 is the input embedding's output, i the
    output of decoder block i (the residual stream, before the final norm)."""
    wanted = set(layers)
    blocks = model.get_submodule(find_blocks(model).prefix)
    modules = {0: model.get_input_embeddings(), **{i + 1: block for i, block in enumerate(blocks)}}
    unknown = wanted - modules.keys()
    if unknown:
        raise ValueError(f"layers {sorted(unknown)} are out of range 0..{len(blocks)}")
    captured: dict = {}

    def recorder(index: int):
        def hook(module, inputs, output):
            captured[index] = _output_tensor(output).detach()

        return hook

    with _hooks((modules[index], recorder(index)) for index in sorted(wanted)):
        yield captured


@contextmanager
def shifted_hidden(model, layers: Iterable[int], shift: torch.Tensor) -> Iterator[None]:
    """While open, every forward pass of ``model`` subtracts ``shift`` ([D]) from the
    hidden states ``layers`` (1..number of blocks: the outputs of blocks layer - 1) at every
    position."""
    blocks = model.get_submodule(find_blocks(model).prefix)

    def hook(module, inputs, output):
        hidden = _output_tensor(output)
        return _with_tensor(output, hidden - shift.to(hidden.device, hidden.dtype))

    with _hooks((blocks[layer - 1], hook) for layer in layers):
        yield


class _Reached(Exception):
    """Raised once the wanted hidden state is captured: the blocks above it never run."""


@torch.no_grad()
def hidden_state(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, layer: int) -> torch.Tensor:
    """Hidden state ``layer`` (the output of block ``layer``, 1..number of blocks), [B, T, D],
    running only the blocks up to it (a text encoder that reads a middle layer pays for
    that layer, not the whole model)."""
    blocks = model.get_submodule(find_blocks(model).prefix)
    if not 1 <= layer <= len(blocks):
        raise ValueError(f"hidden state {layer} is out of range 1..{len(blocks)}")
    captured = {}

    def hook(module, inputs, output):
        captured["state"] = _output_tensor(output)
        raise _Reached

    with _hooks([(blocks[layer - 1], hook)]):
        try:
            decoder_of(model)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _Reached:
            pass
    return captured["state"]


def prompt_text(tokenizer, prompt: str) -> str:
    """``prompt`` as a user turn followed by the assistant header."""
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)


@torch.no_grad()
def last_token_states(model, tokenizer, prompts: list[str], layers: list[int], batch_size: int,
                      bar=None) -> dict[int, torch.Tensor]:
    """Per layer (see :func:`capture_hidden`), the hidden state at the last token of each
    prompt rendered by :func:`prompt_text`: ``{layer: [n, D]}`` (float32, CPU)."""
    device = next(model.parameters()).device
    decoder = decoder_of(model)  # the LM head over every position is not needed
    states = {layer: [] for layer in layers}
    for start in range(0, len(prompts), batch_size):
        texts = [prompt_text(tokenizer, p) for p in prompts[start:start + batch_size]]
        # Right padding: real tokens never attend to pads and keep their positions.
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False, padding_side="right")
        batch = {k: v.to(device) for k, v in batch.items()}
        with capture_hidden(model, layers) as hidden:
            decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        rows, last = torch.arange(len(texts), device=device), batch["attention_mask"].sum(1) - 1
        for layer in layers:
            states[layer].append(hidden[layer][rows, last].float().cpu())
        if bar is not None:
            bar.update(1)
    return {layer: torch.cat(parts) for layer, parts in states.items()}
