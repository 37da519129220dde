"""``repbend analyze``: logit lens and safe-vs-unsafe geometry, base vs bent.

One copy of the weights: the base model is the PEFT model inside ``disable_adapter()``
(:mod:`repbend.analysis.measure` holds the measurements of one model state).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..analysis.geometry import BINS, FOLDS
from ..analysis.lens import refusal_token_ids
from ..analysis.measure import (adapter_folder, decode, forced_answer, greedy_answer, last_token_states_and_lens,
                                late_layers, lens_numbers, load_rows, state_numbers, token_ids)
from ..analysis.report import write_outputs
from ..config import Config
from ..errors import ConfigError
from ..generate import HFBackend
from ..hidden import prompt_text
from ..models import find_blocks, resolve_layers
from .data import output_folder

STATES = ("base", "bent")
# The dev split: the test split is read only by the final evaluation.
SAFE_DEFAULT, UNSAFE_DEFAULT = "{data_dir}/dev_benign.jsonl", "{data_dir}/dev_harmful.jsonl"


@dataclass
class AnalysisResult:
    output_dir: Path
    numbers: dict  # the content of analysis.json
    files: dict = field(default_factory=dict)  # artifact name -> path


def analyze(config: Config, adapter: str | Path | None = None, out_dir: str | Path | None = None,
            progress: bool = True) -> AnalysisResult:
    """Analyse base vs ``adapter`` (default ``analysis.adapter``, else OUTPUT_DIR) and
    write analysis.json, analysis.md and the PNGs to ``out_dir`` (default
    ``analysis.output_dir``, else OUTPUT_DIR/analysis)."""
    from tqdm.auto import tqdm

    started = time.time()
    settings = config.analysis
    if settings.positions < 1 or settings.max_answer_tokens < 1 or settings.batch_size < 1:
        raise ConfigError("analysis.positions, analysis.max_answer_tokens and analysis.batch_size must be at least 1")
    data_dir = output_folder(config)
    adapter_dir = adapter_folder(adapter or settings.adapter or config.output_dir)
    out = Path(out_dir or settings.output_dir or Path(config.output_dir) / "analysis")
    safe_path = Path((settings.safe_path or SAFE_DEFAULT).format(data_dir=data_dir))
    unsafe_path = Path((settings.unsafe_path or UNSAFE_DEFAULT).format(data_dir=data_dir))
    safe_rows = load_rows(safe_path, settings.limit, "safe_path")
    unsafe_rows = load_rows(unsafe_path, settings.limit, "unsafe_path")
    if min(len(safe_rows), len(unsafe_rows)) < 2:
        raise ConfigError("analysis: each prompt set needs at least 2 prompts")

    backend = HFBackend.load(config.model, str(adapter_dir))
    model, tokenizer = backend.model, backend.tokenizer
    layers = resolve_layers(settings.layers, find_blocks(model).count, "analysis.layers")
    late = late_layers(layers)
    refusal_ids = refusal_token_ids(tokenizer)
    harmful_ids = token_ids(tokenizer, prompt_text(tokenizer, unsafe_rows[0].prompt))
    forced_prompt, answer, answer_source = forced_answer(unsafe_rows, data_dir, settings.answer_text)
    forced_prompt_ids = token_ids(tokenizer, prompt_text(tokenizer, forced_prompt))
    answer_ids = token_ids(tokenizer, answer)[: settings.max_answer_tokens]

    # Per state: the prompt batches, then one step for the two heat maps (generation).
    batches = sum(-(-len(rows) // settings.batch_size) for rows in (safe_rows, unsafe_rows))
    bar = tqdm(total=len(STATES) * (batches + 1), desc="analyze", unit="step", disable=not progress)
    states = {}
    for state in STATES:
        with model.disable_adapter() if state == "base" else contextlib.nullcontext():
            groups = {name: last_token_states_and_lens(model, tokenizer, [r.prompt for r in rows], layers, settings.batch_size, bar)
                      for name, rows in (("safe", safe_rows), ("unsafe", unsafe_rows))}
            generated = greedy_answer(model, tokenizer, harmful_ids, settings.max_answer_tokens)
            lens = {
                "harmful_prompt": lens_numbers(model, tokenizer, harmful_ids, generated, layers, settings.positions),
                "forced_answer": lens_numbers(model, tokenizer, forced_prompt_ids, answer_ids, layers, settings.positions),
            }
            bar.update(1)
        states[state] = state_numbers(groups, lens, layers, late, refusal_ids)
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
        "refusal_vocabulary": sorted({decode(tokenizer, i) for i in refusal_ids}),
        "states": states,
    }
    numbers["seconds"] = round(time.time() - started, 1)
    files = write_outputs(numbers, out)
    return AnalysisResult(out, numbers, files)
