"""ETA, SDIM and TWIN against brute force on hand-computable inputs, and their masking invariance."""


import numpy as np
import pytest
import tensorflow as tf

from sim_tf.layers.core import SmallVocabularyKeys
from sim_tf.layers.long_sequence import EtaSearch, SdimSampler, TwinAttention, age_buckets, behaviour_vectors

B, T, E = 3, 11, 4


def parts_and_vectors(seed=0, small_rows=5):
    rng = np.random.default_rng(seed)
    items = tf.constant(rng.normal(size=(B, T, E)), tf.float32)
    table = tf.constant(rng.normal(size=(small_rows, E)), tf.float32)
    ids = tf.constant(rng.integers(0, small_rows, (B, T)), tf.int32)
    parts = [items, SmallVocabularyKeys(table, ids)]
    return parts, behaviour_vectors(parts).numpy(), rng


def signs(x, planes):
    return (x @ planes > 0).astype(np.int64)


def test_simhash_signatures_and_hamming_top_k_match_a_brute_force():
    parts, vectors, rng = parts_and_vectors()
    query = tf.constant(rng.normal(size=(B, 2 * E)), tf.float32)
    mask = np.ones((B, T), np.float32)
    mask[0, :4] = 0  # left padding
    eta = EtaSearch(bits=7, seed=3)
    eta.build(2 * E)
    planes = eta.hyperplanes.numpy()
    k = 4
    top, distance = eta.search(query, parts, tf.constant(mask), k)
    for b in range(B):
        q_bits = signs(query.numpy()[b], planes)
        want_distance = [int(np.sum(signs(vectors[b, t], planes) != q_bits)) for t in range(T)]
        assert distance[b].numpy().tolist() == want_distance
        # Real behaviours only, closest first, ties to the more recent one.
        order = sorted((t for t in range(T) if mask[b, t]), key=lambda t: (want_distance[t], -t))
        assert sorted(top[b].numpy().tolist()) == sorted(order[:k])


def test_sdim_interest_is_the_mean_over_rounds_of_normalised_bucket_sums():
    parts, vectors, rng = parts_and_vectors(seed=1)
    query = tf.constant(rng.normal(size=(B, 2 * E)), tf.float32)
    mask = np.ones((B, T), np.float32)
    mask[1, :6] = 0
    sdim = SdimSampler(rounds=3, bits=2, seed=5)
    sdim.build(2 * E)
    planes = sdim.hyperplanes.numpy()
    interest, mean = sdim.interest(query, parts, tf.constant(mask))
    for b in range(B):
        want = np.zeros(2 * E)
        for j in range(3):
            cols = slice(2 * j, 2 * j + 2)
            q_code = tuple(signs(query.numpy()[b], planes[:, cols]))
            total = np.zeros(2 * E)
            for t in range(T):  # brute force: every behaviour, one by one
                if mask[b, t] and tuple(signs(vectors[b, t], planes[:, cols])) == q_code:
                    total += vectors[b, t]
            norm = np.linalg.norm(total)
            want += total / norm if norm > 0 else total
        np.testing.assert_allclose(interest[b], want / 3, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(mean[b], vectors[b][mask[b] > 0].mean(axis=0), rtol=1e-5, atol=1e-6)


def test_twin_gsu_scores_equal_the_esus_mean_logits_on_the_same_behaviours():
    parts, vectors, rng = parts_and_vectors(seed=2)
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
    parts, vectors, rng = parts_and_vectors(seed=4)
    query = tf.constant(rng.normal(size=(B, 2 * E)), tf.float32)
    pad = 6
    padded = [tf.concat([tf.constant(rng.normal(size=(B, pad, E)), tf.float32), parts[0]], axis=1),
              SmallVocabularyKeys(parts[1].table, tf.concat([tf.zeros((B, pad), tf.int32), parts[1].ids], axis=1))]
    mask, padded_mask = tf.ones((B, T)), tf.concat([tf.zeros((B, pad)), tf.ones((B, T))], axis=1)
    if unit == "eta":
        eta = EtaSearch(bits=9)
        eta.build(2 * E)
        top, _ = eta.search(query, parts, mask, 4)
        top_padded, _ = eta.search(query, padded, padded_mask, 4)
        assert np.array_equal(np.sort(top.numpy(), 1), np.sort(top_padded.numpy(), 1) - pad)
    elif unit == "sdim":
        sdim = SdimSampler()
        sdim.build(2 * E)
        for a, b in zip(sdim.interest(query, parts, mask), sdim.interest(query, padded, padded_mask)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    else:
        twin = TwinAttention(heads=2, head_dim=3)
        twin.build(2 * E)
        scores = twin.gsu_scores(query, parts, mask, age_buckets(T)[None, :])
        scores_padded = twin.gsu_scores(query, padded, padded_mask, age_buckets(T + pad)[None, :])
        np.testing.assert_allclose(scores, scores_padded[:, pad:], rtol=1e-5)
        assert np.all(scores_padded[:, :pad] == np.finfo(np.float32).min)
