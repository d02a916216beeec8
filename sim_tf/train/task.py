"""The task, as in Model Garden: builds the model, the optimizer and the inputs, runs one step, and owns
the CTR metrics. It knows nothing about the strategy, the loop, checkpoints or summaries.

Loss scaling under a strategy: every replica divides its loss sums by the *global* number of samples
and of auxiliary pairs (one small all-reduce of two counts), and Keras's optimizer sums the replicas'
gradients, so N replicas take exactly the step one device would take on the whole global batch — also
for the last, partial batch, where replicas may hold different numbers of samples (or none).
"""

from __future__ import annotations

import functools
import os

import keras
import tensorflow as tf

from sim_tf import distribute
from sim_tf.data import dataset as data
from sim_tf.data import feature_spec as fs
from sim_tf.data import inputs
from sim_tf.models import losses, models
from sim_tf.train import metrics
from sim_tf.train.config import TrainConfig
from sim_tf.train.optimizers import (LazyAdam, LossScaleOptimizer, all_finite, densify, loss_scale_growth_steps,
                                     make_optimizer, sum_rows)

# Keras's Adam and Adagrad square an IndexedSlices gradient row by row *before* duplicate ids are summed,
# which is not Adam; densifying first (as the recipe does) gives the real update. SGD and LazyAdam sum
# duplicates themselves and stay sparse.
DENSE_GRADIENT_OPTIMIZERS = (keras.optimizers.Adam, keras.optimizers.Adagrad)


def needs_dense_gradients(optimizer) -> bool:
    """Whether ``optimizer`` (or the one a LossScaleOptimizer wraps) must be given dense gradients."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return isinstance(inner, DENSE_GRADIENT_OPTIMIZERS) and not isinstance(inner, LazyAdam)


# Embedding tables up to this many rows send their gradient dense across replicas: a dense all-reduce of
# at most 4 MB (at 16 floats a row) costs less than gathering every replica's sparse rows, which NCCL cannot
# all-reduce (TensorFlow falls back to reducing on one device or all-gathering).
DENSE_EXCHANGE_MAX_ROWS = 1 << 16


def for_exchange(gradient):
    """A gradient as it should cross replicas: a small table's IndexedSlices summed into a dense tensor, a
    large table's with its duplicate rows summed first (a batch looks the same item up many times: the
    rows to exchange shrink from one per lookup to one per distinct id). Dense gradients pass unchanged."""
    if not isinstance(gradient, tf.IndexedSlices):
        return gradient
    rows = gradient.dense_shape[0] if gradient.dense_shape is not None else None
    static_rows = tf.get_static_value(rows) if rows is not None else None
    if static_rows is not None and static_rows <= DENSE_EXCHANGE_MAX_ROWS:
        return densify(gradient)
    ids, position = tf.unique(gradient.indices)
    return tf.IndexedSlices(sum_rows(gradient.values, position, tf.shape(ids)[0]), ids, gradient.dense_shape)


class CtrTask:
    """CTR training for one model family (SIM, DIEN, DIN) on one FeatureSpec dataset.

    Call :meth:`build_model` and :meth:`create_optimizer` (inside the strategy's scope) before the steps.
    ``microbatches`` splits each replica's training batch into independent forward/backward parts.
    """

    def __init__(self, config: TrainConfig, spec: fs.FeatureSpec, num_replicas: int = 1,
                 loss_scaling: bool = False, microbatches: int = 1, plan: distribute.DevicePlan | None = None):
        if microbatches < 1:
            raise ValueError(f"microbatches must be >= 1, got {microbatches}")
        self.config = config
        # What the devices decided; without one (tests, tools), the CPU's choices for this config.
        self.plan = plan or distribute.plan_devices(0, distribute.usable_cores(), xla=bool(config.xla),
                                                    steps_per_loop=config.steps_per_loop,
                                                    drop_remainder=config.drop_remainder,
                                                    deterministic=config.deterministic,
                                                    num_parallel_reads=config.num_parallel_reads)
        self.spec = spec
        self.num_replicas = num_replicas
        self.loss_scaling = loss_scaling
        self.microbatches = microbatches
        self.model: keras.Model | None = None
        self.optimizer = None
        self.dense_gradients = False
        # The training records cached in memory, shared by every epoch's pipeline (see input_options).
        self._record_cache: dict = {}
        xla = self.plan.xla
        self.forward_backward = (
            tf.function(self._forward_backward_impl, jit_compile=True) if xla else self._forward_backward_impl
        )
        self._predict = tf.function(self._predict_impl, jit_compile=True) if xla else self._predict_impl

    # ------------------------------------------------------------------ building
    def build_model(self) -> keras.Model:
        self.model = models.build_model(self.config.model_type, self.config.model, self.spec)
        return self.model

    def create_optimizer(self, total_steps: int | None = None):
        """The optimizer (wrapped for dynamic loss scaling when asked, growing the scale again after a tenth
        of ``total_steps``, the run's planned steps), with its slots built."""
        c = self.config
        optimizer = make_optimizer(c.optimizer, c.lr, c.weight_decay)
        if self.loss_scaling:
            optimizer = LossScaleOptimizer(optimizer, dynamic_growth_steps=loss_scale_growth_steps(total_steps))
        optimizer.build(self.model.trainable_variables)
        self.optimizer = optimizer
        self.dense_gradients = needs_dense_gradients(optimizer)
        return optimizer

    def sample_count(self, mapping: str) -> int:
        """Samples in ``mapping``: as the spec's metadata declares, else counted from the records."""
        return data.sample_count(self.spec, mapping)

    def declared_count(self, mapping: str) -> int | None:
        """The count the spec's metadata declares for ``mapping``, None when it declares none."""
        return data.declared_sample_count(self.spec, mapping)

    @functools.cached_property
    def train_fits_in_memory(self) -> bool:
        """Caching keeps the serialized records in RAM; skip it when they would take over a quarter of it.

        Decided once per run: it also fixes the file order, which must be the same in every epoch's
        pipeline (and one stat per file is a network call on remote storage).
        """
        try:
            size = sum(tf.io.gfile.stat(f).length for f in self.spec.files("train"))
            pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, tf.errors.OpError):
            return False
        return size < pages / 4

    def input_options(self, mapping: str, epoch: int, forever: bool = False) -> data.InputOptions:
        """How ``mapping`` is read in ``epoch``; ``forever`` repeats it without end (benchmarks)."""
        c = self.config
        training = mapping == "train"
        prefetch = c.prefetch_train_size if training else c.prefetch_test_size
        prebatch = c.prebatch_train_size if training else c.prebatch_test_size
        cacheable = c.cache and training and not c.benchmark and self.train_fits_in_memory
        return data.InputOptions(
            long_seq_length=c.long_seq_length,
            # One seed per epoch (not one reshuffling stream), so a run resumed at epoch k sees the same
            # order as an uninterrupted one.
            seed=c.seed * 1009 + epoch,
            shuffle=training,
            shuffle_buffer=c.shuffle_buffer,
            drop_remainder=self.plan.drop_remainder and training,
            # The cache only pays when this run reads the records again. The file order must not depend on
            # the number of epochs, though, so a one-pass run reads in the cached runs' order.
            cache=cacheable and c.epochs * max(1, c.repeat_count) > 1 and not forever,
            fixed_file_order=cacheable,
            repeat=0 if forever or (c.benchmark and training) else max(1, c.repeat_count) if training else 1,
            prefetch=prefetch if prefetch > 0 else data.AUTOTUNE,
            deterministic=self.plan.deterministic_input,
            num_parallel_reads=self.plan.num_parallel_reads,
            # Under XLA a last batch of another size would compile the prediction step again.
            pad_final_batch=self.plan.pad_last_eval_batch and not training,
            prebatch_size=prebatch or None,
            negative_history=training,
            gsu=c.model.gsu,
            max_long_history=c.max_long_history,
            top_k=c.model.top_k,
        )

    def build_inputs(self, mapping: str, input_context: tf.distribute.InputContext | None = None,
                     epoch: int = 0, forever: bool = False) -> tf.data.Dataset:
        """One input pipeline's batches of ``mapping``: per replica under an ``input_context``."""
        options = self.input_options(mapping, epoch, forever)
        return data.make_dataset(self.spec, mapping, self.config.global_batch_size, input_context, options,
                                 self._record_cache)

    # ------------------------------------------------------------------ steps
    @staticmethod
    def local_counts(features, labels) -> tf.Tensor:
        """[samples, auxiliary pairs] of this replica's batch, as float32."""
        pairs = tf.reduce_sum(inputs.aux_pair_mask(features[inputs.SHORT_MASK]))
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
        """One replica's step; returns (its share of the global mean loss, the step's global sample count)."""
        features, labels = batch
        context = tf.distribute.get_replica_context()
        global_counts = context.all_reduce(tf.distribute.ReduceOp.SUM, self.local_counts(features, labels))
        loss, grads = self.forward_backward(features, labels, global_counts)
        if self.dense_gradients:
            grads = [densify(g) for g in grads]
        elif self.num_replicas > 1 and self.plan.compact_sparse_exchange:
            grads = [for_exchange(g) for g in grads]
        if self.loss_scaling and self.num_replicas > 1:
            grads = self._agree_on_finiteness(context, grads)
        self.optimizer.apply(grads, self.model.trainable_variables)
        return loss, global_counts[0]

    @staticmethod
    def _agree_on_finiteness(context, grads):
        """Makes every replica see non-finite gradients if any replica has them.

        Keras's LossScaleOptimizer checks each replica's own gradients before they are all-reduced; if
        replicas disagreed, some would skip the step and others not. One scalar all-reduce makes the
        decision (skip and lower the scale, or apply) the same everywhere.
        """
        finite = all_finite(grads)
        failures = context.all_reduce(tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(finite, tf.float32))
        everywhere_finite = failures == 0.0
        poison = tf.where(everywhere_finite, tf.constant(1.0), tf.constant(float("nan")))

        def mark(g):
            if isinstance(g, tf.IndexedSlices):
                return tf.IndexedSlices(g.values * tf.cast(poison, g.values.dtype), g.indices, g.dense_shape)
            return g * tf.cast(poison, g.dtype)

        return [mark(g) for g in grads]

    def _predict_impl(self, features):
        """Probabilities of the batch, predicted in ``microbatches`` independent parts (see train_step)."""
        if self.microbatches == 1:
            return self.model(features, training=False)["prediction"]
        parts = self.split_batch(features, tf.zeros_like(features[inputs.USER][0], tf.float32), self.microbatches)
        return tf.concat([self.model(f, training=False)["prediction"] for f, _ in parts], axis=0)

    def predict_step(self, batch):
        """(probabilities, labels, first user feature) of one replica's batch."""
        features, labels = batch
        return self._predict(features), labels, features[inputs.USER][0]

    # ------------------------------------------------------------------ metrics
    @staticmethod
    def evaluate_predictions(labels, probabilities, users, curves: bool = False) -> dict:
        """AUC, GAUC (grouped by user) and log loss of one pass; with ``curves``, ROC and PR points too."""
        result = metrics.evaluate_predictions(labels, probabilities, users)
        if curves:
            result["roc"] = metrics.roc_curve(labels, probabilities)
            result["pr"] = metrics.pr_curve(labels, probabilities)
        return result
