"""The disjoint splits of `repbend data`: deduplication across prompt pools (normalised
text, MiniLM cosine), seeded hold-outs per source, the split files' names and records,
and the proof that train, dev and test share no prompt."""
from __future__ import annotations

import random

import torch

from ..embeddings import embed
from ..types import BENIGN, HARMFUL, BehaviorRow
from .benchmarks import normalise_text

TRAIN_FILE = "train.jsonl"
SPLITS = ("dev", "test")
EVAL_SETS = ("harmful", "benign", "everyday", "over_refusal")


def _embed_sorted(texts: list[str]):
    """:func:`embed`, batching texts of similar length together (less padding)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    vectors = embed([texts[i] for i in order])
    out = vectors.clone()
    out[order] = vectors
    return out


def deduplicate_splits(splits: dict[str, list[BehaviorRow]], within: set[str],
                       cosine: float | None) -> tuple[dict[str, list[BehaviorRow]], dict[str, dict]]:
    """Each split's rows, in order, without those whose prompt duplicates a kept prompt
    of an earlier split (or, for splits in ``within``, of its own): the same normalised
    text, or MiniLM cosine >= ``cosine`` (None: exact only). Exact repeats within a split
    always go. Returns (kept, {split: {"exact": n, "near": n, "dropped": [...]}})."""
    flat = [(name, row) for name, rows in splits.items() for row in rows]
    split_of = torch.tensor([list(splits).index(name) for name, _ in flat], dtype=torch.long)
    similarity = None
    if cosine is not None and flat:
        vectors = _embed_sorted([row.prompt for _, row in flat])
        similarity = vectors @ vectors.T
    kept = {name: [] for name in splits}
    report = {name: {"exact": 0, "near": 0, "dropped": []} for name in splits}
    seen: dict[str, BehaviorRow] = {}
    is_kept = torch.zeros(len(flat), dtype=torch.bool)
    for i, (name, row) in enumerate(flat):
        text = normalise_text(row.prompt)
        duplicate, how, score = seen.get(text), "exact", 1.0
        if duplicate is None and similarity is not None:
            compared = is_kept if name in within else is_kept & (split_of != split_of[i])
            scores = similarity[i].masked_fill(~compared, -2.0)
            best = int(scores.argmax())
            if scores[best] >= cosine:
                duplicate, how, score = flat[best][1], "near", float(scores[best])
        if duplicate is not None:
            report[name][how] += 1
            report[name]["dropped"].append({"id": origin(row), "duplicate_of": origin(duplicate),
                                            "cosine": round(score, 3)})
            continue
        seen[text] = row
        is_kept[i] = True
        kept[name].append(row)
    return kept, report


def hold_out(rows: list[BehaviorRow], fraction: float, seed: int, salt: str) -> tuple[list, list]:
    """(kept rows, held rows), both in reading order: a seeded ``fraction`` of each source's
    rows is held, so both parts keep the sources' mix."""
    by_source: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        by_source.setdefault(row.benchmark, []).append(index)
    held = set()
    for source, indices in sorted(by_source.items()):
        rng = random.Random(f"{seed}/{salt}/{source}")
        held.update(rng.sample(indices, round(fraction * len(indices))))
    return [row for i, row in enumerate(rows) if i not in held], [row for i, row in enumerate(rows) if i in held]


def split_file(split: str, name: str) -> str:
    """The file of one split (dev or test) of one evaluation set: ``test_harmful.jsonl``."""
    return f"{split}_{name}.jsonl"


def training_prompts(records: list[dict]) -> list[str]:
    """Every user turn the training file holds (P_* prompts and retain conversations)."""
    prompts = []
    for record in records:
        if "prompt" in record:
            prompts.append(record["prompt"])
        prompts += [m["content"] for m in record.get("messages", ()) if m["role"] == "user"]
    return prompts


def disjointness(prompts: dict[str, list[str]], cosine: float | None) -> dict:
    """Proof that the splits share no prompt: for each pair of splits, the normalised
    prompts they share and, with ``cosine``, the highest MiniLM cosine between their
    prompts and how many pairs reach ``cosine``."""
    names = list(prompts)
    # Normalised text decides exact overlap; the cosine reads the prompts as written, the
    # form the deduplication embedded (normalising changes MiniLM's cosine by a few points).
    written = {name: {normalise_text(text): text for text in sorted(prompts[name])} for name in names}
    texts = {name: sorted(written[name]) for name in names}
    vectors = {}
    if cosine is not None:
        flat = [written[name][text] for name in names for text in texts[name]]
        embedded = _embed_sorted(flat) if flat else None
        offset = 0
        for name in names:
            vectors[name] = embedded[offset:offset + len(texts[name])] if embedded is not None else None
            offset += len(texts[name])
    report = {"threshold": cosine, "pairs": {}}
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            entry = {"exact": len(set(texts[first]) & set(texts[second]))}
            if cosine is not None and texts[first] and texts[second]:
                similarity = vectors[first] @ vectors[second].T
                entry["max_cosine"] = round(float(similarity.max()), 4)
                entry["near"] = int((similarity >= cosine).sum())
            report["pairs"][f"{first}/{second}"] = entry
    report["disjoint"] = all(e["exact"] == 0 and e.get("near", 0) == 0 for e in report["pairs"].values())
    return report


def origin(row: BehaviorRow) -> str:
    """``<source>/<id>``, whatever the source's own id scheme."""
    return row.id if row.id.startswith(f"{row.benchmark}/") else f"{row.benchmark}/{row.id}"


def eval_record(row: BehaviorRow) -> dict:
    """A row in the ``generic`` benchmark layout (prompt, expected and optional fields)."""
    record = {"id": origin(row), "prompt": row.prompt,
              "expected": HARMFUL if row.expected == HARMFUL else BENIGN, "benchmark": row.benchmark}
    for name in ("category", "target", "context", "answer"):
        if getattr(row, name):
            record[name] = getattr(row, name)
    return record
