"""Safe vs unsafe activation geometry for one layer (torch only).

Inputs are the last-prompt-token activations ``[n, D]`` of the two groups. Every number
is computed in float64 so that fp32/bf16 activations with large norms stay exact enough.

- ``distance``: Euclidean distance between the two centroids; ``relative_distance`` the
  same divided by the mean activation norm (training may rescale a layer).
- ``js``: Jensen-Shannon divergence (bits, 0..1) between the two groups' distributions of
  their *held-out* projections onto the centroid-difference direction. Rows are split into
  ``FOLDS`` folds; each fold's rows are projected onto the unit vector from the safe to
  the unsafe centroid of the other folds, measured from those centroids' midpoint (so the
  direction never saw the rows it scores: in-sample, even random groups separate when
  n << D). The distributions are histograms of these scores with ``BINS`` equal-width
  bins over their pooled range.
- ``probe_accuracy``: accuracy of the same held-out difference-of-means linear probe
  (score > 0 means unsafe): 0.5 is chance, 1.0 linearly separable.
"""
from __future__ import annotations

import torch

FOLDS = 5
BINS = 10
EPS = 1e-12


def pca_2d(x: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """Coordinates of the rows of ``x`` on its first two principal components and the
    share of variance each explains."""
    x = x.double()
    centered = x - x.mean(0)
    _, singular, vh = torch.linalg.svd(centered, full_matrices=False)
    components = vh[:2]
    # Fix each component's sign (SVD's is arbitrary) so plots of similar data look alike.
    components = components * torch.sign(components.sum(1, keepdim=True) + EPS)
    total = (singular**2).sum().clamp_min(EPS)
    explained = (singular[:2] ** 2 / total).tolist()
    return centered @ components.T, explained + [0.0] * (2 - len(explained))


def centroid_distance(safe: torch.Tensor, unsafe: torch.Tensor) -> float:
    return float((unsafe.double().mean(0) - safe.double().mean(0)).norm())


def _folds(n: int, folds: int, seed: int) -> torch.Tensor:
    # The same seed for both groups: identical groups get identical folds.
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    assignment = torch.empty(n, dtype=torch.long)
    assignment[order] = torch.arange(n) % folds
    return assignment


def heldout_scores(safe: torch.Tensor, unsafe: torch.Tensor, folds: int = FOLDS, seed: int = 0):
    """Each row's projection on the unit centroid-difference direction estimated without
    its fold (see the module doc), measured from the training centroids' midpoint."""
    safe, unsafe = safe.double(), unsafe.double()
    folds = min(folds, len(safe), len(unsafe))
    if folds < 2:
        raise ValueError("held-out scores need at least 2 rows per group")
    fold_safe, fold_unsafe = _folds(len(safe), folds, seed), _folds(len(unsafe), folds, seed)
    scores_safe, scores_unsafe = torch.empty(len(safe), dtype=torch.float64), torch.empty(len(unsafe), dtype=torch.float64)
    for k in range(folds):
        train_safe, train_unsafe = safe[fold_safe != k], unsafe[fold_unsafe != k]
        mean_safe, mean_unsafe = train_safe.mean(0), train_unsafe.mean(0)
        direction = mean_unsafe - mean_safe
        if direction.norm() <= EPS:
            # No centroid difference (identical groups): the pooled top principal direction,
            # which projects both groups alike.
            pooled = torch.cat([train_safe, train_unsafe])
            direction = torch.linalg.svd(pooled - pooled.mean(0), full_matrices=False)[2][0]
        direction = direction / direction.norm().clamp_min(EPS)
        middle = (mean_safe + mean_unsafe) / 2
        scores_safe[fold_safe == k] = (safe[fold_safe == k] - middle) @ direction
        scores_unsafe[fold_unsafe == k] = (unsafe[fold_unsafe == k] - middle) @ direction
    return scores_safe, scores_unsafe


def js_divergence(p_samples: torch.Tensor, q_samples: torch.Tensor, bins: int = BINS) -> float:
    """Jensen-Shannon divergence in bits between the histograms (``bins`` equal-width
    bins over the pooled range) of two 1-D samples: 0 for identical samples, 1 for
    samples in disjoint bins."""
    pooled = torch.cat([p_samples, q_samples]).double()
    low, high = float(pooled.min()), float(pooled.max())
    if high - low <= EPS * max(1.0, abs(low)):
        return 0.0
    p = torch.histc(p_samples.double(), bins, low, high)
    q = torch.histc(q_samples.double(), bins, low, high)
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: torch.Tensor) -> float:
        mask = a > 0
        return float((a[mask] * torch.log2(a[mask] / m[mask])).sum())

    return max(0.0, (kl(p) + kl(q)) / 2)


def layer_geometry(safe: torch.Tensor, unsafe: torch.Tensor, folds: int = FOLDS, bins: int = BINS) -> dict:
    """Every per-layer number (see the module doc)."""
    distance = centroid_distance(safe, unsafe)
    scale = float(torch.cat([safe, unsafe]).double().norm(dim=-1).mean())
    scores_safe, scores_unsafe = heldout_scores(safe, unsafe, folds)
    correct = int((scores_safe <= 0).sum()) + int((scores_unsafe > 0).sum())
    return {
        "distance": distance,
        "relative_distance": distance / max(scale, EPS),
        "js": js_divergence(scores_safe, scores_unsafe, bins),
        "probe_accuracy": correct / (len(safe) + len(unsafe)),
    }
