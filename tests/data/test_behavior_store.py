"""The behaviour store: round trip, no leak of the future, and hard search against numpy brute force."""

import numpy as np
import pytest
import tensorflow as tf

from sim_tf.data import behavior_store as bs
from sim_tf.data.inputs import DataError


def random_store(seed=0, users=7, max_behaviours=30, categories=4):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, max_behaviours, users)
    user_of = np.repeat(np.arange(1, users + 1), counts)
    times = rng.integers(0, 1000, user_of.size)
    items = rng.integers(1, 500, user_of.size)
    cats = rng.integers(1, categories + 1, user_of.size)
    order = rng.permutation(user_of.size)  # events in any order
    return bs.BehaviorStore.from_events(user_of[order], times[order], {"item": items[order], "cat": cats[order]},
                                        num_users=users)


def brute_history(store, user, end, length, name="item"):
    lo = store.offsets[user]
    rows = list(range(lo + max(0, end - length), lo + end))
    return [0] * (length - len(rows)) + [int(store.features[name][r]) for r in rows]


def test_store_round_trip_and_time_order(tmp_path):
    store = random_store()
    store.validate()
    for u in range(1, store.num_users + 1):
        times = store.timestamps[store.offsets[u]:store.offsets[u + 1]]
        assert np.all(np.diff(times) >= 0)
    store.save(str(tmp_path / "s.npz"))
    again = bs.BehaviorStore.load(str(tmp_path / "s.npz"))
    np.testing.assert_array_equal(again.offsets, store.offsets)
    for name in store.features:
        np.testing.assert_array_equal(again.features[name], store.features[name])


def test_assembled_histories_equal_brute_force_and_never_reach_the_sample():
    store = random_store(seed=3)
    rng = np.random.default_rng(1)
    users = rng.integers(1, store.num_users + 1, 50)
    ends = np.array([rng.integers(0, store.history_length(u) + 1) for u in users])
    for length in (1, 5, 40):
        got = bs.assemble(tf.constant(store.offsets), tf.constant(store.features["item"]), tf.constant(users),
                          tf.constant(ends), length).numpy()
        want = np.array([brute_history(store, u, e, length) for u, e in zip(users, ends)])
        np.testing.assert_array_equal(got, want)
    # No leak: changing every behaviour at or after a sample's position changes nothing in its history.
    u, e = int(users[0]), int(ends[0])
    poisoned = bs.BehaviorStore(store.offsets, {"item": store.features["item"].copy()}, store.timestamps)
    poisoned.features["item"][store.offsets[u] + e: store.offsets[u + 1]] = 499
    before = bs.assemble(tf.constant(store.offsets), tf.constant(store.features["item"]), [u], [e], 40)
    after = bs.assemble(tf.constant(poisoned.offsets), tf.constant(poisoned.features["item"]), [u], [e], 40)
    np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("k,max_history", [(3, 100), (1, 10), (50, 8)])
def test_hard_search_keeps_the_most_recent_same_category_behaviours(k, max_history):
    store = random_store(seed=5)
    rng = np.random.default_rng(2)
    users = rng.integers(1, store.num_users + 1, 60)
    ends = np.array([rng.integers(0, store.history_length(u) + 1) for u in users])
    targets = rng.integers(1, 5, users.size)
    tensors = bs.StoreTensors.from_store(store, ("item", "cat"), "cat")
    rows, mask = bs.hard_search(tensors, tf.constant(users), tf.constant(ends), tf.constant(targets), k, max_history)
    for i, (u, e, c) in enumerate(zip(users, ends, targets)):
        lo = store.offsets[u]
        window = range(lo + max(0, e - max_history), lo + e)
        want = [r for r in window if store.features["cat"][r] == c][-k:]
        got = [int(r) for r, m in zip(rows[i].numpy(), mask[i].numpy()) if m]
        assert got == want, (i, got, want)
        assert mask[i].numpy().tolist() == [False] * (k - len(want)) + [True] * len(want)


def test_bad_stores_and_references_are_named():
    store = random_store()
    broken = bs.BehaviorStore(store.offsets[::-1].copy(), store.features, store.timestamps)
    with pytest.raises(DataError, match="offsets"):
        broken.validate()
    short = bs.BehaviorStore(store.offsets, {"item": store.features["item"][:-3], "cat": store.features["cat"]},
                             store.timestamps)
    with pytest.raises(DataError, match="item holds .* behaviours but the offsets describe"):
        short.validate()
    shuffled = bs.BehaviorStore(store.offsets, store.features, store.timestamps[::-1].copy())
    with pytest.raises(DataError, match="go back in time"):
        shuffled.validate()
    with pytest.raises(DataError, match="references user 99"):
        store.check_references(np.array([99]), np.array([0]))
    user = int(np.argmax(np.diff(store.offsets)[1:])) + 1
    with pytest.raises(DataError, match="drawn at position"):
        store.check_references(np.array([user]), np.array([store.history_length(user) + 1]))


def test_store_inputs_split_recent_and_long_without_overlap_and_assert_on_bad_references():
    """The recent S and the long window before them are disjoint and end right before the sample."""
    from types import SimpleNamespace

    from sim_tf.data import inputs

    store = random_store(seed=7, max_behaviours=40)
    tensors = bs.StoreTensors.from_store(store, ("item", "cat"), "cat")
    spec = SimpleNamespace(
        store=SimpleNamespace(user="u", position="end", category_index=1), history_length=4,
        user_features=["u"], target_item_features=["ti", "tc"], cardinality=lambda name: 10_000)
    users = np.array([u for u in range(1, store.num_users + 1) if store.history_length(u) > 0])
    ends = np.array([store.history_length(u) for u in users])
    parsed = {"u": tf.constant(users), "end": tf.constant(ends), "ti": tf.ones_like(users), "tc": tf.ones_like(users)}
    out = bs.store_inputs(parsed, tensors, spec, "soft", 6, 3, "error")
    for i, (u, e) in enumerate(zip(users, ends)):
        full = brute_history(store, u, e, 10)
        got = list(out[inputs.LONG_HISTORY][0][i].numpy()) + list(out[inputs.SHORT_HISTORY][0][i].numpy())
        assert got == full
    assert len(out[inputs.SHORT_NEG_HISTORY]) == 2
    parsed["end"] = tf.constant(ends + 1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="a sample references user"):
        bs.store_inputs(parsed, tensors, spec, "soft", 6, 3, "error")


def test_a_truncated_store_file_is_named(tmp_path):
    store = random_store()
    path = str(tmp_path / "s.npz")
    store.save(path)
    data = open(path, "rb").read()
    for cut in (100, len(data) // 2, len(data) - 10):
        with open(path, "wb") as f:
            f.write(data[:cut])
        with pytest.raises(DataError, match="is not a readable behaviour store"):
            bs.BehaviorStore.load(path)
