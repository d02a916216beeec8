import dataclasses

import numpy as np
import pytest

from sim_tf.data import synthetic

SMALL = dataclasses.replace(synthetic.PRESETS["tiny"], train_samples=4000, test_samples=400)


def test_same_seed_same_data_other_seed_other_data():
    a = synthetic.generate(SMALL)
    b = synthetic.generate(SMALL)
    c = synthetic.generate(dataclasses.replace(SMALL, seed=1))
    for name in a["train"]:
        np.testing.assert_array_equal(a["train"][name], b["train"][name])
    assert not np.array_equal(a["train"]["item_feat_0_pos"], c["train"]["item_feat_0_pos"])


def test_shapes_ranges_padding_and_categories():
    cfg = SMALL
    train = synthetic.generate(cfg)["train"]
    n, L = cfg.train_samples, cfg.history_length
    assert train["item_feat_0_pos"].shape == (n, L) and train["label"].shape == (n,)
    assert train["label"].mean() == 0.5
    pos = train["item_feat_0_pos"]
    assert pos.min() >= 0 and pos.max() <= cfg.items
    assert train["item_feat_1_pos"].max() <= cfg.categories and train["user_feat_0"].min() >= 1
    valid = pos > 0
    # Left padding: once a row has a real behaviour, every later position is real too.
    assert np.all(np.diff(valid.astype(int), axis=1) >= 0)
    lengths = valid.sum(axis=1)
    assert lengths.min() >= cfg.min_history and lengths.max() == L and len(np.unique(lengths)) > 5
    # Categories and negative history share the padding.
    np.testing.assert_array_equal(train["item_feat_1_pos"] > 0, valid)
    np.testing.assert_array_equal(train["item_feat_0_neg"] > 0, valid)
    # Every item keeps one category everywhere it appears.
    pairs = set(zip(train["item_feat_0_pos"][valid], train["item_feat_1_pos"][valid]))
    assert len({item for item, _ in pairs}) == len(pairs)


def test_planted_signal_needs_the_long_and_the_short_history():
    cfg = dataclasses.replace(synthetic.PRESETS["small"], train_samples=20000, test_samples=2)
    train = synthetic.generate(cfg)["train"]
    label = train["label"] == 1
    target = train["item_feat_1_trgt"]
    history = train["item_feat_1_pos"]
    matches = (history == target[:, None]) & (history > 0)
    in_old = matches[:, : -cfg.recent_length].any(axis=1)
    in_recent = matches[:, -cfg.recent_length :].any(axis=1)
    newest = matches[:, -1]
    # Every positive is visible: in the older part (long-term pairs) or as the newest behaviour (session).
    assert (in_old | newest)[label].mean() > 0.93
    # Half the negatives appear in the recent part as well (session pairs), so the recent part separates
    # the labels only by order ...
    assert 0.4 < in_recent[~label].mean() < 0.6 and newest[~label].mean() < 0.02
    # ... and the older part separates long-term pairs: their negatives are rarely there.
    assert in_old[label].mean() > 0.4 and in_old[~label].mean() < 0.15


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="categories need at least as many items"):
        dataclasses.replace(SMALL, items=5, categories=10)
    with pytest.raises(ValueError, match="min_history 30 exceeds history_length 20"):
        dataclasses.replace(SMALL, min_history=30)
    with pytest.raises(ValueError, match="stable_interests <= interests_per_sample"):
        dataclasses.replace(SMALL, stable_interests=4)
