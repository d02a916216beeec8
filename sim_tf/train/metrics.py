"""Exact evaluation metrics over a whole split, computed on the host with numpy.

* ROC AUC: the Mann-Whitney statistic with tied scores sharing their average rank, i.e. a tie between a
  positive and a negative counts one half. (The reference uses an 8000-bucket approximation.)
* Log loss: mean binary cross-entropy of the predicted probabilities (clipped to [1e-7, 1 - 1e-7]).
* GAUC: AUC per user, averaged with weights equal to each user's number of samples, over the users
  that have both clicks and non-clicks.
"""

from __future__ import annotations

import numpy as np


def _average_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks of ``scores`` with ties given the mean of the ranks they span."""
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    starts = np.concatenate([[True], sorted_scores[1:] != sorted_scores[:-1]])
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    counts = np.diff(np.concatenate([first, [scores.size]]))
    group_rank = first + (counts + 1) / 2.0  # mean of ranks first+1 .. first+count
    ranks = np.empty(scores.size, dtype=np.float64)
    ranks[order] = group_rank[group]
    return ranks


def roc_auc(labels, scores) -> float:
    """Exact ROC AUC; NaN when only one class is present."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = _average_ranks(scores)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def log_loss(labels, probabilities, eps: float = 1e-7) -> float:
    labels = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probabilities, dtype=np.float64).ravel(), eps, 1.0 - eps)
    if labels.size == 0:
        return float("nan")
    return float(-np.mean(labels * np.log(p) + (1.0 - labels) * np.log(1.0 - p)))


def group_auc(labels, scores, groups) -> float:
    """Sample-weighted mean of per-group AUCs over groups with both classes; NaN if there are none.

    Vectorised: samples are sorted by (group, score) once, and each group's Mann-Whitney statistic is
    computed from within-group average ranks.
    """
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    groups = np.asarray(groups).ravel()
    if labels.size == 0:
        return float("nan")
    order = np.lexsort((scores, groups))
    g, s, y = groups[order], scores[order], labels[order]
    new_group = np.concatenate([[True], g[1:] != g[:-1]])
    group_id = np.cumsum(new_group) - 1
    group_start = np.flatnonzero(new_group)
    # Average ranks within each group: ties are runs of equal (group, score).
    new_tie = new_group | np.concatenate([[True], s[1:] != s[:-1]])
    tie_id = np.cumsum(new_tie) - 1
    tie_first = np.flatnonzero(new_tie)
    tie_count = np.diff(np.concatenate([tie_first, [s.size]]))
    position_in_group = tie_first - group_start[group_id[tie_first]]
    tie_rank = position_in_group + (tie_count + 1) / 2.0
    ranks = tie_rank[tie_id]
    n_groups = group_start.size
    size = np.bincount(group_id, minlength=n_groups).astype(np.float64)
    pos = np.bincount(group_id, weights=y, minlength=n_groups)
    neg = size - pos
    rank_sum = np.bincount(group_id, weights=np.where(y, ranks, 0.0), minlength=n_groups)
    valid = (pos > 0) & (neg > 0)
    if not valid.any():
        return float("nan")
    auc = (rank_sum[valid] - pos[valid] * (pos[valid] + 1) / 2.0) / (pos[valid] * neg[valid])
    return float(np.average(auc, weights=size[valid]))


def evaluate_predictions(labels, probabilities, users) -> dict[str, float]:
    return {
        "auc": roc_auc(labels, probabilities),
        "loss": log_loss(labels, probabilities),
        "gauc": group_auc(labels, probabilities, users),
        "samples": int(np.asarray(labels).size),
    }


def _downsample(x: np.ndarray, y: np.ndarray, points: int) -> tuple[list[float], list[float]]:
    if x.size > points:
        keep = np.unique(np.linspace(0, x.size - 1, points).round().astype(int))
        x, y = x[keep], y[keep]
    return [round(float(v), 5) for v in x], [round(float(v), 5) for v in y]


def _counts_at_thresholds(labels, scores):
    """(true positives, false positives, positives, negatives) above each distinct score, highest first."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    order = np.argsort(-scores, kind="mergesort")
    y, s = labels[order], scores[order]
    last_of_tie = np.concatenate([s[1:] != s[:-1], [True]])
    return np.cumsum(y)[last_of_tie], np.cumsum(~y)[last_of_tie], int(labels.sum()), int((~labels).sum())


def roc_curve(labels, scores, points: int = 101) -> tuple[list[float], list[float]]:
    """(false positive rates, true positive rates) at every distinct threshold, downsampled to ``points``."""
    tp, fp, positives, negatives = _counts_at_thresholds(labels, scores)
    tpr = np.concatenate([[0.0], tp / max(positives, 1)])
    fpr = np.concatenate([[0.0], fp / max(negatives, 1)])
    return _downsample(fpr, tpr, points)


def pr_curve(labels, scores, points: int = 101) -> tuple[list[float], list[float]]:
    """(recalls, precisions) at every distinct threshold, downsampled to ``points``."""
    tp, fp, positives, _ = _counts_at_thresholds(labels, scores)
    return _downsample(tp / max(positives, 1), tp / (tp + fp), points)


def curve_image(x, y, size: int = 200, diagonal: bool = False) -> np.ndarray:
    """A [size, size, 3] uint8 plot of the polyline (x, y) in the unit square, with no plotting library.

    Used for the TensorBoard ROC/PR images, so they need neither matplotlib nor a display.
    """
    image = np.full((size, size, 3), 255, dtype=np.uint8)
    margin = 10
    span = size - 2 * margin

    def pixel(px, py):
        return margin + np.round(np.asarray(px) * span).astype(int), size - 1 - margin - np.round(np.asarray(py) * span).astype(int)

    # Axes box and optional chance diagonal, in grey.
    t = np.linspace(0, 1, 4 * span)
    for fx, fy in ((t, 0 * t), (t, 0 * t + 1), (0 * t, t), (0 * t + 1, t)) + (((t, t),) if diagonal else ()):
        cols, rows = pixel(fx, fy)
        image[rows, cols] = 170
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size >= 2:
        segments = np.linspace(0, 1, 20)[None, :]
        px = (x[:-1, None] + (x[1:] - x[:-1])[:, None] * segments).ravel()
        py = (y[:-1, None] + (y[1:] - y[:-1])[:, None] * segments).ravel()
        cols, rows = pixel(np.clip(px, 0, 1), np.clip(py, 0, 1))
        for dr in (0, 1):
            image[np.clip(rows + dr, 0, size - 1), cols] = (31, 119, 180)
    return image
