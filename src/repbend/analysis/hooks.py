"""Hidden states from forward hooks, in a context manager that always removes them."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

from ..models import find_blocks


def _output_tensor(output) -> torch.Tensor:
    # Older transformers blocks return (hidden, attentions, ...); newer ones the tensor.
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def capture_hidden(model, layers: Iterable[int]) -> Iterator[dict]:
    """While open, each forward writes ``{index: tensor [B, T, D]}`` into the yielded dict
    (overwriting the previous forward's): index 0 is the input embedding's output, i the
    output of decoder block i (the residual stream, before the final norm). The hooks are
    removed on exit, also when the body raises, so a failed analysis leaves the model as
    it was (the same model is then trained or evaluated)."""
    wanted = set(layers)
    blocks = model.get_submodule(find_blocks(model).prefix)
    modules = {0: model.get_input_embeddings(), **{i + 1: block for i, block in enumerate(blocks)}}
    unknown = wanted - modules.keys()
    if unknown:
        raise ValueError(f"layers {sorted(unknown)} are out of range 0..{len(blocks)}")
    captured: dict = {}
    handles = []

    def recorder(index: int):
        def hook(module, inputs, output):
            captured[index] = _output_tensor(output).detach()

        return hook

    try:
        for index in sorted(wanted):
            handles.append(modules[index].register_forward_hook(recorder(index)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()
