import keras
import numpy as np
import pytest
import tensorflow as tf

from sim_tf.train import optimizers
from sim_tf.train.task import needs_dense_gradients


def _numpy_adam(init, ids, steps, lr=0.1, b1=0.9, b2=0.999, eps=1e-7, decay=0.0):
    w = init.astype(np.float64).copy()
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t in range(1, steps + 1):
        g = np.zeros_like(w)
        np.add.at(g, ids, 2 * w[ids])
        w = w - lr * decay * w
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        w = w - lr * np.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + eps)
    return w


def _run(optimizer, init, ids, steps, densify):
    var = keras.Variable(init.copy())
    for _ in range(steps):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.gather(var.value, ids) ** 2)
        grad = tape.gradient(loss, var.value)
        assert isinstance(grad, tf.IndexedSlices)
        optimizer.apply([tf.convert_to_tensor(grad) if densify else grad], [var])
    return var.numpy()


@pytest.mark.parametrize("decay", [0.0, 0.01])
def test_lazy_adam_equals_dense_adam_when_every_row_is_touched(decay):
    init = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    ids = np.array([0, 1, 2, 3, 4, 5, 5, 2, 2])  # duplicates, every row touched
    expected = _numpy_adam(init, ids, 3, decay=decay)
    dense = _run(optimizers.make_optimizer("adam", 0.1, decay), init, ids, 3, densify=True)
    lazy = _run(optimizers.make_optimizer("lazy_adam", 0.1, decay), init, ids, 3, densify=False)
    # float32 against a float64 reference
    np.testing.assert_allclose(dense, expected, atol=1e-5)
    np.testing.assert_allclose(lazy, expected, atol=1e-5)
    np.testing.assert_allclose(lazy, dense, atol=1e-5)


def test_lazy_adam_leaves_untouched_rows_alone():
    init = np.random.default_rng(1).normal(size=(6, 3)).astype(np.float32)
    out = _run(optimizers.LazyAdam(0.1, weight_decay=0.5), init, np.array([1, 4, 4]), 2, densify=False)
    changed = np.abs(out - init).max(axis=1) > 0
    np.testing.assert_array_equal(changed, [False, True, False, False, True, False])


def test_dense_gradient_rule():
    assert needs_dense_gradients(optimizers.make_optimizer("adam", 0.1))
    assert needs_dense_gradients(optimizers.make_optimizer("adagrad", 0.1))
    assert not needs_dense_gradients(optimizers.make_optimizer("lazy_adam", 0.1))
    assert not needs_dense_gradients(optimizers.make_optimizer("sgd", 0.1))
    assert needs_dense_gradients(keras.optimizers.LossScaleOptimizer(optimizers.make_optimizer("adam", 0.1)))


def test_an_unknown_optimizer_name_is_a_programming_error():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        optimizers.make_optimizer("rmsprop", 0.1)


def test_sum_rows_and_densify_equal_tensorflows_segment_sum():
    from sim_tf.train.optimizers import densify, sum_rows

    rng = np.random.default_rng(0)
    ids = tf.constant(rng.integers(0, 50, size=5000), tf.int32)
    values = tf.constant(rng.normal(size=[5000, 8]).astype("float32"))
    want = tf.math.unsorted_segment_sum(values, ids, 60)
    np.testing.assert_array_equal(sum_rows(values, ids, 60).numpy(), want.numpy())
    slices = tf.IndexedSlices(values, ids, tf.constant([60, 8]))
    np.testing.assert_array_equal(densify(slices).numpy(), tf.convert_to_tensor(slices).numpy())
    dense = tf.ones([3, 2])
    assert densify(dense) is dense


@pytest.mark.parametrize("decay", [0.0, 0.01])
@pytest.mark.parametrize("compiled", [False, True])
def test_fused_adam_takes_keras_adams_steps(decay, compiled):
    """`adam` runs TensorFlow's fused kernel for dense updates; the steps are Keras's Adam's.

    Not bit-identical: Keras rounds 1 - beta_2 = 0.001 to float32, the kernel computes 1 - float32(0.999)
    = 0.0010000467, a 5e-5 relative difference in the second moment's update (no float32 beta_2 closes it).
    """
    rng = np.random.default_rng(2)
    init = [rng.normal(size=(50, 4)).astype(np.float32), rng.normal(size=(7,)).astype(np.float32)]
    grads = [[rng.normal(size=w.shape).astype(np.float32) for w in init] for _ in range(4)]
    results = []
    for optimizer in (optimizers.make_optimizer("adam", 0.05, decay), keras.optimizers.Adam(0.05, weight_decay=decay or None)):
        variables = [keras.Variable(w.copy()) for w in init]
        optimizer.build(variables)

        def apply(gradients):
            optimizer.apply(gradients, variables)

        apply = tf.function(apply) if compiled else apply
        for step in grads:
            apply([tf.constant(g) for g in step])
        results.append([v.numpy() for v in variables])
    assert isinstance(optimizers.make_optimizer("adam", 0.05), optimizers.FusedAdam)
    for fused, reference, start in zip(*results, init):
        assert np.abs(fused - start).min() > 0  # every weight moved
        np.testing.assert_allclose(fused, reference, rtol=1e-4, atol=1e-6)
