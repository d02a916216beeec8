"""CtrTask's training maths: splitting a batch into microbatches changes the schedule, not the step."""

import numpy as np
import pytest
import tensorflow as tf

from sim_tf.train.optimizers import make_optimizer
from sim_tf.train.task import CtrTask
from tests.models.test_models import build, make_features


def _loss_and_gradients(task, features, labels):
    loss, grads = task.forward_backward(features, labels, CtrTask.local_counts(features, labels))
    return float(loss), [tf.convert_to_tensor(g).numpy() for g in grads]


@pytest.mark.parametrize("model_type", ["sim", "dien", "din"])
@pytest.mark.parametrize("batch", [7, 2, 1])  # 7 splits unevenly; 1 leaves empty parts
def test_microbatches_give_the_whole_batch_loss_and_gradients(model_type, batch):
    features, labels = make_features(batch=batch, seed=3)
    model = build(model_type)
    model(features, training=True)
    optimizer = make_optimizer("adam", 1e-3)

    def task(parts):
        return CtrTask(model, optimizer, loss_scaling=False, xla=False, num_replicas=1, microbatches=parts)

    whole_loss, whole = _loss_and_gradients(task(1), features, labels)
    assert np.isfinite(whole_loss) and any(np.abs(g).max() > 0 for g in whole)
    for parts in (2, 3):
        loss, grads = _loss_and_gradients(task(parts), features, labels)
        assert loss == pytest.approx(whole_loss, rel=1e-6)
        assert len(grads) == len(whole)
        for got, want, variable in zip(grads, whole, model.trainable_variables):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7, err_msg=variable.path)


def test_split_batch_keeps_every_sample_once_in_order():
    features, labels = make_features(batch=7, seed=1)
    parts = CtrTask.split_batch(features, labels, 3)
    assert [int(tf.shape(y)[0]) for _, y in parts] == [2, 2, 3]
    np.testing.assert_array_equal(tf.concat([y for _, y in parts], 0), labels)
    flat = [tf.nest.flatten(f) for f, _ in parts]
    for i, original in enumerate(tf.nest.flatten(features)):
        np.testing.assert_array_equal(tf.concat([f[i] for f in flat], 0), original)


def test_microbatches_must_be_positive():
    with pytest.raises(ValueError, match="microbatches"):
        CtrTask(build("din"), make_optimizer("adam", 1e-3), False, False, 1, microbatches=0)
