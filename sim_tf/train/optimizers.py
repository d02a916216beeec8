"""Optimizers: Keras's own, plus a lazy (row-sparse) Adam for embedding tables.

Keras 3's Adam turns an embedding table's IndexedSlices gradient into a dense update of every row at
every step, a cost that grows with the vocabulary, which is why the recipe slows down as the vocabulary
grows. :class:`LazyAdam` updates only the rows a batch touched: their moments
and weights follow Adam exactly, untouched rows keep their moments (as TensorFlow Addons' LazyAdam did).
On a step where every row is touched, it equals Keras's Adam.

``adam`` itself is :class:`FusedAdam`: Keras's Adam with the dense update done by TensorFlow's fused
``ResourceApplyAdam`` kernel, one multi-threaded pass over the variable instead of Keras's eleven
elementwise ops (each a pass over the whole table).
Same formula, same variables and checkpoints; not bit-identical, as the kernel computes 1 - beta_2 in
float32 (0.0010000467) where Keras rounds 0.001.

``weight_decay`` is decoupled (AdamW-style: w -= lr * wd * w); LazyAdam applies it to the touched rows
of tables and to every dense variable.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from sim_tf.distribute import ROW_SUM_KERNELS
from sim_tf.train.config import OPTIMIZERS




# How sum_rows adds rows: "sparse_matmul" (CPUs) or "segment_sum" (GPUs); set per run from the devices
# (distribute.plan_devices) before any step is traced.
_row_sum = "sparse_matmul"


def set_row_sum(kind: str) -> None:
    """Chooses sum_rows's kernel for the steps traced from now on."""
    global _row_sum
    if kind not in ROW_SUM_KERNELS:
        raise ValueError(f"row sum kernel must be one of {' or '.join(ROW_SUM_KERNELS)}, got {kind!r}")
    _row_sum = kind


def row_sum() -> str:
    return _row_sum


def sum_rows(values: tf.Tensor, segment_ids: tf.Tensor, num_segments) -> tf.Tensor:
    """``tf.math.unsorted_segment_sum(values, segment_ids, num_segments)`` for 2-D ``values``.

    With the ``sparse_matmul`` kernel (CPUs, 2-3x faster there): TensorFlow's CPU UnsortedSegmentSum adds
    one row at a time on one thread; the same sum written as a sparse [num_segments, N] 0/1 matrix times
    ``values`` runs multi-threaded and adds the rows in the same order, so the result is bit-identical.
    On GPUs (``segment_sum``) the sparse matmul has no deterministic kernel and needs an [N, 2] int64
    index matrix, while UnsortedSegmentSum is a native, deterministic-capable GPU kernel.
    """
    if _row_sum == "segment_sum":
        return tf.math.unsorted_segment_sum(values, segment_ids, num_segments)
    count = tf.shape(values, out_type=tf.int64)[0]
    positions = tf.stack([tf.cast(segment_ids, tf.int64), tf.range(count, dtype=tf.int64)], axis=1)
    selector = tf.SparseTensor(positions, tf.ones([count], values.dtype),
                               tf.stack([tf.cast(num_segments, tf.int64), count]))
    return tf.sparse.sparse_dense_matmul(selector, values)


def densify(gradient):
    """An IndexedSlices gradient as a dense tensor (duplicates summed), through :func:`sum_rows`."""
    if not isinstance(gradient, tf.IndexedSlices):
        return gradient
    rows = gradient.dense_shape[0] if gradient.dense_shape is not None else None
    if rows is None or len(gradient.values.shape) != 2:
        return tf.convert_to_tensor(gradient)
    return sum_rows(gradient.values, gradient.indices, rows)


def _tf_variable(variable):
    """The tf.Variable behind a Keras variable (the optimizer sees both kinds)."""
    return variable.value if isinstance(variable, keras.Variable) else variable


@keras.saving.register_keras_serializable(package="sim_tf")
class FusedAdam(keras.optimizers.Adam):
    """Keras's Adam; dense float32 updates run as one fused ``ResourceApplyAdam`` kernel.

    The kernel computes what Keras's update_step writes (m += (g - m)(1 - b1), v += (g^2 - v)(1 - b2),
    w -= lr_t m / (sqrt(v) + eps) with lr_t = lr sqrt(1 - b2^t) / (1 - b1^t)). amsgrad, other dtypes and
    IndexedSlices gradients take Keras's path.
    """

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or isinstance(gradient, tf.IndexedSlices) or variable.dtype != tf.float32:
            return super().update_step(gradient, variable, learning_rate)
        index = self._get_variable_index(variable)
        step = tf.cast(self.iterations + 1, tf.float32)
        beta_1 = tf.cast(self.beta_1, tf.float32)
        beta_2 = tf.cast(self.beta_2, tf.float32)
        # Inside a strategy's update() the handles of mirrored variables resolve to this device's copy.
        tf.raw_ops.ResourceApplyAdam(
            var=_tf_variable(variable).handle,
            m=_tf_variable(self._momentums[index]).handle,
            v=_tf_variable(self._velocities[index]).handle,
            beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, tf.float32),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.constant(self.epsilon, tf.float32),
            grad=tf.cast(gradient, tf.float32),
        )


@keras.saving.register_keras_serializable(package="sim_tf")
class LazyAdam(FusedAdam):
    """Adam with sparse row updates for IndexedSlices gradients (embedding tables)."""

    def __init__(self, learning_rate=0.001, weight_decay=None, **kwargs):
        if kwargs.get("amsgrad"):
            raise ValueError("LazyAdam does not support amsgrad")
        super().__init__(learning_rate=learning_rate, weight_decay=None, **kwargs)
        self.decoupled_weight_decay = float(weight_decay or 0.0)

    def update_step(self, gradient, variable, learning_rate):
        lr = tf.cast(learning_rate, variable.dtype)
        decay = self.decoupled_weight_decay
        if not isinstance(gradient, tf.IndexedSlices):
            if decay:
                self.assign_sub(variable, variable * (lr * decay))
            return super().update_step(gradient, variable, learning_rate)

        # Sum duplicate rows (the same id looked up several times, or by several replicas).
        rows, position = tf.unique(gradient.indices)
        values = sum_rows(tf.cast(gradient.values, variable.dtype), position, tf.shape(rows)[0])
        step = tf.cast(self.iterations + 1, variable.dtype)
        beta_1 = tf.cast(self.beta_1, variable.dtype)
        beta_2 = tf.cast(self.beta_2, variable.dtype)
        alpha = lr * tf.sqrt(1.0 - tf.pow(beta_2, step)) / (1.0 - tf.pow(beta_1, step))

        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        m_rows = beta_1 * tf.gather(_tf_variable(m), rows) + (1.0 - beta_1) * values
        v_rows = beta_2 * tf.gather(_tf_variable(v), rows) + (1.0 - beta_2) * tf.square(values)
        self.assign(m, tf.IndexedSlices(m_rows, rows))
        self.assign(v, tf.IndexedSlices(v_rows, rows))
        delta = alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon)
        if decay:
            delta += lr * decay * tf.gather(_tf_variable(variable), rows)
        self.assign_sub(variable, tf.IndexedSlices(delta, rows))

    def get_config(self):
        config = super().get_config()
        config["weight_decay"] = self.decoupled_weight_decay or None
        return config


def make_optimizer(name: str, learning_rate: float, weight_decay: float = 0.0) -> keras.optimizers.Optimizer:
    """Creates an optimizer by flag name; ``weight_decay`` 0 disables decay. The flags are validated by
    TrainConfig; a name outside OPTIMIZERS is a programming error."""
    decay = weight_decay or None
    if name == "adam":
        return FusedAdam(learning_rate, weight_decay=decay)
    if name == "lazy_adam":
        return LazyAdam(learning_rate, weight_decay=decay)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, weight_decay=decay)
    if name == "adagrad":
        return keras.optimizers.Adagrad(learning_rate, weight_decay=decay)
    raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got {name!r}")


# Loss-scale growth interval: a tenth of the run's steps, between these bounds. Keras's default (2000)
# assumes long runs; a 3-epoch run at batch 131072 has ~270 steps, so one halving would be permanent.
MIN_GROWTH_STEPS, MAX_GROWTH_STEPS = 10, 2000


def loss_scale_growth_steps(total_steps: int | None) -> int:
    """Steps with finite gradients after which dynamic loss scaling doubles the scale again."""
    if not total_steps:
        return MAX_GROWTH_STEPS
    return max(MIN_GROWTH_STEPS, min(MAX_GROWTH_STEPS, total_steps // 10))


@keras.saving.register_keras_serializable(package="sim_tf")
class LossScaleOptimizer(keras.optimizers.LossScaleOptimizer):
    """Keras's LossScaleOptimizer whose finiteness check reads an IndexedSlices gradient's values.

    Keras's check converts every gradient to a tensor, which turns an embedding table's IndexedSlices
    into a dense [rows, dim] tensor at every step (a scatter over the whole table); the check needs only
    the values, as a non-finite entry of the dense gradient is one of them.
    """

    def check_finite(self, grads):
        return all_finite(grads)


def all_finite(grads) -> tf.Tensor:
    """Whether every gradient is finite, reading an IndexedSlices gradient's values (never densifying it)."""
    values = [g.values if isinstance(g, tf.IndexedSlices) else g for g in grads if g is not None]
    return tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(v)) for v in values]))
