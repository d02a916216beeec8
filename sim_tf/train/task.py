"""The per-replica maths: one training step and one evaluation step for a CTR model.

Loss scaling under a strategy: every replica divides its loss sums by the *global* number of samples
and of auxiliary pairs (one small all-reduce of two counts), and Keras's optimizer sums the replicas'
gradients, so N replicas take exactly the step one device would take on the whole global batch — also
for the last, partial batch, where replicas may hold different numbers of samples (or none).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from sim_tf.data import dataset as data
from sim_tf.models import losses
from sim_tf.train.optimizers import LazyAdam, densify

# Keras's Adam and Adagrad square an IndexedSlices gradient row by row *before* duplicate ids are summed,
# which is not Adam; densifying first (as the recipe does) gives the real update. SGD and LazyAdam sum
# duplicates themselves and stay sparse.
DENSE_GRADIENT_OPTIMIZERS = (keras.optimizers.Adam, keras.optimizers.Adagrad)


def _is_dense_optimizer(optimizer) -> bool:

    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return isinstance(inner, DENSE_GRADIENT_OPTIMIZERS) and not isinstance(inner, LazyAdam)


class CtrTask:
    """Owns the model and optimizer maths; knows nothing about files, flags or the loop."""

    def __init__(self, model: keras.Model, optimizer, loss_scaling: bool, xla: bool, num_replicas: int,
                 microbatches: int = 1):
        if microbatches < 1:
            raise ValueError(f"microbatches must be >= 1, got {microbatches}")
        self.model = model
        self.microbatches = microbatches
        self.optimizer = optimizer
        self.loss_scaling = loss_scaling
        self.num_replicas = num_replicas
        self.dense_gradients = _is_dense_optimizer(optimizer)
        self._forward_backward = (
            tf.function(self._forward_backward_impl, jit_compile=True) if xla else self._forward_backward_impl
        )
        self._predict = tf.function(self._predict_impl, jit_compile=True) if xla else self._predict_impl

    @staticmethod
    def local_counts(features, labels) -> tf.Tensor:
        """[samples, auxiliary pairs] of this replica's batch, as float32."""
        mask = features[data.SHORT_MASK]
        pairs = tf.reduce_sum(mask[:, :-1] * mask[:, 1:])
        return tf.stack([tf.cast(tf.shape(labels)[0], tf.float32), tf.cast(pairs, tf.float32)])

    @staticmethod
    def split_batch(features, labels, parts: int) -> list:
        """The batch as ``parts`` consecutive (features, labels) slices; the last takes the remainder, and a
        batch smaller than ``parts`` gives empty slices, which add nothing to the loss sums."""
        if parts == 1:
            return [(features, labels)]
        size = tf.shape(labels)[0]
        sizes = [size // parts] * (parts - 1)
        sizes.append(size - (parts - 1) * (size // parts))
        columns = [tf.split(x, sizes, axis=0) for x in tf.nest.flatten((features, labels))]
        return [tf.nest.pack_sequence_as((features, labels), [c[i] for c in columns]) for i in range(parts)]

    def _forward_backward_impl(self, features, labels, global_counts):
        """Loss and gradients of the batch. With several microbatches each part runs its own forward pass
        and the loss is the sum of the parts' terms over the *global* counts, which is exactly the whole
        batch's loss, so the gradient is the whole batch's too (up to the order of float sums); the parts'
        passes share no ops until their gradients meet, so idle cores can run them side by side."""
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            loss = 0.0
            for part_features, part_labels in self.split_batch(features, labels, self.microbatches):
                terms = losses.loss_terms(self.model(part_features, training=True), part_labels)
                loss += losses.combine(terms, global_counts[0], global_counts[1])
            scaled = self.optimizer.scale_loss(loss) if self.loss_scaling else loss
        return loss, tape.gradient(scaled, variables)

    def train_step(self, batch):
        """One replica's step; returns its share of the global mean loss."""
        features, labels = batch
        context = tf.distribute.get_replica_context()
        global_counts = context.all_reduce(tf.distribute.ReduceOp.SUM, self.local_counts(features, labels))
        loss, grads = self._forward_backward(features, labels, global_counts)
        if self.dense_gradients:
            grads = [densify(g) for g in grads]
        if self.loss_scaling and self.num_replicas > 1:
            grads = self._agree_on_finiteness(context, grads)
        self.optimizer.apply(grads, self.model.trainable_variables)
        return loss

    @staticmethod
    def _agree_on_finiteness(context, grads):
        """Makes every replica see non-finite gradients if any replica has them.

        Keras's LossScaleOptimizer checks each replica's own gradients before they are all-reduced; if
        replicas disagreed, some would skip the step and others not. One scalar all-reduce makes the
        decision (skip and lower the scale, or apply) the same everywhere.
        """
        finite = tf.reduce_all(
            [tf.reduce_all(tf.math.is_finite(g.values if isinstance(g, tf.IndexedSlices) else g)) for g in grads]
        )
        failures = context.all_reduce(tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(finite, tf.float32))
        all_finite = failures == 0.0
        poison = tf.where(all_finite, tf.constant(1.0), tf.constant(float("nan")))

        def mark(g):
            if isinstance(g, tf.IndexedSlices):
                return tf.IndexedSlices(g.values * tf.cast(poison, g.values.dtype), g.indices, g.dense_shape)
            return g * tf.cast(poison, g.dtype)

        return [mark(g) for g in grads]

    def _predict_impl(self, features):
        return self.model(features, training=False)["prediction"]

    def predict_step(self, batch):
        """(probabilities, labels, first user feature) of one replica's batch."""
        features, labels = batch
        return self._predict(features), labels, features[data.USER][0]
