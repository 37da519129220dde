"""What `repbend analyze` measures on one model state (base or bent): last-prompt-token
activations per layer, logit-lens grids, and their geometry and refusal-token shares.

One copy of the weights: the base model is the PEFT model inside ``disable_adapter()``.
Each prompt batch is one forward per model state; hooks record every analysed layer.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..data.benchmarks import load_benchmark
from ..data.examples import UNSAFE_UNSAFE
from ..data.readers import read_generic
from ..errors import ConfigError
from ..hidden import last_token_states
from .geometry import layer_geometry, pca_2d
from .lens import lens_grid, top_tokens


def adapter_folder(path: str | Path) -> Path:
    """An adapter folder, or a training run folder holding ``adapter/``."""
    path = Path(path)
    for folder in (path, path / "adapter"):
        if (folder / "adapter_model.safetensors").is_file():
            return folder
    raise ConfigError(f"analysis.adapter: {path} holds no adapter_model.safetensors (nor adapter/ with one)")


def load_rows(path: Path, limit, key: str) -> list:
    if not path.is_file():
        raise ConfigError(f"analysis.{key}: {path} does not exist; build the data first (`repbend data`) "
                          "or give a JSONL file with a prompt column")
    return load_benchmark("generic", path, limit=limit)


def forced_answer(unsafe_rows: list, data_dir: Path, answer_text: str) -> tuple[str, str, str]:
    """(prompt, answer, where from) for the teacher-forced heat map: an unsafe row's
    target, else the first P_uu row of the built training data, else ``answer_text``."""
    for row in unsafe_rows:
        if row.target:
            return row.prompt, row.target, f"target of {row.id}"
    train = data_dir / "train.jsonl"
    if train.is_file():
        for example in read_generic(train):
            if example.kind == UNSAFE_UNSAFE:
                return example.messages[-1]["content"], example.response, f"P_uu {example.source}"
    return unsafe_rows[0].prompt, answer_text, "analysis.answer_text"


def token_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def last_token_states_and_lens(model, tokenizer, prompts: list[str], layers: list[int], batch_size: int, bar=None):
    """Per layer, the last-prompt-token activations ``[n, D]`` (float32, CPU), and the
    logit lens's top token id there, ``[n, len(layers)]``."""
    states = last_token_states(model, tokenizer, prompts, layers, batch_size, bar)
    weight = next(model.parameters())  # the states in the model's own dtype: the lens reads them as they were
    with torch.no_grad():
        top_id, _ = top_tokens(model, torch.stack([states[layer] for layer in layers], 1).to(weight.device, weight.dtype))
    return states, top_id.cpu()


def decode(tokenizer, token_id: int) -> str:
    return tokenizer.decode([int(token_id)])


def lens_numbers(model, tokenizer, prompt_ids: list[int], answer_ids: list[int], layers: list[int], positions: int) -> dict:
    ids = torch.tensor(prompt_ids + answer_ids)
    shown = min(positions, len(prompt_ids))
    columns = range(len(prompt_ids) - shown, len(ids))
    grid = lens_grid(model, ids, layers, columns)
    return {
        "tokens": [decode(tokenizer, ids[c]) for c in columns],
        "prompt_positions": shown,
        "top_tokens": [[decode(tokenizer, t) for t in row] for row in grid["ids"].tolist()],
        "top_probs": [[round(p, 4) for p in row] for row in grid["probs"].tolist()],
    }


@torch.no_grad()
def greedy_answer(model, tokenizer, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    device = next(model.parameters()).device
    output = model.generate(input_ids=torch.tensor([prompt_ids], device=device), max_new_tokens=max_new_tokens,
                            do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return output[0, len(prompt_ids):].tolist()


def late_layers(layers: list[int]) -> list[int]:
    """The last third of the analysed layers (at least one)."""
    return layers[-max(1, len(layers) // 3):]


def state_numbers(groups: dict, lens: dict, layers: list[int], late: list[int], refusal_ids: set) -> dict:
    """Per-layer geometry, PCA and refusal-token shares of one model state."""
    (safe, safe_ids), (unsafe, unsafe_ids) = groups["safe"], groups["unsafe"]
    geometry: dict = {}
    pca = {"explained": [], "coords": []}
    for layer in layers:
        for key, value in layer_geometry(safe[layer], unsafe[layer]).items():
            geometry.setdefault(key, []).append(value)
        coords, explained = pca_2d(torch.cat([safe[layer], unsafe[layer]]))
        pca["coords"].append([[round(float(x), 4) for x in row] for row in coords])  # safe rows, then unsafe
        pca["explained"].append([round(e, 4) for e in explained])
    vocabulary = torch.tensor(sorted(refusal_ids))

    def share(ids: torch.Tensor) -> list[float]:
        return torch.isin(ids, vocabulary).double().mean(0).tolist()

    shares = {"safe": share(safe_ids), "unsafe": share(unsafe_ids)}
    late_shares = {group: sum(values[layers.index(layer)] for layer in late) / len(late) for group, values in shares.items()}
    return {"geometry": geometry, "pca": pca, "lens": lens, "refusal_share": shares, "late_refusal_share": late_shares}
