import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from sim_tf.data import inputs
from sim_tf.models import losses, models


def total_loss(outputs, labels):
    """One device's training loss of a batch: the loss terms over the batch's own counts."""
    terms = losses.loss_terms(outputs, labels)
    return losses.combine(terms, tf.shape(labels)[0], terms.aux_count)


def adam_step(model, features, labels):
    """A compiled Adam step on one batch; returns (total loss, mean click loss) of the batch before it."""
    optimizer = keras.optimizers.Adam(0.01)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            outputs = model(features, training=True)
            loss = total_loss(outputs, labels)
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss, losses.loss_terms(outputs, labels).ctr_sum / tf.cast(tf.shape(labels)[0], tf.float32)

    return step


def auxiliary_loss(click_logits, noclick_logits, pair_mask):
    """The auxiliary loss as a masked mean; 0 when no pair is valid."""
    total, count = losses.auxiliary_terms(click_logits, noclick_logits, pair_mask)
    return total / tf.maximum(count, 1.0)


@pytest.mark.parametrize("model_type", models.MODEL_TYPES)
def test_outputs_and_batch_of_one(model_type, build, make_features):
    model = build(model_type)
    for batch in (6, 1):
        features, labels = make_features(batch=batch)
        out = model(features, training=True)
        assert out["logit"].shape == (batch,) and out["logit"].dtype == tf.float32
        np.testing.assert_allclose(out["prediction"].numpy(), tf.sigmoid(out["logit"]).numpy())
        assert np.isfinite(total_loss(out, labels).numpy())
    assert ("stage_one_logit" in out) == (model_type == "sim")
    assert ("aux_click_logits" in out) == (model_type != "din")
    # Inference skips the auxiliary network and SIM's stage-one head, and predicts the same.
    predicted = model(features)
    assert set(predicted) == {"logit", "prediction"}
    np.testing.assert_allclose(predicted["logit"].numpy(), out["logit"].numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model_type", models.MODEL_TYPES)
def test_more_left_padding_gives_the_same_outputs(model_type, build, make_features):
    model = build(model_type)
    # Short histories (3 of 5 real) and long histories of every length.
    lengths = [0, 1, 3, 5, 7, 13]
    features, labels = make_features(lengths=lengths, seed=1)
    padded, _ = make_features(lengths=lengths, seed=1, left_pad_long=6)
    out, out_padded = model(features, training=True), model(padded, training=True)
    for key in out:
        if key.startswith("aux"):
            continue  # aux tensors keep the short length; their loss is compared below
        np.testing.assert_allclose(out_padded[key].numpy(), out[key].numpy(), rtol=1e-5, atol=1e-6, err_msg=key)
    np.testing.assert_allclose(total_loss(out_padded, labels), total_loss(out, labels), rtol=1e-6)

    # Rows whose whole history fits the short part, with more padding in the short part.
    short_only = [0, 1, 2, 3, 4, 5]
    features, labels = make_features(lengths=short_only, seed=2)
    padded, _ = make_features(lengths=short_only, seed=2, left_pad_short=4)
    out, out_padded = model(features, training=True), model(padded, training=True)
    np.testing.assert_allclose(out_padded["logit"].numpy(), out["logit"].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(total_loss(out_padded, labels), total_loss(out, labels), rtol=1e-5)


def test_aux_loss_is_a_masked_mean_over_real_pairs():
    click = tf.constant([[0.0, 2.0, -1.0], [3.0, 1.0, 0.5]])
    noclick = tf.constant([[5.0, -2.0, 1.0], [0.0, 0.0, -3.0]])
    mask = tf.constant([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])

    def nll(c, n):
        return -np.log(1 / (1 + np.exp(-c))) - np.log(1 - 1 / (1 + np.exp(-n)))

    expected = (nll(2.0, -2.0) + nll(-1.0, 1.0) + nll(0.5, -3.0)) / 3  # 3 real pairs, not 6 entries
    np.testing.assert_allclose(auxiliary_loss(click, noclick, mask).numpy(), expected, rtol=1e-6)
    assert auxiliary_loss(click, noclick, tf.zeros_like(mask)).numpy() == 0.0


def test_losses_are_finite_when_logits_saturate():
    big = tf.fill([2, 3], 100.0)
    mixed = tf.constant([[100.0, -100.0, 100.0], [-100.0, 100.0, -100.0]])
    assert np.isfinite(auxiliary_loss(mixed, -mixed, tf.ones([2, 3])).numpy())
    np.testing.assert_allclose(auxiliary_loss(big, -big, tf.ones([2, 3])).numpy(), 0.0, atol=1e-30)
    np.testing.assert_allclose(auxiliary_loss(-big, big, tf.ones([2, 3])).numpy(), 200.0, rtol=1e-6)
    bce = losses.bce_from_logits(tf.constant([1.0, 0.0]), tf.constant([-100.0, 100.0])).numpy()
    np.testing.assert_allclose(bce, [100.0, 100.0])
    np.testing.assert_allclose(losses.sim_ctr_loss(tf.constant([1.0]), tf.constant([0.0]), tf.constant([100.0])),
                               [0.5 * np.log(2.0)], rtol=1e-6)


def test_sim_aux_pairs_need_both_behaviours_real(build, make_features):
    model = build("sim")
    features, _ = make_features(lengths=[2, 0, 13, 1, 3, 4], seed=3)  # short length 5
    pair_mask = model(features, training=True)["aux_pair_mask"].numpy()
    np.testing.assert_array_equal(pair_mask.sum(axis=1), [1, 0, 4, 0, 2, 3])


def test_sim_top_k_uses_the_flag_and_real_validity(build, make_features, model_config):
    features, labels = make_features(lengths=[0, 0, 5, 5, 13, 13], seed=4)
    model = build("sim")
    out = model(features)
    # Long history empty for the first four rows: stage one sees only zeros from the history.
    for k in (1, 3, 8, 50):
        config = models.ModelConfig(**{**model_config.__dict__, "top_k": k})
        other = build("sim", config)
        other.set_weights(model.get_weights())
        got = other(features)
        # Rows with no long history cannot depend on k; the others may.
        np.testing.assert_allclose(got["logit"].numpy()[:4], out["logit"].numpy()[:4], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model_type", models.MODEL_TYPES)
def test_every_variable_gets_a_gradient_and_tables_get_sparse_ones(model_type, build, make_features):
    model = build(model_type)
    features, labels = make_features(batch=16, lengths=np.full(16, 13), seed=5)
    with tf.GradientTape() as tape:
        loss = total_loss(model(features, training=True), labels)
    grads = tape.gradient(loss, model.trainable_variables)
    for var, grad in zip(model.trainable_variables, grads):
        assert grad is not None, var.path
        if "embedding" in var.path:
            assert isinstance(grad, tf.IndexedSlices), var.path
    assert len(grads) == len(model.trainable_variables)


@pytest.mark.parametrize("model_type", models.MODEL_TYPES)
def test_each_model_overfits_one_batch(model_type, build, make_features):
    keras.utils.set_random_seed(0)
    model = build(model_type)
    features, labels = make_features(batch=32, seed=6)
    step = adam_step(model, features, labels)

    first, first_ctr = (float(x) for x in step())
    for _ in range(100):
        last, last_ctr = (float(x) for x in step())
    # The click loss memorises the batch within a few dozen steps; the auxiliary loss (DIEN, SIM) is slower.
    assert last_ctr < 0.1 * first_ctr, (first_ctr, last_ctr)
    assert last < 0.5 * first, (first, last)


@pytest.mark.parametrize("policy,tolerance", [("mixed_bfloat16", 0.03), ("mixed_float16", 0.005)])
@pytest.mark.parametrize("model_type", models.MODEL_TYPES)
def test_mixed_precision_forward_matches_float32(model_type, policy, tolerance, build, make_features):
    reference = build(model_type)
    mixed = build(model_type, policy=policy)
    mixed.set_weights(reference.get_weights())
    assert all(v.dtype == "float32" for v in mixed.weights)
    assert mixed.head.dense[0].compute_dtype == policy.split("_")[1]
    features, labels = make_features(batch=16, seed=7)
    out, out_mixed = reference(features, training=True), mixed(features, training=True)
    for key in ("logit", "prediction", "stage_one_logit", "aux_click_logits"):
        if key in out:
            assert out_mixed[key].dtype == tf.float32, key
    np.testing.assert_allclose(out_mixed["prediction"].numpy(), out["prediction"].numpy(), atol=tolerance)
    np.testing.assert_allclose(total_loss(out_mixed, labels), total_loss(out, labels), rtol=5 * tolerance)


@pytest.mark.parametrize("model_type", models.MODEL_TYPES)
def test_saved_and_reloaded_model_predicts_identically(model_type, tmp_path, build, make_features, model_config):
    model = build(model_type, models.ModelConfig(**{**model_config.__dict__, "attention": "din", "dropout_rate": 0.1}))
    features, _ = make_features(seed=8)
    expected = model(features)["prediction"].numpy()
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert type(restored) is type(model)
    np.testing.assert_array_equal(restored(features)["prediction"].numpy(), expected)


def test_config_is_validated():
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        models.ModelConfig(top_k=0)
    with pytest.raises(ValueError, match="stage_two_mlp_dims must be a non-empty list"):
        models.ModelConfig(stage_two_mlp_dims=())
    with pytest.raises(ValueError, match="attention must be one of"):
        models.ModelConfig(attention="bahdanau")
    with pytest.raises(ValueError, match="hash_bits must be at most 62"):
        models.ModelConfig(hash_bits=63)
    with pytest.raises(ValueError, match="must be at most 31 .* got 8 x 4"):
        models.ModelConfig(sdim_rounds=8, sdim_bits=4)
    with pytest.raises(ValueError, match="head_batch_norm must be true or false"):
        models.ModelConfig(head_batch_norm="yes")
    models.ModelConfig(sdim_rounds=31, sdim_bits=1)  # one code per feature, whatever the feature count


def test_build_model_sizes_tables_from_the_spec(tiny_dataset):
    model = models.build_model("sim", models.ModelConfig(), tiny_dataset)
    assert model.user_vocab_sizes == [201] and model.item_vocab_sizes == [2001, 101]
    model = models.build_model("din", models.ModelConfig(), tiny_dataset, out_of_range="oov")
    assert model.item_vocab_sizes == [2002, 102]
    with pytest.raises(ValueError, match="model_type must be one of"):
        models.build_model("dcn", models.ModelConfig(), tiny_dataset)


def test_select_top_k_matches_top_k_and_its_gradient_matches_tf_gather():
    rng = np.random.default_rng(3)
    scores = tf.constant(rng.integers(0, 5, size=[4, 9]).astype("float32"))  # many ties
    values = tf.constant(rng.normal(size=[4, 9, 3]).astype("float32"))
    mask = tf.constant((rng.random([4, 9]) > 0.2).astype("float32"))
    upstream = tf.constant(rng.normal(size=[4, 4, 3]).astype("float32"))
    _, want_idx = tf.math.top_k(scores, k=4)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(values)
        got, got_mask = models.select_top_k(scores, values, mask, 4)
        want = tf.gather(values, want_idx, batch_dims=1)
        got_loss, want_loss = tf.reduce_sum(got * upstream), tf.reduce_sum(want * upstream)
    np.testing.assert_array_equal(got.numpy(), want.numpy())
    np.testing.assert_array_equal(got_mask.numpy(), tf.gather(mask, want_idx, batch_dims=1).numpy())
    np.testing.assert_allclose(
        tape.gradient(got_loss, values).numpy(), tf.convert_to_tensor(tape.gradient(want_loss, values)).numpy()
    )
    fast, fast_mask = models.select_top_k(scores, values, mask, 4, differentiable=False)
    order = np.argsort(-tf.gather(scores, tf.math.top_k(scores, 4, sorted=False)[1], batch_dims=1).numpy(), kind="stable")
    assert {tuple(r) for r in fast.numpy().reshape(-1, 3)} == {tuple(r) for r in want.numpy().reshape(-1, 3)}
    assert fast_mask.shape == (4, 4) and order.shape == (4, 4)
    full, _ = models.select_top_k(scores, values, mask, 9)
    assert full.shape == (4, 9, 3)


def test_top_k_mask_marks_the_positions_select_top_k_gathers():
    rng = np.random.default_rng(5)
    scores = tf.constant(rng.integers(0, 4, size=[50, 9]).astype("float32"))  # ties at the k-th score
    scores = tf.where(tf.constant(rng.random([50, 9]) < 0.3), tf.float32.min, scores)  # padding
    positions = tf.constant(np.tile(np.arange(9, dtype="float32")[None, :, None], [50, 1, 1]))
    for k in (1, 4, 9):
        chosen, _ = models.select_top_k(scores, positions, tf.ones([50, 9]), k)
        want = np.zeros([50, 9], "float32")
        np.put_along_axis(want, chosen.numpy()[:, :, 0].astype(int), 1.0, axis=1)
        np.testing.assert_array_equal(models.top_k_mask(scores, k).numpy(), want)


@pytest.mark.parametrize("policy,tolerance", [(None, 1e-5), ("mixed_bfloat16", 0.02)])
def test_sims_search_by_mask_equals_gathering_the_chosen_behaviours(policy, tolerance, build, make_features,
                                                                    model_config):
    """SIM's soft search pools the chosen behaviours under a mask (_soft_search_by_mask); _soft_search
    gathers them (select_top_k). With ties, padding, an empty long history and fewer real behaviours than
    k, both give the same outputs, training and predicting, and the same gradients."""
    features, labels = make_features(batch=8, long=12, short=5, lengths=[0, 3, 6, 17, 17, 12, 9, 14], seed=6)
    # Repeated behaviours: equal keys, so equal scores at the k-th place.
    repeated = tuple(tf.concat([ids[:, 6:], ids[:, 6:]], axis=1) for ids in features[inputs.LONG_HISTORY])
    features = {**features, inputs.LONG_HISTORY: repeated, inputs.LONG_MASK: tf.cast(repeated[0] > 0, tf.float32)}

    def run(model):
        with tf.GradientTape() as tape:
            out = model(features, training=True)
            loss = total_loss(out, labels)
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, model.trainable_variables)]
        predicted = model(features, training=False)["prediction"]
        return [tf.cast(t, tf.float32).numpy() for t in (out["logit"], out["stage_one_logit"], predicted, *grads)]

    for top_k in (3, 5, 12):
        model = build("sim", models.ModelConfig(**{**model_config.__dict__, "top_k": top_k}), policy=policy)
        assert model._searches_by_mask(12)
        by_mask = run(model)
        model._searches_by_mask = lambda steps: False
        gathered = run(model)
        for got, want in zip(by_mask, gathered):
            np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance * max(1.0, np.abs(want).max()))


def test_sims_long_history_search_equals_its_padded_format_search(build, make_features):
    """Beyond sort_select_max_steps SIM takes _long_soft_search (parts, small tables per id, the chosen
    behaviours embedded again); on the same inputs it gives the outputs and gradients of _soft_search."""
    features, _ = make_features(batch=6, long=12, short=5)
    model = build("sim")
    short_path = model(features, training=True)
    with tf.GradientTape() as tape:
        out = model(features, training=True)
        short_loss = tf.reduce_sum(out["logit"]) + tf.reduce_sum(out["stage_one_logit"] ** 2)
    short_grads = tape.gradient(short_loss, model.trainable_variables)
    model.sort_select_max_steps, model.small_vocabulary_rows = 0, 8  # item tables of 51, 10 and 5 rows: one small
    long_path = model(features, training=True)
    with tf.GradientTape() as tape:
        out = model(features, training=True)
        long_loss = tf.reduce_sum(out["logit"]) + tf.reduce_sum(out["stage_one_logit"] ** 2)
    long_grads = tape.gradient(long_loss, model.trainable_variables)
    for key in ("logit", "stage_one_logit"):
        np.testing.assert_allclose(long_path[key], short_path[key], rtol=1e-5, atol=1e-6)
    assert [g is None for g in long_grads] == [g is None for g in short_grads]
    for a, b in ((a, b) for a, b in zip(long_grads, short_grads) if a is not None):
        np.testing.assert_allclose(tf.convert_to_tensor(a), tf.convert_to_tensor(b), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("gsu", ["eta", "sdim", "twin"])
def test_sims_successors_train_in_float32_and_mixed_precision(gsu, build, make_features, model_config):
    """ETA, SDIM and TWIN inside SIM: every trainable variable gets a gradient (the hyperplanes are fixed),
    one batch can be memorised, and bfloat16 agrees with float32."""
    import dataclasses

    config = dataclasses.replace(model_config, gsu=gsu, hash_bits=8, sdim_rounds=3, sdim_bits=2)
    keras.utils.set_random_seed(0)
    model = build("sim", config)
    planes = [v for v in model.weights if "hyperplanes" in v.path]
    assert (not planes) == (gsu == "twin") and all(not v.trainable for v in planes)
    features, labels = make_features(batch=32, seed=6, long=40)  # > the 5-row table: its part stays ids
    with tf.GradientTape() as tape:
        loss = total_loss(model(features, training=True), labels)
    for var, grad in zip(model.trainable_variables, tape.gradient(loss, model.trainable_variables)):
        assert grad is not None, var.path
    step = adam_step(model, features, labels)
    ctr = [float(step()[1]) for _ in range(100)]
    assert ctr[-1] < 0.1 * ctr[0], (ctr[0], ctr[-1])
    mixed = build("sim", config, policy="mixed_bfloat16")
    mixed.set_weights(model.get_weights())
    np.testing.assert_allclose(mixed(features)["prediction"], model(features)["prediction"], atol=0.05)


def test_one_seed_starts_every_part_two_models_share_alike(build, model_config):
    """Initial values follow (seed, part name), not the order parts were made: SIM with any search unit,
    DIEN and DIN built under one seed start their shared tables, DIEN block and heads with equal values,
    which a comparison paired by seed relies on; another seed starts elsewhere."""
    import dataclasses

    def start(model_type, seed, **changes):
        keras.utils.set_random_seed(seed)
        model = build(model_type, dataclasses.replace(model_config, hash_bits=8, sdim_rounds=3, sdim_bits=2, **changes))
        return {v.path: v.numpy() for v in model.weights}

    soft = start("sim", 0, gsu="soft")
    # The soft search alone makes a stage-one head, before the DIEN block and the stage-two head.
    assert any(path.startswith("stage_one_head/") for path in soft)
    for other in (start("sim", 0, gsu=g) for g in ("hard", "eta", "sdim", "twin")):
        shared = [path for path in other if path in soft]
        assert any(p.startswith("interest_extractor/") for p in shared)
        assert any(p.startswith("stage_two_head/") for p in shared)
        for path in shared:
            np.testing.assert_array_equal(other[path], soft[path], err_msg=path)
    dien, din = start("dien", 0), start("din", 0)
    for path in ("item_embedding_0/table", "user_embedding_0/table", "interest_evolution/recurrent_kernel"):
        np.testing.assert_array_equal(dien[path], soft[path], err_msg=path)
    np.testing.assert_array_equal(din["item_embedding_1/table"], soft["item_embedding_1/table"])
    reseeded = start("sim", 1, gsu="soft")
    for path in ("item_embedding_0/table", "interest_extractor/input_kernel", "stage_two_head/dense_0/kernel"):
        assert not np.array_equal(reseeded[path], soft[path]), path


@pytest.mark.parametrize("model_type", models.MODEL_TYPES)
def test_head_batch_norm_normalises_every_head_only_when_asked(model_type, build, make_features, model_config,
                                                              tmp_path):
    """--head_batch_norm puts a BatchNorm before every CTR head (SIM's two stages, the DIN and DIEN heads)
    and nowhere else; without it the variables, so the checkpoints, are those of before. Its running
    statistics move in training only, serve prediction, and survive saving."""
    import dataclasses

    keras.utils.set_random_seed(0)
    plain = {v.path for v in build(model_type).weights}
    assert not any("input_norm" in p for p in plain)
    keras.utils.set_random_seed(0)
    model = build(model_type, dataclasses.replace(model_config, head_batch_norm=True))
    heads = [layer for layer in (getattr(model, name, None) for name in ("head", "stage_one_head")) if layer]
    assert len(heads) == (2 if model_type == "sim" else 1)
    assert all(head.input_norm is not None for head in heads)
    added = {v.path for v in model.weights} - plain
    assert added == {f"{head.name}/input_norm/{name}" for head in heads
                     for name in ("gamma", "beta", "moving_mean", "moving_variance")}
    features, labels = make_features(batch=16, seed=9)
    running = heads[0].input_norm.moving_mean
    before = running.numpy().copy()
    predicted = model(features)["prediction"].numpy()
    np.testing.assert_array_equal(running.numpy(), before)
    with tf.GradientTape() as tape:
        loss = total_loss(model(features, training=True), labels)
    grads = dict(zip([v.path for v in model.trainable_variables], tape.gradient(loss, model.trainable_variables)))
    assert all(grads[f"{head.name}/input_norm/{n}"] is not None for head in heads for n in ("gamma", "beta"))
    assert not np.allclose(running.numpy(), before)
    moved = model(features)["prediction"].numpy()
    assert not np.allclose(moved, predicted)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    np.testing.assert_array_equal(keras.saving.load_model(path)(features)["prediction"].numpy(), moved)
