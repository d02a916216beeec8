"""CtrTask: the step maths (microbatches change the schedule, not the step), and what it builds from a
config and a FeatureSpec (model, optimizer, inputs, metrics)."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from sim_tf.train.config import TrainConfig
from sim_tf.train.optimizers import make_optimizer
from sim_tf.train.task import CtrTask


def _task_for(model, optimizer, microbatches=1):
    """A task whose step maths run on a hand-built model (no dataset needed for the steps)."""
    task = CtrTask(TrainConfig(dataset_dir="unused"), spec=None, microbatches=microbatches)
    task.model, task.optimizer = model, optimizer
    return task


def _loss_and_gradients(task, features, labels):
    loss, grads = task.forward_backward(features, labels, CtrTask.local_counts(features, labels))
    return float(loss), [tf.convert_to_tensor(g).numpy() for g in grads]


@pytest.mark.parametrize("model_type", ["sim", "dien", "din"])
@pytest.mark.parametrize("batch", [7, 2, 1])  # 7 splits unevenly; 1 leaves empty parts
def test_microbatches_give_the_whole_batch_loss_and_gradients(model_type, batch, build, make_features):
    features, labels = make_features(batch=batch, seed=3)
    model = build(model_type)
    model(features, training=True)
    optimizer = make_optimizer("adam", 1e-3)

    whole_loss, whole = _loss_and_gradients(_task_for(model, optimizer), features, labels)
    assert np.isfinite(whole_loss) and any(np.abs(g).max() > 0 for g in whole)
    for parts in (2, 3):
        loss, grads = _loss_and_gradients(_task_for(model, optimizer, parts), features, labels)
        assert loss == pytest.approx(whole_loss, rel=1e-6)
        assert len(grads) == len(whole)
        for got, want, variable in zip(grads, whole, model.trainable_variables):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7, err_msg=variable.path)


def test_split_batch_keeps_every_sample_once_in_order(make_features):
    features, labels = make_features(batch=7, seed=1)
    parts = CtrTask.split_batch(features, labels, 3)
    assert [int(tf.shape(y)[0]) for _, y in parts] == [2, 2, 3]
    np.testing.assert_array_equal(tf.concat([y for _, y in parts], 0), labels)
    flat = [tf.nest.flatten(f) for f, _ in parts]
    for i, original in enumerate(tf.nest.flatten(features)):
        np.testing.assert_array_equal(tf.concat([f[i] for f in flat], 0), original)


def test_local_counts_are_samples_and_auxiliary_pairs(make_features):
    # Short histories of 5 with 0, 1, 2 and 5 real behaviours: 0 + 0 + 1 + 4 pairs of real neighbours.
    features, labels = make_features(batch=4, long=3, short=5, lengths=[0, 1, 2, 5])
    np.testing.assert_array_equal(CtrTask.local_counts(features, labels).numpy(), [4.0, 5.0])


def test_microbatches_must_be_positive():
    with pytest.raises(ValueError, match="microbatches"):
        CtrTask(TrainConfig(dataset_dir="unused"), spec=None, microbatches=0)


def test_task_builds_model_optimizer_inputs_and_one_step_from_a_spec(tiny_dataset):
    config = TrainConfig(dataset_dir=tiny_dataset.base_directory, model_type="din", global_batch_size=64,
                         long_seq_length=tiny_dataset.history_length - 10, lr=0.01)
    task = CtrTask(config, tiny_dataset)
    model = task.build_model()
    optimizer = task.create_optimizer()
    assert task.dense_gradients  # adam: densified before the update
    assert optimizer.iterations.numpy() == 0
    features, labels = next(iter(task.build_inputs("train")))
    assert labels.shape == (64,)
    before = [v.numpy().copy() for v in model.trainable_variables]
    loss, samples = tf.distribute.get_strategy().run(task.train_step, args=((features, labels),))
    assert np.isfinite(float(loss)) and float(samples) == 64 and optimizer.iterations.numpy() == 1
    assert any(not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables))
    probabilities, y, users = task.predict_step(next(iter(task.build_inputs("test"))))
    assert probabilities.shape == y.shape == users.shape


def test_input_options_follow_the_config(tiny_dataset):
    config = TrainConfig(dataset_dir="x", seed=3, epochs=2, drop_remainder=True, long_seq_length=7)
    task = CtrTask(config, tiny_dataset)
    train, test = task.input_options("train", epoch=1), task.input_options("test", epoch=1)
    assert (train.seed, train.shuffle, train.drop_remainder, train.negative_history) == (3 * 1009 + 1, True, True, True)
    assert (test.shuffle, test.drop_remainder, test.negative_history, test.repeat) == (False, False, False, 1)
    assert train.cache  # two epochs of a dataset far smaller than the RAM
    assert not task.input_options("train", 0, forever=True).cache and task.input_options("train", 0, forever=True).repeat == 0
    one_epoch = CtrTask(dataclasses.replace(config, epochs=1), tiny_dataset).input_options("train", 0)
    assert not one_epoch.cache and one_epoch.fixed_file_order  # same order as a cached run, without the cache


def test_metrics_of_a_perfect_and_an_inverted_ranking():
    labels = np.array([0, 1, 0, 1, 1, 0], np.float32)
    users = np.array([1, 1, 1, 2, 2, 2])
    good = CtrTask.evaluate_predictions(labels, np.array([0.1, 0.9, 0.2, 0.8, 0.7, 0.3]), users, curves=True)
    bad = CtrTask.evaluate_predictions(labels, np.array([0.9, 0.1, 0.8, 0.2, 0.3, 0.7]), users)
    assert good["auc"] == 1.0 and good["gauc"] == 1.0 and bad["auc"] == 0.0 and bad["gauc"] == 0.0
    assert good["roc"][0][0] == 0.0 and good["roc"][0][-1] == 1.0 and "roc" not in bad
