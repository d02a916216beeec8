"""The GPU code paths' choices, exercised on CPU: row sums, loss scaling, fixed shapes, float16 GRU state."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from sim_tf.data import dataset as data
from sim_tf.layers import dien
from sim_tf.train import optimizers, precision


@pytest.fixture
def segment_sum_kernel():
    previous = optimizers.row_sum()
    optimizers.set_row_sum("segment_sum")
    yield
    optimizers.set_row_sum(previous)


def test_the_gpu_row_sum_is_a_segment_sum_and_runs_under_op_determinism(segment_sum_kernel):
    rng = np.random.default_rng(0)
    ids = tf.constant(rng.integers(0, 50, size=5000), tf.int32)
    values = tf.constant(rng.normal(size=[5000, 8]).astype("float32"))
    graph = tf.function(lambda v, i: optimizers.sum_rows(v, i, 60)).get_concrete_function(values, ids).graph
    kinds = {op.type for op in graph.get_operations()}
    assert "UnsortedSegmentSum" in kinds and not any("Sparse" in k for k in kinds)
    np.testing.assert_allclose(optimizers.sum_rows(values, ids, 60).numpy(),
                               tf.math.unsorted_segment_sum(values, ids, 60).numpy(), rtol=1e-6, atol=1e-5)
    with pytest.raises(ValueError, match="sparse_matmul or segment_sum"):
        optimizers.set_row_sum("scatter")


def test_the_loss_scale_check_reads_sparse_gradients_without_densifying():
    inner = optimizers.make_optimizer("lazy_adam", 0.01)
    lso = optimizers.LossScaleOptimizer(inner)
    table = keras.Variable(np.zeros([1000, 4], "float32"))
    lso.build([table])
    good = tf.IndexedSlices(tf.ones([3, 4]), tf.constant([1, 5, 7]), tf.constant([1000, 4]))
    bad = tf.IndexedSlices(tf.constant([[1.0, np.inf, 0, 0]]), tf.constant([2]), tf.constant([1000, 4]))
    assert bool(lso.check_finite([good, tf.ones([2])])) and not bool(lso.check_finite([bad]))
    graph = tf.function(lso.check_finite).get_concrete_function([good]).graph
    # Keras's own check converts the IndexedSlices to a dense [1000, 4] tensor (a scatter); ours does not.
    assert not any(op.type in ("UnsortedSegmentSum", "ScatterNd") for op in graph.get_operations())


@pytest.mark.parametrize("steps,expected", [(None, 2000), (270, 27), (50, 10), (10**6, 2000)])
def test_the_loss_scale_grows_back_within_a_short_run(steps, expected):
    assert optimizers.loss_scale_growth_steps(steps) == expected


def test_the_last_batch_is_padded_to_one_shape_and_the_padding_is_labelled():
    features = {"ids": tf.constant([[1, 2], [3, 4], [5, 6]]), "user": (tf.constant([7, 8, 9]),)}
    padded, label = data.pad_batch(features, tf.constant([1.0, 0.0, 1.0]), 5)
    assert padded["ids"].shape == (5, 2) and padded["user"][0].shape == (5,)
    assert padded["ids"].numpy().tolist() == [[1, 2], [3, 4], [5, 6], [0, 0], [0, 0]]
    assert label.numpy().tolist() == [1.0, 0.0, 1.0, data.PADDING_LABEL, data.PADDING_LABEL]
    full, full_label = data.pad_batch(features, tf.constant([1.0, 0.0, 1.0]), 3)
    assert full_label.numpy().tolist() == [1.0, 0.0, 1.0]


def test_padded_evaluation_gives_the_same_metrics(tiny_dataset):
    # 2048 test samples in batches of 600: the last has 248, padded to 600 under XLA's fixed shapes.
    from sim_tf.train.config import TrainConfig
    from sim_tf.train.task import CtrTask
    from sim_tf.train.evaluation import Evaluator
    from sim_tf import distribute

    spec = tiny_dataset
    config = TrainConfig(dataset_dir=str(spec.base_directory), model_type="din", global_batch_size=600,
                         long_seq_length=15, seed=1)
    results = {}
    for pad in (False, True):
        plan = distribute.DevicePlan(xla=False, steps_per_loop=1, drop_remainder=False, pad_last_eval_batch=pad,
                                     row_sum="sparse_matmul", num_parallel_reads=4, deterministic_input=True,
                                     gpu_memory_growth=False)
        keras.utils.set_random_seed(1)
        task = CtrTask(config, spec, plan=plan)
        task.build_model()
        evaluator = Evaluator(tf.distribute.get_strategy(), task,
                              lambda mapping, forever: task.build_inputs(mapping, None, 0, forever),
                              {"test": task.sample_count("test")})
        shapes = {int(label.shape[0]) for _, label in task.build_inputs("test", None, 0)}
        results[pad] = (evaluator.evaluate("test"), shapes)
    assert results[False][1] == {600, 248} and results[True][1] == {600}
    assert results[True][0]["samples"] == results[False][0]["samples"] == 2048
    assert results[True][0]["auc"] == pytest.approx(results[False][0]["auc"], abs=1e-6)


def test_float16_gru_keeps_its_state_in_float32():
    rng = np.random.default_rng(0)
    inputs = tf.constant(rng.normal(size=[4, 30, 6]).astype("float32"))
    mask = tf.ones([4, 30])
    exact = dien.MaskedGRU(8)
    with precision.global_dtype_policy("mixed_float16"):
        half = dien.MaskedGRU(8)
    exact(inputs, mask)
    half(inputs, mask)
    for target, source in zip(half.weights, exact.weights):
        target.assign(source)
    graph = tf.function(lambda x, m: half(x, m)).get_concrete_function(inputs, mask).graph
    tanh = [op for op in graph.get_operations() if op.type == "Tanh"]
    assert tanh and all(op.outputs[0].dtype == tf.float32 for op in tanh)  # gates and state in float32
    states, final = half(inputs, mask)
    assert final.dtype == tf.float16
    np.testing.assert_allclose(final.numpy().astype("float32"), exact(inputs, mask)[1].numpy(), atol=0.01)


def test_sparse_gradients_are_made_small_before_they_cross_replicas():
    from sim_tf.train.task import DENSE_EXCHANGE_MAX_ROWS, for_exchange

    rng = np.random.default_rng(0)
    ids = tf.constant(rng.integers(0, 40, size=3000), tf.int32)  # 3,000 lookups of 40 distinct ids
    values = tf.constant(rng.normal(size=[3000, 4]).astype("float32"))
    small = tf.IndexedSlices(values, ids, tf.constant([500, 4]))
    dense = for_exchange(small)
    assert not isinstance(dense, tf.IndexedSlices)  # a category-sized table goes dense: NCCL all-reduces it
    np.testing.assert_allclose(dense.numpy(), tf.convert_to_tensor(small).numpy(), rtol=1e-5, atol=1e-5)
    large = tf.IndexedSlices(values, ids, tf.constant([DENSE_EXCHANGE_MAX_ROWS + 1, 4]))
    deduped = for_exchange(large)
    assert isinstance(deduped, tf.IndexedSlices) and deduped.values.shape[0] == len(set(ids.numpy().tolist()))
    np.testing.assert_allclose(tf.convert_to_tensor(deduped).numpy(), tf.convert_to_tensor(large).numpy(),
                               rtol=1e-5, atol=1e-5)
    plain = tf.ones([3])
    assert for_exchange(plain) is plain


def test_prediction_in_microbatches_equals_the_whole_batch(tiny_dataset):
    from sim_tf.train.config import TrainConfig
    from sim_tf.train.task import CtrTask

    config = TrainConfig(dataset_dir=str(tiny_dataset.base_directory), model_type="sim", global_batch_size=333,
                         long_seq_length=15, seed=1)
    whole = CtrTask(config, tiny_dataset, microbatches=1)
    keras.utils.set_random_seed(1)
    whole.build_model()
    split = CtrTask(config, tiny_dataset, microbatches=2)
    split.model = whole.model
    batch = next(iter(whole.build_inputs("test", None, 0)))
    np.testing.assert_allclose(split.predict_step(batch)[0].numpy(), whole.predict_step(batch)[0].numpy(),
                               rtol=1e-5, atol=1e-6)
