import itertools

import numpy as np
import pytest

from sim_tf.train import metrics


def brute_force_auc(labels, scores):
    pos = [s for y, s in zip(labels, scores) if y]
    neg = [s for y, s in zip(labels, scores) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_by_hand_with_ties():
    labels = [1, 0, 1, 0, 1]
    scores = [0.9, 0.9, 0.5, 0.1, 0.1]
    # pairs: (0.9 vs 0.9) 0.5, (0.9 vs 0.1) 1, (0.5 vs 0.9) 0, (0.5 vs 0.1) 1, (0.1 vs 0.9) 0, (0.1 vs 0.1) 0.5
    assert metrics.roc_auc(labels, scores) == pytest.approx(3.0 / 6.0)


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_brute_force_on_random_data_with_many_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.random(300) + 0.3 * labels, 1)  # rounding makes many ties
    assert metrics.roc_auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores), abs=1e-12)


def test_auc_single_class_is_nan_and_perfect_is_one():
    assert np.isnan(metrics.roc_auc([1, 1], [0.2, 0.3]))
    assert metrics.roc_auc([0, 0, 1], [0.1, 0.2, 0.3]) == 1.0
    assert metrics.roc_auc([1, 0], [0.5, 0.5]) == 0.5


@pytest.mark.parametrize("seed", range(3))
def test_gauc_matches_per_user_brute_force(seed):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, 20, 400)
    labels = rng.integers(0, 2, 400)
    scores = np.round(rng.random(400) + 0.2 * labels, 1)
    total, weight = 0.0, 0
    for user in np.unique(users):
        sel = users == user
        if 0 < labels[sel].sum() < sel.sum():
            total += brute_force_auc(labels[sel], scores[sel]) * sel.sum()
            weight += sel.sum()
    assert metrics.group_auc(labels, scores, users) == pytest.approx(total / weight, abs=1e-12)


def test_gauc_skips_single_class_users_and_weights_by_samples():
    users = [1, 1, 1, 1, 2, 2, 3]
    labels = [1, 0, 0, 0, 1, 0, 1]
    scores = [0.9, 0.1, 0.2, 0.95, 0.1, 0.9, 0.5]
    # user 1: positive beats 2 of 3 negatives -> 2/3 (4 samples); user 2: 0 (2 samples); user 3 skipped.
    assert metrics.group_auc(labels, scores, users) == pytest.approx((2 / 3 * 4 + 0 * 2) / 6)
    assert np.isnan(metrics.group_auc([1, 1], [0.3, 0.4], [5, 6]))


def test_log_loss_by_hand_and_clipping():
    assert metrics.log_loss([1, 0], [0.8, 0.4]) == pytest.approx(-(np.log(0.8) + np.log(0.6)) / 2)
    assert np.isfinite(metrics.log_loss([1, 0], [0.0, 1.0]))


def test_roc_and_pr_curves():
    fpr, tpr = metrics.roc_curve([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1])
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert list(zip(fpr, tpr)) == [(0.0, 0.0), (0.0, 0.5), (0.5, 0.5), (0.5, 1.0), (1.0, 1.0)]
    # The trapezoid area under the exact curve is the AUC.
    assert np.trapezoid(tpr, fpr) == pytest.approx(metrics.roc_auc([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]))
    recall, precision = metrics.pr_curve([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1])
    assert list(zip(recall, precision)) == [(0.5, 1.0), (0.5, 0.5), (1.0, 0.66667), (1.0, 0.5)]
    many = metrics.roc_curve(np.arange(1000) % 2, np.arange(1000), points=50)
    assert len(many[0]) <= 50
    image = metrics.curve_image(fpr, tpr, size=64, diagonal=True)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and (image != 255).any()
