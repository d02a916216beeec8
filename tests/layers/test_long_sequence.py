"""ETA, SDIM and TWIN against brute force on hand-computable inputs, and their masking invariance."""


import keras
import numpy as np
import pytest
import tensorflow as tf

from sim_tf.layers.core import TableRows
from sim_tf.layers.long_sequence import EtaSearch, SdimSampler, TwinAttention, age_buckets

B, T, E = 3, 11, 4


def parts_and_vectors(seed=0, small_rows=5, big_rows=40):
    """The long history as parts (a gathered feature and a TableRows one), as TableRows for hashing, and
    as plain vectors per feature (numpy) for the brute force."""
    rng = np.random.default_rng(seed)
    big = tf.constant(rng.normal(size=(big_rows, E)), tf.float32)
    small = tf.constant(rng.normal(size=(small_rows, E)), tf.float32)
    big_ids = tf.constant(rng.integers(0, big_rows, (B, T)), tf.int32)
    small_ids = tf.constant(rng.integers(0, small_rows, (B, T)), tf.int32)
    parts = [tf.gather(big, big_ids), TableRows(small, small_ids)]
    rows = [TableRows(big, big_ids), TableRows(small, small_ids)]
    per_feature = [tf.gather(big, big_ids).numpy(), tf.gather(small, small_ids).numpy()]
    return parts, rows, per_feature, rng


def signature(vectors, planes):
    """Brute force: the concatenated sign bits of every feature, as a tuple."""
    return tuple(b for v, p in zip(vectors, planes) for b in (v @ p > 0).astype(int))


def test_simhash_signatures_and_hamming_top_k_match_a_brute_force():
    parts, rows, per_feature, rng = parts_and_vectors()
    queries = [tf.constant(rng.normal(size=(B, E)), tf.float32) for _ in range(2)]
    mask = np.ones((B, T), np.float32)
    mask[0, :4] = 0  # left padding
    eta = EtaSearch(bits=7, seed=3)
    eta.build([E, E])
    planes = [p.numpy() for p in eta.hash.planes]
    assert [p.shape[1] for p in planes] == [4, 3]  # 7 bits shared out over two features
    k = 4
    top, distance = eta.search(queries, rows, tf.constant(mask), k)
    for b in range(B):
        q_sig = signature([q.numpy()[b] for q in queries], planes)
        want_distance = [sum(x != y for x, y in zip(signature([f[b, t] for f in per_feature], planes), q_sig))
                         for t in range(T)]
        assert distance[b].numpy().tolist() == want_distance
        # Real behaviours only, closest first, ties to the more recent one.
        order = sorted((t for t in range(T) if mask[b, t]), key=lambda t: (want_distance[t], -t))
        assert sorted(top[b].numpy().tolist()) == sorted(order[:k])


def test_sdim_interest_is_the_mean_over_rounds_of_normalised_bucket_sums():
    _, rows, per_feature, rng = parts_and_vectors(seed=1)
    queries = [tf.constant(rng.normal(size=(B, E)), tf.float32) for _ in range(2)]
    mask = np.ones((B, T), np.float32)
    mask[1, :6] = 0
    rounds, bits = 3, 2
    sdim = SdimSampler(rounds=rounds, bits=bits, seed=5)
    sdim.build([E, E])
    interest, average = sdim.interest(queries, rows, tf.constant(mask))
    vectors = np.concatenate(per_feature, axis=-1)
    planes = [p.numpy() for p in sdim.hash.planes]
    for b in range(B):
        want_interest, want_average = np.zeros(2 * E), np.zeros(2 * E)
        for j in range(rounds):
            round_planes = [p[:, j * bits:(j + 1) * bits] for p in planes]
            q_sig = signature([q.numpy()[b] for q in queries], round_planes)
            total, count = np.zeros(2 * E), 0
            for t in range(T):  # brute force: every behaviour, one by one
                if mask[b, t] and signature([f[b, t] for f in per_feature], round_planes) == q_sig:
                    total += vectors[b, t]
                    count += 1
            norm = np.linalg.norm(total)
            want_interest += total / norm if norm > 0 else total
            want_average += total / max(count, 1)
        np.testing.assert_allclose(interest[b], want_interest / rounds, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(average[b], want_average / rounds, rtol=1e-5, atol=1e-6)


def test_twin_gsu_scores_equal_the_esus_mean_logits_on_the_same_behaviours():
    parts, _, per_feature, rng = parts_and_vectors(seed=2)
    vectors = np.concatenate(per_feature, axis=-1)
    query = tf.constant(rng.normal(size=(B, 2 * E)), tf.float32)
    twin = TwinAttention(heads=3, head_dim=5)
    twin.build(2 * E)
    twin.age_bias.assign(rng.normal(size=twin.age_bias.shape))
    ages = age_buckets(T)
    assert ages.numpy().tolist() == [int(np.floor(np.log2(T - t))) for t in range(T)]
    mask = tf.ones((B, T))
    gsu = twin.gsu_scores(query, parts, mask, ages[None, :])
    _, logits = twin(query, tf.constant(vectors), mask, tf.broadcast_to(ages, (B, T)))
    np.testing.assert_allclose(gsu, tf.reduce_mean(logits, axis=-1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("unit", ["eta", "sdim", "twin"])
def test_padding_does_not_change_what_a_unit_computes(unit):
    """More left padding (masked positions, whatever their ids) leaves the outputs unchanged."""
    parts, rows, _, rng = parts_and_vectors(seed=4)
    query = tf.constant(rng.normal(size=(B, 2 * E)), tf.float32)
    queries = tf.split(query, 2, axis=-1)
    pad = 6
    padded_ids = [tf.concat([tf.zeros((B, pad), tf.int32), r.ids], axis=1) for r in rows]
    padded_rows = [TableRows(r.table, i) for r, i in zip(rows, padded_ids)]
    padded = [tf.gather(rows[0].table, padded_ids[0]), padded_rows[1]]
    mask, padded_mask = tf.ones((B, T)), tf.concat([tf.zeros((B, pad)), tf.ones((B, T))], axis=1)
    if unit == "eta":
        eta = EtaSearch(bits=9)
        eta.build([E, E])
        top, _ = eta.search(queries, rows, mask, 4)
        top_padded, _ = eta.search(queries, padded_rows, padded_mask, 4)
        assert np.array_equal(np.sort(top.numpy(), 1), np.sort(top_padded.numpy(), 1) - pad)
    elif unit == "sdim":
        sdim = SdimSampler()
        sdim.build([E, E])
        for a, b in zip(sdim.interest(queries, rows, mask), sdim.interest(queries, padded_rows, padded_mask)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    else:
        twin = TwinAttention(heads=2, head_dim=3)
        twin.build(2 * E)
        scores = twin.gsu_scores(query, parts, mask, age_buckets(T)[None, :])
        scores_padded = twin.gsu_scores(query, padded, padded_mask, age_buckets(T + pad)[None, :])
        np.testing.assert_allclose(scores, scores_padded[:, pad:], rtol=1e-5)
        assert np.all(scores_padded[:, :pad] == np.finfo(np.float32).min)


def test_twins_first_scores_are_a_similarity():
    """Query and key projections start equal, so before any training every head scores a behaviour equal
    to the target with ||q W||^2 / sqrt(d) > 0: the first scores are a similarity, not arbitrary."""
    twin = TwinAttention(heads=2, head_dim=4)
    twin.build(2 * E)
    np.testing.assert_array_equal(twin.w_query.numpy(), twin.w_key.numpy())
    rng = np.random.default_rng(6)
    query = tf.constant(rng.normal(size=(1, 2 * E)), tf.float32)
    keys = tf.concat([query[:, None, :], tf.constant(rng.normal(size=(1, T - 1, 2 * E)) * 0.3, tf.float32)], axis=1)
    _, logits = twin(query, keys, tf.ones((1, T)), tf.zeros((1, T), tf.int32))
    assert np.all(logits.numpy()[0, 0] > 0)


def test_twins_start_follows_the_global_seed():
    """The trainer's --seed (keras' global seed) decides TWIN's initial projections: two seeds draw two
    starts, one seed draws the same one twice, and the key projection always starts as the query's."""
    def start(seed):
        keras.utils.set_random_seed(seed)
        twin = TwinAttention(heads=2, head_dim=4)
        twin.build(2 * E)
        np.testing.assert_array_equal(twin.w_query.numpy(), twin.w_key.numpy())
        return np.concatenate([w.numpy().ravel() for w in (twin.w_query, twin.w_value, twin.w_out)])

    first, again, other = start(0), start(0), start(1)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_twins_age_bias_enters_at_its_scale_in_both_stages():
    """With a zero query every content logit is 0, so each head's logit is age_bias_scale * beta[bucket, head]
    exactly, and the GSU's score the mean of those over heads; the scale survives get_config."""
    twin = TwinAttention(heads=2, head_dim=3, age_bias_scale=0.25)
    twin.build(2 * E)
    beta = np.random.default_rng(8).normal(size=twin.age_bias.shape).astype(np.float32)
    twin.age_bias.assign(beta)
    ages = age_buckets(T)
    query = tf.zeros((1, 2 * E))
    keys = tf.constant(np.random.default_rng(9).normal(size=(1, T, 2 * E)), tf.float32)
    _, logits = twin(query, keys, tf.ones((1, T)), ages[None, :])
    np.testing.assert_allclose(logits[0], 0.25 * beta[ages.numpy()], rtol=1e-6)
    scores = twin.gsu_scores(query, [keys], tf.ones((1, T)), ages[None, :])
    np.testing.assert_allclose(scores[0], 0.25 * beta[ages.numpy()].mean(axis=-1), rtol=1e-5)
    assert TwinAttention.from_config(twin.get_config()).age_bias_scale == 0.25
    assert TwinAttention().age_bias_scale == 0.1


def test_twins_first_output_is_the_attended_mean_of_the_behaviours():
    """W_O starts as W_V's transpose and W_V's rows are orthonormal, so W_V W_O = I: with a zero query and
    bias every head attends uniformly, and the ESU's first output is the mean of the unmasked keys."""
    keras.utils.set_random_seed(3)
    twin = TwinAttention(heads=2, head_dim=2 * E)
    twin.build(2 * E)
    np.testing.assert_allclose(twin.w_value.numpy() @ twin.w_out.numpy(), np.eye(2 * E), atol=1e-5)
    keys = np.random.default_rng(10).normal(size=(B, T, 2 * E)).astype(np.float32)
    mask = np.ones((B, T), np.float32)
    mask[:, :2] = 0.0
    output, _ = twin(tf.zeros((B, 2 * E)), tf.constant(keys), tf.constant(mask), tf.zeros((B, T), tf.int32))
    np.testing.assert_allclose(output, keys[:, 2:].mean(axis=1), rtol=1e-4, atol=1e-5)
