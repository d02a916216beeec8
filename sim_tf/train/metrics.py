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
