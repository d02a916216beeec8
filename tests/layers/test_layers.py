import keras
import numpy as np
import pytest
import tensorflow as tf

from sim_tf.layers import core, dien
from sim_tf.train import precision


def test_masked_softmax_and_fully_masked_row():
    scores = tf.constant([[1.0, 2.0, 3.0], [5.0, 6.0, 7.0]])
    mask = tf.constant([[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    w = core.masked_softmax(scores, mask).numpy()
    e = np.exp([2.0, 3.0])
    np.testing.assert_allclose(w[0], [0.0, e[0] / e.sum(), e[1] / e.sum()], rtol=1e-6)
    np.testing.assert_array_equal(w[1], [0.0, 0.0, 0.0])


def test_masked_mean_is_a_true_mean():
    values = tf.constant([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]])
    mask = tf.constant([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    # The reference divides by count + 1, which would give [4/3, 2] for the first row.
    np.testing.assert_allclose(core.masked_mean(values, mask).numpy(), [[2.0, 3.0], [0.0, 0.0]])


def test_mlp_with_ones_weights_matches_hand_computation():
    mlp = core.MLP([2])
    mlp.build((None, 3))
    mlp.dense[0].kernel.assign(np.array([[1.0, -1.0], [1.0, -1.0], [1.0, -1.0]]))
    mlp.logit.kernel.assign(np.array([[1.0], [2.0]]))
    mlp.logit.bias.assign([0.5])
    x = tf.constant([[1.0, 2.0, 3.0], [-1.0, 0.0, 0.0]])
    # hidden: [6, -6] -> PReLU(0.1) -> [6, -0.6] -> 6 - 1.2 + 0.5 = 5.3
    # hidden: [-1, 1] -> [-0.1, 1] -> -0.1 + 2 + 0.5 = 2.4
    out = mlp(x)
    assert out.shape == (2,) and out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), [5.3, 2.4], rtol=1e-6)


def test_batch_norm_uses_the_batch_when_training_and_its_running_statistics_after():
    norm = core.BatchNorm(momentum=0.75, epsilon=0.01)
    x = np.array([[1.0, 10.0], [3.0, 10.0], [5.0, 16.0], [7.0, 12.0]], np.float32)
    norm.build(x.shape)
    norm.gamma.assign([2.0, 1.0])
    norm.beta.assign([0.5, -1.0])
    mean, variance = x.mean(axis=0), x.var(axis=0)  # [4, 12], [5, 6] (biased)
    got = norm(tf.constant(x), training=True).numpy()
    np.testing.assert_allclose(got, (x - mean) / np.sqrt(variance + 0.01) * [2.0, 1.0] + [0.5, -1.0], rtol=1e-6)
    # running = 0.75 * running + 0.25 * batch, from (0, 1)
    np.testing.assert_allclose(norm.moving_mean.numpy(), 0.25 * mean, rtol=1e-6)
    np.testing.assert_allclose(norm.moving_variance.numpy(), 0.75 + 0.25 * variance, rtol=1e-6)
    running_mean, running_variance = 0.25 * mean, 0.75 + 0.25 * variance
    got = norm(tf.constant(x)).numpy()  # not training: the running statistics, which it leaves alone
    want = (x - running_mean) / np.sqrt(running_variance + 0.01) * [2.0, 1.0] + [0.5, -1.0]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(norm.moving_mean.numpy(), running_mean, rtol=1e-6)
    assert [v.name for v in norm.trainable_variables] == ["gamma", "beta"]
    with pytest.raises(ValueError, match="momentum must be in"):
        core.BatchNorm(momentum=1.0)


def test_batch_norm_under_a_mixed_policy_keeps_float32_statistics():
    norm = core.BatchNorm(dtype="mixed_bfloat16")
    x = tf.constant([[1.0, -2.0], [3.0, 2.0], [2.0, 0.0]], tf.bfloat16)
    out = norm(x, training=True)
    assert out.dtype == tf.bfloat16 and all(v.dtype == "float32" for v in norm.weights)
    np.testing.assert_allclose(out.numpy().astype(np.float32).mean(axis=0), [0.0, 0.0], atol=0.02)


def test_mlp_with_input_norm_is_the_mlp_on_the_normalised_input_and_starts_where_it_would_without():
    x = tf.random.normal([6, 3], mean=5.0, stddev=3.0, seed=1)
    keras.utils.set_random_seed(3)
    plain = core.MLP([4, 2])
    plain.build((None, 3))
    keras.utils.set_random_seed(3)
    normed = core.MLP([4, 2], input_norm=True)
    normed.build((None, 3))
    # The norm draws no random numbers: every other weight starts the same, in the same order.
    assert len(normed.weights) == len(plain.weights) + 4
    plain_values = {w.path.split("/", 1)[1]: w.numpy() for w in plain.weights}
    for w in normed.weights:
        name = w.path.split("/", 1)[1]
        if not name.startswith("input_norm"):
            np.testing.assert_array_equal(w.numpy(), plain_values[name], err_msg=name)
    normalised = normed.input_norm(x, training=True)
    np.testing.assert_allclose(normed(x, training=True).numpy(), plain(normalised).numpy(), rtol=1e-5, atol=1e-6)


def test_mlp_batch_of_one_keeps_batch_axis():
    mlp = core.MLP([4, 2])
    assert mlp(tf.ones([1, 3])).shape == (1,)


def test_dot_attention_pooling_by_hand():
    layer = core.AttentionPooling("dot")
    query = tf.constant([[1.0, 0.0]])
    keys = tf.constant([[[9.0, 9.0], [1.0, 0.0], [0.0, 1.0]]])
    mask = tf.constant([[0.0, 1.0, 1.0]])
    pooled, ranked = layer(query, keys, mask)
    w = np.exp([1.0, 0.0]) / np.exp([1.0, 0.0]).sum()
    np.testing.assert_allclose(pooled.numpy(), [[w[0], w[1]]], rtol=1e-6)
    assert ranked.numpy()[0, 0] == np.finfo(np.float32).min
    np.testing.assert_allclose(ranked.numpy()[0, 1:], [1.0, 0.0])


def test_din_activation_unit_scores_are_not_softmaxed_and_padding_is_zero():
    layer = core.AttentionPooling("din")
    keys = tf.random.normal([2, 4, 6])
    pooled, ranked = layer(tf.random.normal([2, 6]), keys, tf.constant([[1.0, 1.0, 0.0, 0.0], [0.0] * 4]))
    scores = ranked.numpy()[0, :2]
    np.testing.assert_allclose(pooled.numpy()[0], (scores[:, None] * keys.numpy()[0, :2]).sum(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(pooled.numpy()[1], np.zeros(6))


def test_constructors_validate_arguments():
    with pytest.raises(ValueError, match="hidden_units must be positive integers"):
        core.MLP([200, 0])
    with pytest.raises(ValueError, match="attention kind must be one of"):
        core.AttentionPooling("cosine")
    with pytest.raises(ValueError, match="units must be positive integers"):
        dien.MaskedGRU(0)
    with pytest.raises(ValueError, match="hidden_units must be positive integers"):
        dien.DienAttention(8, hidden_units=(80, -1))
    with pytest.raises(ValueError, match="hidden_units must be positive integers"):
        dien.AuxiliaryNetwork(())
    with pytest.raises(ValueError, match="rows and dim must be positive"):
        core.EmbeddingTable(0, 4)


def _gru_pair(units=5, width=3):
    gru, augru = dien.MaskedGRU(units), dien.AUGRU(units)
    gru.build((None, None, width))
    augru.build((None, None, width))
    for a, b in zip(augru.weights, gru.weights):
        a.assign(b)
    return gru, augru


def test_augru_attention_zero_keeps_state_and_one_equals_gru():
    gru, augru = _gru_pair()
    x = tf.random.normal([4, 6, 3], seed=1)
    mask = tf.ones([4, 6])
    _, gru_final = gru(x, mask)
    np.testing.assert_allclose(augru(x, mask, tf.ones([4, 6])).numpy(), gru_final.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(augru(x, mask, tf.zeros([4, 6])).numpy(), np.zeros([4, 5]))
    # Attention 0 on the last step only: the final state is the state after step 5.
    attention = tf.constant([[1.0] * 5 + [0.0]] * 4)
    states, _ = gru(x[:, :5], tf.ones([4, 5]))
    np.testing.assert_allclose(augru(x, mask, attention).numpy(), states[:, -1].numpy(), rtol=1e-6, atol=1e-6)


def test_augru_follows_the_paper_formula_for_one_step():
    _, augru = _gru_pair(units=2, width=2)
    x = tf.constant([[[0.3, -0.2]]])
    a = 0.4
    got = augru(x, tf.ones([1, 1]), tf.constant([[a]])).numpy()
    w, u, b = (v.numpy() for v in augru.weights)
    proj = x.numpy()[0, 0] @ w + b
    z = 1 / (1 + np.exp(-proj[:2]))  # state is 0, so U h = 0
    candidate = np.tanh(proj[4:])
    np.testing.assert_allclose(got[0], a * z * candidate, rtol=1e-5)  # (1 - a z) * 0 + a z h~


def _numpy_augru(x, mask, attention, w, u, b):
    """The DIEN paper's recurrence written out step by step (eqs. 1-4 and 8-9), padded steps skipped."""
    units = u.shape[0]
    sigmoid = lambda v: 1 / (1 + np.exp(-v))
    h = np.zeros([x.shape[0], units])
    states = []
    for t in range(x.shape[1]):
        proj = x[:, t] @ w + b
        rec = h @ u
        z = sigmoid(proj[:, :units] + rec[:, :units])
        r = sigmoid(proj[:, units : 2 * units] + rec[:, units : 2 * units])
        candidate = np.tanh(proj[:, 2 * units :] + r * rec[:, 2 * units :])
        z = attention[:, t : t + 1] * z
        new = (1 - z) * h + z * candidate
        h = np.where(mask[:, t : t + 1] > 0, new, h)
        states.append(h)
    return np.stack(states, axis=1), h


def test_gru_and_augru_match_the_paper_recurrence_over_many_steps():
    gru, augru = _gru_pair(units=4, width=3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=[5, 7, 3]).astype("float32")
    mask = (rng.random([5, 7]) > 0.3).astype("float32")
    attention = rng.random([5, 7]).astype("float32")
    w, u, b = (v.numpy().astype("float64") for v in gru.weights)
    want_states, want_final = _numpy_augru(x, mask, np.ones([5, 7]), w, u, b)
    states, final = gru(tf.constant(x), tf.constant(mask))
    np.testing.assert_allclose(states.numpy(), want_states, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(final.numpy(), want_final, rtol=1e-5, atol=1e-6)
    _, want_augru = _numpy_augru(x, mask, attention, w, u, b)
    got = augru(tf.constant(x), tf.constant(mask), tf.constant(attention))
    np.testing.assert_allclose(got.numpy(), want_augru, rtol=1e-5, atol=1e-6)


def test_gru_padded_steps_leave_state_unchanged():
    gru, augru = _gru_pair()
    x = tf.random.normal([3, 4, 3], seed=2)
    padded = tf.concat([tf.random.normal([3, 5, 3], seed=3), x], axis=1)  # garbage on padded steps
    mask = tf.ones([3, 4])
    padded_mask = tf.concat([tf.zeros([3, 5]), mask], axis=1)
    _, final = gru(x, mask)
    _, padded_final = gru(padded, padded_mask)
    np.testing.assert_allclose(padded_final.numpy(), final.numpy(), rtol=1e-6, atol=1e-6)
    att = tf.random.uniform([3, 4], seed=4)
    padded_att = tf.concat([tf.ones([3, 5]), att], axis=1)
    np.testing.assert_allclose(
        augru(padded, padded_mask, padded_att).numpy(), augru(x, mask, att).numpy(), rtol=1e-6, atol=1e-6
    )


def test_mixed_precision_gru_runs_matmuls_in_bfloat16_and_keeps_the_float32_result_closely():
    rng = np.random.default_rng(1)
    x = rng.normal(size=[6, 9, 3]).astype("float32")
    mask = (rng.random([6, 9]) > 0.3).astype("float32")
    exact = dien.MaskedGRU(8)
    mixed = dien.MaskedGRU(8, dtype="mixed_bfloat16")
    exact.build((None, None, 3))
    mixed.build((None, None, 3))
    for target, source in zip(mixed.weights, exact.weights):
        target.assign(source)
    assert all(w.dtype == tf.float32 for w in mixed.weights)
    states, final = mixed(tf.constant(x), tf.constant(mask))
    assert states.dtype == tf.bfloat16 and final.dtype == tf.bfloat16
    want_states, want_final = exact(tf.constant(x), tf.constant(mask))
    # bfloat16 keeps 8 significant bits; the state itself is carried in float32 between steps, so the error
    # stays at the operands' rounding level instead of compounding over the steps.
    np.testing.assert_allclose(tf.cast(final, tf.float32).numpy(), want_final.numpy(), atol=0.03)
    np.testing.assert_allclose(tf.cast(states, tf.float32).numpy(), want_states.numpy(), atol=0.03)
    matmuls = [op for op in tf.function(lambda v: mixed(v, tf.constant(mask))).get_concrete_function(
        tf.TensorSpec([6, 9, 3], tf.float32)).graph.get_operations() if op.type == "MatMul"]
    assert matmuls and all(op.inputs[0].dtype == tf.bfloat16 for op in matmuls)


def test_mixed_precision_dien_attention_gives_float32_weights():
    # The weights gate every AUGRU step. Under a bfloat16 policy the MLP's hidden layers run in bfloat16,
    # but the score layer and the softmax stay float32, so the weights are a float32 distribution
    # (bfloat16 weights sum to 1 only to ~3 digits) close to the float32 layer's.
    rng = np.random.default_rng(0)
    query = tf.constant(rng.normal(size=[64, 8]).astype("float32"))
    states = tf.constant(rng.normal(size=[64, 10, 6]).astype("float32"))
    mask = tf.constant((rng.random([64, 10]) > 0.2).astype("float32"))
    exact = dien.DienAttention(6)
    with precision.global_dtype_policy("mixed_bfloat16"):
        mixed = dien.DienAttention(6)
    exact(query, states, mask)
    mixed(query, states, mask)
    for target, source in zip(mixed.weights, exact.weights):
        target.assign(source * 4.0)  # scores of a few units, where a bfloat16 score is off by ~0.02
        source.assign(target)
    assert mixed.dense[0].compute_dtype == "bfloat16"
    weights = mixed(query, states, mask)
    assert weights.dtype == tf.float32
    real = weights.numpy().sum(axis=1)[mask.numpy().sum(axis=1) > 0]
    np.testing.assert_allclose(real, 1.0, atol=1e-6)
    np.testing.assert_allclose(weights.numpy(), exact(query, states, mask).numpy(), atol=0.02)


def test_mixed_precision_sim_attention_scores_and_ranks_in_float32():
    # SIM's dot attention under bfloat16: the keys and the query are bfloat16 (the compute dtype), but the
    # scores, their softmax and the ranked scores are float32, exactly those of the float32 maths on the
    # same bfloat16 inputs. Rounded to bfloat16 (8 bits), scores of a few units tie for the top-k.
    rng = np.random.default_rng(0)
    keys = tf.constant(rng.normal(size=[16, 40, 8]).astype("float32") * 2.0, tf.bfloat16)
    query = tf.constant(rng.normal(size=[16, 8]).astype("float32") * 2.0, tf.bfloat16)
    mask = tf.constant((rng.random([16, 40]) > 0.3).astype("float32"))
    with precision.global_dtype_policy("mixed_bfloat16"):
        layer = core.AttentionPooling("dot")
    pooled, ranked = layer(query, keys, mask)
    assert pooled.dtype == tf.bfloat16 and ranked.dtype == tf.float32
    k32, q32 = keys.numpy().astype("float64"), query.numpy().astype("float64")
    expected = np.einsum("btd,bd->bt", k32, q32)
    real = mask.numpy() > 0
    np.testing.assert_allclose(ranked.numpy()[real], expected[real], rtol=1e-5, atol=1e-4)
    assert (ranked.numpy()[~real] == np.finfo(np.float32).min).all()
    # The same ranking as float64 maths: bfloat16 scores would tie or swap neighbours.
    top = tf.math.top_k(ranked, k=10).indices.numpy()
    np.testing.assert_array_equal(top, np.argsort(-np.where(real, expected, -np.inf), axis=1, kind="stable")[:, :10])
    weights = np.where(real, np.exp(expected - np.where(real, expected, -np.inf).max(axis=1, keepdims=True)), 0.0)
    weights /= weights.sum(axis=1, keepdims=True)
    # Pooling multiplies bfloat16 weights with the bfloat16 keys: ~3 significant digits.
    np.testing.assert_allclose(pooled.numpy().astype("float64"), np.einsum("bt,btd->bd", weights, k32), atol=0.05)
    # The feature-by-feature form gives the same float32 scores.
    parts = [keys[:, :, :5], core.TableRows(tf.constant(rng.normal(size=[7, 3]), tf.bfloat16),
                                            tf.constant(rng.integers(0, 7, size=[16, 40]), tf.int32))]
    pooled_parts, ranked_parts = layer.call_parts(query, parts, mask)
    assert pooled_parts.dtype == tf.bfloat16 and ranked_parts.dtype == tf.float32
    table = parts[1].table.numpy().astype("float64")
    by_parts = np.einsum("btd,bd->bt", k32[:, :, :5], q32[:, :5]) + (q32[:, 5:] @ table.T)[
        np.arange(16)[:, None], parts[1].ids.numpy()]
    np.testing.assert_allclose(ranked_parts.numpy()[real], by_parts[real], rtol=1e-5, atol=1e-4)


def test_dien_attention_weights_sum_to_one_over_real_steps():
    layer = dien.DienAttention(6)
    w = layer(tf.random.normal([2, 8]), tf.random.normal([2, 4, 6]), tf.constant([[0.0, 1.0, 1.0, 1.0], [0.0] * 4]))
    np.testing.assert_allclose(w.numpy().sum(axis=1), [1.0, 0.0], rtol=1e-6)
    assert w.numpy()[0, 0] == 0.0


def test_embedding_table_is_float32_under_mixed_precision_and_gradients_are_sparse():
    table = core.EmbeddingTable(10, 4, dtype="mixed_bfloat16")
    ids = tf.constant([[1, 2], [2, 0]])
    with tf.GradientTape() as tape:
        out = table(ids)
        loss = tf.reduce_sum(tf.cast(out, tf.float32))
    assert table.table.dtype == tf.float32 and out.dtype == tf.bfloat16
    grad = tape.gradient(loss, table.table)
    assert isinstance(grad, tf.IndexedSlices)
    assert sorted(set(grad.indices.numpy().tolist())) == [0, 1, 2]
    limit = np.sqrt(1 / 10)
    assert np.abs(table.table.numpy()).max() <= limit


@pytest.mark.parametrize("layer", [core.MLP([3, 2], dropout_rate=0.2), core.MLP([2], input_norm=True),
                                   core.BatchNorm(momentum=0.5), core.AttentionPooling("din"),
                                   dien.MaskedGRU(4), dien.DienAttention(4), dien.AuxiliaryNetwork([5])])
def test_layers_serialize_round_trip(layer):
    clone = layer.__class__.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer)


def test_split_first_layer_equals_the_dense_layer_on_the_concatenation():
    dense = keras.layers.Dense(7)
    dense.build((None, None, 4 * 5))
    dense.bias.assign(tf.random.normal([7], seed=5))
    query = tf.random.normal([3, 5], seed=6)
    keys = tf.random.normal([3, 4, 5], seed=7)
    q = tf.broadcast_to(query[:, None, :], keys.shape)
    want = dense(tf.concat([q, keys, q - keys, q * keys], axis=-1))
    got = core.split_first_layer(dense, query, keys)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


def test_auxiliary_network_pair_equals_the_mlp_on_each_concatenation():
    aux = dien.AuxiliaryNetwork((6, 4))
    aux.build((None, None, 5), (None, None, 3))
    states = tf.random.normal([2, 4, 5], seed=8)
    clicked, unclicked = tf.random.normal([2, 4, 3], seed=9), tf.random.normal([2, 4, 3], seed=10)

    def by_hand(items):
        x = tf.concat([states, items], axis=-1)
        for dense in aux.dense:
            x = tf.sigmoid(dense(x))  # the paper's sigmoid hidden layers
        return tf.squeeze(aux.out(x), axis=-1).numpy()

    click, noclick = aux.pair(states, clicked, unclicked)
    np.testing.assert_allclose(click.numpy(), by_hand(clicked), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(noclick.numpy(), by_hand(unclicked), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aux(states, clicked).numpy(), by_hand(clicked), rtol=1e-5, atol=1e-6)


def test_time_major_paths_equal_the_batch_major_ones():
    gru, _ = _gru_pair(units=4, width=3)
    x = tf.random.normal([5, 6, 3], seed=11)
    mask = tf.cast(tf.random.uniform([5, 6], seed=12) > 0.3, tf.float32)
    attention = tf.random.uniform([5, 6], seed=13)
    states, final = gru(x, mask)
    states_tm, final_tm = gru(tf.transpose(x, [1, 0, 2]), mask, time_major_input=True, time_major_output=True)
    np.testing.assert_allclose(tf.transpose(states_tm, [1, 0, 2]).numpy(), states.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(final_tm.numpy(), final.numpy(), rtol=1e-6, atol=1e-6)
    _, augru = _gru_pair(units=3, width=4)
    np.testing.assert_allclose(augru(states_tm, mask, attention, time_major_input=True).numpy(),
                               augru(states, mask, attention).numpy(), rtol=1e-6, atol=1e-6)
    layer = dien.DienAttention(4)
    query = tf.random.normal([5, 7], seed=14)
    np.testing.assert_allclose(layer(query, states_tm, mask, time_major=True).numpy(),
                               layer(query, states, mask).numpy(), rtol=1e-5, atol=1e-6)


def test_dien_attention_equals_the_sigmoid_mlp_on_the_concatenation():
    layer = dien.DienAttention(4, hidden_units=(6, 3))
    query, states = tf.random.normal([2, 5], seed=15), tf.random.normal([2, 3, 4], seed=16)
    mask = tf.constant([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    got = layer(query, states, mask).numpy()
    q = layer.query_prelu(layer.query_dense(query))
    q = tf.broadcast_to(q[:, None, :], states.shape)
    x = tf.concat([q, states, q - states, q * states], axis=-1)
    for dense in layer.dense:
        x = tf.sigmoid(dense(x))
    want = core.masked_softmax(tf.squeeze(layer.out(x), -1), mask).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_sigmoid_keeps_the_dtype_and_matches_float32():
    x = tf.constant([-3.0, 0.0, 2.5])
    np.testing.assert_allclose(core.sigmoid(x).numpy(), tf.sigmoid(x).numpy())
    low = core.sigmoid(tf.cast(x, tf.bfloat16))
    assert low.dtype == tf.bfloat16
    np.testing.assert_allclose(tf.cast(low, tf.float32).numpy(), tf.sigmoid(x).numpy(), atol=1e-2)


def test_large_embedding_tables_are_never_cast_whole_under_mixed_precision(monkeypatch):
    monkeypatch.setattr(core.EmbeddingTable, "whole_cast_max_rows", 999)
    table = core.EmbeddingTable(1000, 4, dtype="mixed_bfloat16")
    table.build()
    graph = tf.function(lambda ids: table(ids)).get_concrete_function(tf.TensorSpec([None], tf.int32)).graph
    casts = [op for op in graph.get_operations() if op.type == "Cast"]
    assert casts, "the gathered rows are cast to bfloat16"
    assert all(op.outputs[0].shape.as_list()[0] != 1000 for op in casts), [op.outputs[0].shape for op in casts]
    # A small table is cast once and shared: same rows, and the gradient stays sparse in float32.
    monkeypatch.setattr(core.EmbeddingTable, "whole_cast_max_rows", 1000)
    ids = tf.constant([[3, 7], [7, 0]])
    with tf.GradientTape() as tape:
        source = table.source()
        rows = table.lookup(ids, source)
        loss = tf.reduce_sum(tf.cast(rows, tf.float32))
    assert source.dtype == tf.bfloat16 and source.shape == (1000, 4)
    np.testing.assert_array_equal(rows.numpy(), tf.cast(tf.gather(table.table, ids), tf.bfloat16).numpy())
    grad = tape.gradient(loss, table.table)
    assert isinstance(grad, tf.IndexedSlices) and grad.values.dtype == tf.float32


def test_attention_over_feature_parts_equals_attention_over_their_concatenation():
    """call_parts (per-feature dot products, a small table scored and pooled per id) computes what call
    computes on the concatenated keys: scores, pool and their gradients."""
    import tensorflow as tf

    from sim_tf.layers.core import AttentionPooling, TableRows

    rng = np.random.default_rng(0)
    big = tf.constant(rng.normal(size=(40, 3)), tf.float32)
    small = tf.Variable(rng.normal(size=(5, 2)), dtype=tf.float32)
    ids_big = tf.constant(rng.integers(0, 40, (4, 9)), tf.int32)
    ids_small = tf.constant(rng.integers(0, 5, (4, 9)), tf.int32)
    query = tf.constant(rng.normal(size=(4, 5)), tf.float32)
    mask = tf.constant(rng.random((4, 9)) > 0.3, tf.float32)
    attention = AttentionPooling("dot")
    with tf.GradientTape(persistent=True) as tape:
        keys = tf.concat([tf.gather(big, ids_big), tf.gather(small, ids_small)], axis=-1)
        want, want_scores = attention(query, keys, mask)
        got, got_scores = attention.call_parts(query, [tf.gather(big, ids_big), TableRows(small, ids_small)], mask)
        loss_want, loss_got = tf.reduce_sum(want ** 2), tf.reduce_sum(got ** 2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-5)
    np.testing.assert_allclose(tf.convert_to_tensor(tape.gradient(loss_got, small)),
                               tf.convert_to_tensor(tape.gradient(loss_want, small)), rtol=1e-4, atol=1e-6)
