"""``repbend analyze``: logit lens and safe-vs-unsafe geometry, base vs bent.

One copy of the weights: the base model is the PEFT model inside ``disable_adapter()``.
Each prompt batch is one forward per model state; hooks record every analysed layer.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import Config
from ..errors import ConfigError
from .geometry import BINS, FOLDS, layer_geometry, pca_2d
from .hooks import capture_hidden
from .lens import lens_grid, refusal_token_ids, top_tokens

STATES = ("base", "bent")
# The dev split: the test split is read only by the final evaluation.
SAFE_DEFAULT, UNSAFE_DEFAULT = "{data_dir}/dev_benign.jsonl", "{data_dir}/dev_harmful.jsonl"


@dataclass
class AnalysisResult:
    output_dir: Path
    numbers: dict  # the content of analysis.json
    files: dict = field(default_factory=dict)  # artifact name -> path


def adapter_folder(path: str | Path) -> Path:
    """An adapter folder, or a training run folder holding ``adapter/``."""
    path = Path(path)
    for folder in (path, path / "adapter"):
        if (folder / "adapter_model.safetensors").is_file():
            return folder
    raise ConfigError(f"analysis.adapter: {path} holds no adapter_model.safetensors (nor adapter/ with one)")


def _rows(path: Path, limit, key: str) -> list:
    from ..eval.benchmarks import load_benchmark

    if not path.is_file():
        raise ConfigError(f"analysis.{key}: {path} does not exist; build the data first (`repbend data`) "
                          "or give a JSONL file with a prompt column")
    return load_benchmark("generic", path, limit=limit)


def forced_answer(unsafe_rows: list, data_dir: Path, answer_text: str) -> tuple[str, str, str]:
    """(prompt, answer, where from) for the teacher-forced heat map: an unsafe row's
    target, else the first P_uu row of the built training data, else ``answer_text``."""
    from ..data.examples import UNSAFE_UNSAFE
    from ..data.readers import read_generic

    for row in unsafe_rows:
        if row.target:
            return row.prompt, row.target, f"target of {row.id}"
    train = data_dir / "train.jsonl"
    if train.is_file():
        for example in read_generic(train):
            if example.kind == UNSAFE_UNSAFE:
                return example.messages[-1]["content"], example.response, f"P_uu {example.source}"
    return unsafe_rows[0].prompt, answer_text, "analysis.answer_text"


def _prompt_text(tokenizer, prompt: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def last_token_states(model, tokenizer, prompts: list[str], layers: list[int], batch_size: int, bar=None):
    """Per layer, the last-prompt-token activations ``[n, D]`` (float32, CPU), and the
    logit lens's top token id there, ``[n, len(layers)]``."""
    from ..models import decoder_of

    device = next(model.parameters()).device
    decoder = decoder_of(model)  # the LM head over every position is not needed
    states, ids = {layer: [] for layer in layers}, []
    for start in range(0, len(prompts), batch_size):
        texts = [_prompt_text(tokenizer, p) for p in prompts[start:start + batch_size]]
        # Right padding: real tokens never attend to pads and keep their positions.
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False, padding_side="right")
        batch = {k: v.to(device) for k, v in batch.items()}
        with capture_hidden(model, layers) as hidden:
            decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        rows, last = torch.arange(len(texts), device=device), batch["attention_mask"].sum(1) - 1
        stacked = torch.stack([hidden[layer][rows, last] for layer in layers], 1)  # [B, L, D]
        top_id, _ = top_tokens(model, stacked)
        for i, layer in enumerate(layers):
            states[layer].append(stacked[:, i].float().cpu())
        ids.append(top_id.cpu())
        if bar is not None:
            bar.update(1)
    return {layer: torch.cat(parts) for layer, parts in states.items()}, torch.cat(ids)


def _decode(tokenizer, token_id: int) -> str:
    return tokenizer.decode([int(token_id)])


def _grid(model, tokenizer, prompt_ids: list[int], answer_ids: list[int], layers: list[int], positions: int) -> dict:
    ids = torch.tensor(prompt_ids + answer_ids)
    shown = min(positions, len(prompt_ids))
    columns = range(len(prompt_ids) - shown, len(ids))
    grid = lens_grid(model, ids, layers, columns)
    return {
        "tokens": [_decode(tokenizer, ids[c]) for c in columns],
        "prompt_positions": shown,
        "top_tokens": [[_decode(tokenizer, t) for t in row] for row in grid["ids"].tolist()],
        "top_probs": [[round(p, 4) for p in row] for row in grid["probs"].tolist()],
    }


@torch.no_grad()
def _generate(model, tokenizer, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    device = next(model.parameters()).device
    output = model.generate(input_ids=torch.tensor([prompt_ids], device=device), max_new_tokens=max_new_tokens,
                            do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return output[0, len(prompt_ids):].tolist()


def late_layers(layers: list[int]) -> list[int]:
    """The last third of the analysed layers (at least one)."""
    return layers[-max(1, len(layers) // 3):]


def analyze(config: Config, adapter: str | Path | None = None, out_dir: str | Path | None = None,
            progress: bool = True) -> AnalysisResult:
    """Analyse base vs ``adapter`` (default ``analysis.adapter``, else OUTPUT_DIR) and
    write analysis.json, analysis.md and the PNGs to ``out_dir`` (default
    ``analysis.output_dir``, else OUTPUT_DIR/analysis)."""
    from tqdm.auto import tqdm

    from ..data.packaged import output_folder
    from ..generate import HFBackend
    from ..models import find_blocks, resolve_layers
    from .report import write_outputs

    started = time.time()
    settings = config.analysis
    if settings.positions < 1 or settings.max_answer_tokens < 1 or settings.batch_size < 1:
        raise ConfigError("analysis.positions, analysis.max_answer_tokens and analysis.batch_size must be at least 1")
    data_dir = output_folder(config)
    adapter_dir = adapter_folder(adapter or settings.adapter or config.output_dir)
    out = Path(out_dir or settings.output_dir or Path(config.output_dir) / "analysis")
    safe_path = Path((settings.safe_path or SAFE_DEFAULT).format(data_dir=data_dir))
    unsafe_path = Path((settings.unsafe_path or UNSAFE_DEFAULT).format(data_dir=data_dir))
    safe_rows = _rows(safe_path, settings.limit, "safe_path")
    unsafe_rows = _rows(unsafe_path, settings.limit, "unsafe_path")
    if min(len(safe_rows), len(unsafe_rows)) < 2:
        raise ConfigError("analysis: each prompt set needs at least 2 prompts")

    backend = HFBackend.load(config.model, str(adapter_dir))
    model, tokenizer = backend.model, backend.tokenizer
    layers = resolve_layers(settings.layers, find_blocks(model).count, "analysis.layers")
    late = late_layers(layers)
    refusal_ids = refusal_token_ids(tokenizer)
    harmful_ids = _ids(tokenizer, _prompt_text(tokenizer, unsafe_rows[0].prompt))
    forced_prompt, answer, answer_source = forced_answer(unsafe_rows, data_dir, settings.answer_text)
    forced_prompt_ids = _ids(tokenizer, _prompt_text(tokenizer, forced_prompt))
    answer_ids = _ids(tokenizer, answer)[: settings.max_answer_tokens]

    # Per state: the prompt batches, then one step for the two heat maps (generation).
    batches = sum(-(-len(rows) // settings.batch_size) for rows in (safe_rows, unsafe_rows))
    bar = tqdm(total=len(STATES) * (batches + 1), desc="analyze", unit="step", disable=not progress)
    states = {}
    for state in STATES:
        with model.disable_adapter() if state == "base" else contextlib.nullcontext():
            groups = {name: last_token_states(model, tokenizer, [r.prompt for r in rows], layers, settings.batch_size, bar)
                      for name, rows in (("safe", safe_rows), ("unsafe", unsafe_rows))}
            generated = _generate(model, tokenizer, harmful_ids, settings.max_answer_tokens)
            lens = {
                "harmful_prompt": _grid(model, tokenizer, harmful_ids, generated, layers, settings.positions),
                "forced_answer": _grid(model, tokenizer, forced_prompt_ids, answer_ids, layers, settings.positions),
            }
            bar.update(1)
        states[state] = _state_numbers(groups, lens, layers, late, refusal_ids)
    bar.close()

    numbers = {
        "settings": {
            "model": config.model.name_or_path, "adapter": str(adapter_dir),
            "safe_path": str(safe_path), "unsafe_path": str(unsafe_path),
            "n_safe": len(safe_rows), "n_unsafe": len(unsafe_rows), "limit": settings.limit,
            "positions": settings.positions, "max_answer_tokens": settings.max_answer_tokens,
            "folds": FOLDS, "bins": BINS, "forced_answer_source": answer_source,
            "harmful_prompt_id": unsafe_rows[0].id,
        },
        "layers": layers,
        "late_layers": late,
        "refusal_vocabulary": sorted({_decode(tokenizer, i) for i in refusal_ids}),
        "states": states,
    }
    numbers["seconds"] = round(time.time() - started, 1)
    files = write_outputs(numbers, out)
    return AnalysisResult(out, numbers, files)


def _state_numbers(groups: dict, lens: dict, layers: list[int], late: list[int], refusal_ids: set) -> dict:
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
