"""Building blocks shared by DIN, DIEN and SIM: embeddings, the CTR MLP, masked pooling and attention.

Shapes: B batch, T sequence positions, D feature width. Masks are float tensors, 1 for a real
behaviour and 0 for padding. Layers compute in the layer's compute dtype (bfloat16/float16 under a
mixed policy) but keep variables, and wherever stated their outputs, in float32.
"""

from __future__ import annotations

import math
from typing import Sequence

import keras
import tensorflow as tf

from sim_tf.models import ATTENTION_KINDS


def check_positive_ints(name: str, values: int | Sequence[int]) -> tuple[int, ...]:
    """Every layer's argument check: ``values`` (one int or a sequence) as a tuple of positive ints, or a
    ValueError naming the argument."""
    values = (values,) if isinstance(values, int) else tuple(values)
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise ValueError(f"{name} must be positive integers, got {values!r}")
    return values


def sigmoid(x: tf.Tensor) -> tf.Tensor:
    """Sigmoid; bfloat16 inputs are computed in float32 and cast back (CPUs run bfloat16 elementwise
    maths ~3x slower than float32, so the two casts are cheaper than the bfloat16 sigmoid)."""
    if x.dtype == tf.bfloat16:
        return tf.cast(tf.sigmoid(tf.cast(x, tf.float32)), tf.bfloat16)
    return tf.sigmoid(x)


def masked_softmax(scores: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Softmax over the last axis of ``scores`` [B, T] restricted to ``mask`` [B, T].

    Masked scores are set to the dtype's minimum before the softmax, and the weights are multiplied by
    the mask afterwards, so a row with no real position gets all-zero weights instead of a uniform 1/T.
    """
    mask = tf.cast(mask, scores.dtype)
    lowest = tf.constant(scores.dtype.min, scores.dtype)
    weights = tf.nn.softmax(tf.where(mask > 0, scores, lowest), axis=-1)
    return weights * mask


def _float32(x: tf.Tensor) -> tf.Tensor:
    return x if x.dtype == tf.float32 else tf.cast(x, tf.float32)


def masked_mean(values: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean of ``values`` [B, T, D] over the positions where ``mask`` [B, T] is 1; zeros when none is.

    (The reference divides by count + 1, which shrinks every mean; this is the true mean.)
    """
    mask = tf.cast(mask, values.dtype)
    total = tf.squeeze(tf.matmul(mask[:, None, :], values), axis=1)
    count = tf.reduce_sum(mask, axis=-1, keepdims=True)
    return total / tf.maximum(count, tf.ones_like(count))


def matmul_3d(x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """[N, T, D] x [D, K] -> [N, T, K] as one 2-D matmul (the einsum form runs slower on CPU: docs/performance.md)."""
    steps = x.shape[1] if x.shape[1] is not None else tf.shape(x)[1]
    flat = tf.matmul(tf.reshape(x, [-1, x.shape[-1]]), kernel)
    return tf.reshape(flat, [-1, steps, kernel.shape[-1]])


def split_first_layer(dense: keras.layers.Dense, query: tf.Tensor, keys: tf.Tensor, time_major: bool = False) -> tf.Tensor:
    """``dense``'s pre-activation on [q, k_t, q - k_t, q * k_t] for query [B, D] and keys [B, T, D]
    (or [T, B, D] with ``time_major``; the output has the keys' layout).

    With the kernel split by rows into W_q, W_k, W_d, W_p this is
    q (W_q + W_d) + k_t (W_k - W_d) + (q * k_t) W_p + b: the query's share is computed once per sample
    instead of once per position, and the per-position work is two matmuls of the keys' width. Same weights
    and the same function as the concatenation the papers write (up to float rounding). (One matmul over
    concat[k_t, q * k_t] costs the copy and its gradient's split: 35.4 vs 31.3 ms forward + backward for
    DIEN's attention at batch 4096.)
    """
    dtype = keys.dtype
    kernel = tf.cast(dense.kernel, dtype)
    w_q, w_k, w_d, w_p = tf.split(kernel, 4, axis=0)
    per_sample = tf.matmul(query, w_q + w_d)
    if dense.use_bias:
        per_sample += tf.cast(dense.bias, dtype)
    broadcast = (lambda x: x[None, :, :]) if time_major else (lambda x: x[:, None, :])
    per_position = matmul_3d(keys, w_k - w_d) + matmul_3d(broadcast(query) * keys, w_p)
    return per_position + broadcast(per_sample)


@keras.saving.register_keras_serializable(package="sim_tf")
class EmbeddingTable(keras.layers.Layer):
    """One embedding table: ids [...] int -> vectors [..., dim].

    The table is ``[rows, dim]`` float32 even under a mixed policy (outputs are cast to the compute
    dtype), initialised uniform(-sqrt(1/rows), sqrt(1/rows)) like the recipe; row 0 is padding. Lookups
    use ``tf.gather``, so the table's gradient is an ``IndexedSlices`` touching only the looked-up rows.
    """

    def __init__(self, rows: int, dim: int, **kwargs):
        super().__init__(**kwargs)
        check_positive_ints("rows and dim", (rows, dim))
        self.rows = rows
        self.dim = dim

    def build(self, input_shape=None):
        limit = math.sqrt(1.0 / self.rows)
        self.table = self.add_weight(
            name="table",
            shape=(self.rows, self.dim),
            dtype="float32",
            initializer=keras.initializers.RandomUniform(-limit, limit),
            # Under a mixed policy Keras would otherwise cast the *whole* table to the compute dtype on
            # every read (four times a step for an item table), a cost that grows with the vocabulary
            # (SIM with --amp lost 15% of its speed at Amazon's 1.2M items); source() decides instead.
            autocast=False,
        )
        self.built = True

    # Under a reduced-precision policy, tables up to this many rows are cast whole once per step and
    # every lookup gathers half-width rows from that copy (a gather moves half the bytes; the copy is at
    # most 8 MB at E = 16); larger tables gather float32 rows and cast only those, so no per-step cost or
    # temporary grows with the vocabulary. The crossover was measured (docs/performance.md).
    whole_cast_max_rows = 1 << 18

    def source(self):
        """What this step's lookups gather from: the float32 table, or a copy in the compute dtype."""
        if self.compute_dtype != "float32" and self.rows <= self.whole_cast_max_rows:
            return tf.cast(self.table, self.compute_dtype)
        return self.table

    def lookup(self, ids, source=None):
        """Rows for ``ids`` in the compute dtype; ``source`` from :meth:`source`, shared by a step's lookups."""
        source = self.source() if source is None else source
        return tf.cast(tf.gather(source, ids), self.compute_dtype)

    def call(self, ids):
        return self.lookup(ids)

    def get_config(self):
        return {**super().get_config(), "rows": self.rows, "dim": self.dim}


@keras.saving.register_keras_serializable(package="sim_tf")
class BatchNorm(keras.layers.Layer):
    """Batch normalisation of features [B, D]: y = (x - m) / sqrt(v + epsilon) * gamma + beta, per feature.

    Training takes m, v from the batch (v biased, as in Keras) and moves the running statistics towards
    them: running = momentum * running + (1 - momentum) * batch. Evaluation and prediction use the running
    ones. Statistics and the normalisation run in float32 under a mixed policy; the output is in the
    compute dtype.

    Why not ``keras.layers.BatchNormalization``: its running statistics have aggregation "none", so under
    a tf.distribute strategy each replica would keep its own copy and a checkpoint save only the first.
    Here they are aggregated by mean, so every replica updates one value (the mean of their batches'
    statistics) and stays identical. The default momentum, 0.9, rather than Keras's 0.99: a one-epoch run
    is a few hundred steps, and after 200 steps at 0.99 the running values still hold 13% of their
    initial (0, 1); evaluation then normalises by statistics the model never trained with.
    """

    def __init__(self, momentum: float = 0.9, epsilon: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= momentum < 1.0 or not epsilon > 0.0:
            raise ValueError(f"momentum must be in [0, 1) and epsilon > 0, got {momentum} and {epsilon}")
        self.momentum, self.epsilon = float(momentum), float(epsilon)

    def build(self, input_shape):
        width = (input_shape[-1],)
        weight = dict(shape=width, dtype="float32", autocast=False)
        self.gamma = self.add_weight(name="gamma", initializer="ones", **weight)
        self.beta = self.add_weight(name="beta", initializer="zeros", **weight)
        self.moving_mean = self.add_weight(name="moving_mean", initializer="zeros", trainable=False,
                                           aggregation="mean", **weight)
        self.moving_variance = self.add_weight(name="moving_variance", initializer="ones", trainable=False,
                                               aggregation="mean", **weight)
        self.built = True

    def call(self, inputs, training=False):
        x = tf.cast(inputs, tf.float32)
        if training:
            mean, variance = tf.nn.moments(x, axes=[0])
            keep = self.momentum
            self.moving_mean.assign(keep * self.moving_mean + (1.0 - keep) * mean)
            self.moving_variance.assign(keep * self.moving_variance + (1.0 - keep) * variance)
        else:
            mean, variance = self.moving_mean, self.moving_variance
        y = (x - mean) * (tf.math.rsqrt(variance + self.epsilon) * self.gamma) + self.beta
        return tf.cast(y, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="sim_tf")
class MLP(keras.layers.Layer):
    """The CTR head: [Dense(h) -> PReLU] for each hidden size h, then a float32 Dense(1) logit.

    PReLU has one slope per unit, initialised to 0.1. With ``dropout_rate`` > 0, dropout is applied to
    the last hidden layer's output (before the logit). With ``input_norm``, the input first goes through
    :class:`BatchNorm`, where the MLPs of the DIN and DIEN authors' code have one (theirs is never run in
    training mode, so it acts as a fixed affine map; the recipe's has none). Input [B, D] -> logit [B] float32.
    """

    def __init__(self, hidden_units: Sequence[int], dropout_rate: float = -1.0, input_norm: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.hidden_units = check_positive_ints("hidden_units", hidden_units)
        if dropout_rate >= 1.0:
            raise ValueError(f"dropout_rate must be < 1 (or <= 0 to disable), got {dropout_rate}")
        self.dropout_rate = float(dropout_rate)
        self.dense = [keras.layers.Dense(h, name=f"dense_{i}") for i, h in enumerate(self.hidden_units)]
        self.prelu = [
            keras.layers.PReLU(alpha_initializer=keras.initializers.Constant(0.1), name=f"prelu_{i}")
            for i in range(len(self.hidden_units))
        ]
        self.dropout = keras.layers.Dropout(self.dropout_rate) if self.dropout_rate > 0 else None
        self.logit = keras.layers.Dense(1, dtype="float32", name="logit")
        # Made last and drawing no random numbers: the head's other initial values do not depend on it.
        self.input_norm = BatchNorm(name="input_norm") if input_norm else None

    def build(self, input_shape):
        width = input_shape[-1]
        if self.input_norm is not None:
            self.input_norm.build((None, width))
        for dense, prelu in zip(self.dense, self.prelu):
            dense.build((None, width))
            width = dense.units
            prelu.build((None, width))
        self.logit.build((None, width))
        self.built = True

    def call(self, inputs, training=False):
        x = inputs if self.input_norm is None else self.input_norm(inputs, training=training)
        for dense, prelu in zip(self.dense, self.prelu):
            x = prelu(dense(x))
        if self.dropout is not None:
            x = self.dropout(x, training=training)
        return tf.squeeze(self.logit(x), axis=-1)

    def get_config(self):
        return {**super().get_config(), "hidden_units": list(self.hidden_units), "dropout_rate": self.dropout_rate,
                "input_norm": self.input_norm is not None}


@keras.saving.register_keras_serializable(package="sim_tf")
class DinActivationUnit(keras.layers.Layer):
    """The DIN paper's activation unit: score_t = MLP([q, k_t, q - k_t, q * k_t]) with 80 -> 40 -> 1 units.

    Inputs query [B, D] and keys [B, T, D]; output scores [B, T] (unnormalised).
    """

    def __init__(self, hidden_units: Sequence[int] = (80, 40), **kwargs):
        super().__init__(**kwargs)
        self.hidden_units = check_positive_ints("hidden_units", hidden_units)
        self.dense = [keras.layers.Dense(h, name=f"dense_{i}") for i, h in enumerate(self.hidden_units)]
        self.prelu = [
            keras.layers.PReLU(alpha_initializer=keras.initializers.Constant(0.1), shared_axes=[1], name=f"prelu_{i}")
            for i in range(len(self.hidden_units))
        ]
        self.out = keras.layers.Dense(1, name="score")

    def build(self, input_shape):
        width = 4 * input_shape[-1]
        for dense, prelu in zip(self.dense, self.prelu):
            dense.build((None, None, width))
            width = dense.units
            prelu.build((None, None, width))
        self.out.build((None, None, width))
        self.built = True

    def call(self, query, keys):
        x = self.prelu[0](split_first_layer(self.dense[0], query, keys))
        for dense, prelu in zip(self.dense[1:], self.prelu[1:]):
            x = prelu(dense(x))
        return tf.squeeze(self.out(x), axis=-1)

    def get_config(self):
        return {**super().get_config(), "hidden_units": list(self.hidden_units)}




@keras.saving.register_keras_serializable(package="sim_tf")
class AttentionPooling(keras.layers.Layer):
    """Target attention over a behaviour sequence.

    * ``kind="dot"`` (the recipe's default): score_t = <k_t, q>, weights = masked softmax over t.
    * ``kind="din"``: score_t from :class:`DinActivationUnit`; as in the DIN paper the weights are the
      raw scores (no softmax), zeroed on padding.

    ``call(query [B, D], keys [B, T, D], mask [B, T])`` returns (pooled [B, D], scores [B, T]); a row
    with no real position pools to zeros. The scores (masked positions at the dtype's minimum) are what
    SIM's top-k search ranks by.

    Under a reduced-precision policy the ``dot`` scores, their softmax and the ranked scores are float32
    (as DIEN's attention scores are): a bfloat16 score keeps 8 significant bits, so at scores of a few
    units neighbouring behaviours tie in the top-k and the softmax weights move by several percent. Only
    the pooling matmul runs in the compute dtype.
    """

    def __init__(self, kind: str = "dot", **kwargs):
        super().__init__(**kwargs)
        if kind not in ATTENTION_KINDS:
            raise ValueError(f"attention kind must be one of {ATTENTION_KINDS}, got {kind!r}")
        self.kind = kind
        self.unit = DinActivationUnit(name="activation_unit") if kind == "din" else None

    def build(self, input_shape):
        if self.unit is not None:
            self.unit.build(input_shape)
        self.built = True

    def scores(self, query, keys):
        """Unnormalised scores [B, T] of every position (float32 for ``dot``, see the class)."""
        if self.unit is None:
            return tf.einsum("btd,bd->bt", _float32(keys), _float32(query))
        return self.unit(query, keys)

    def ranked(self, query, keys, mask):
        """The scores alone, padding at the dtype's minimum: all SIM's search needs at inference."""
        scores = self.scores(query, keys)
        return tf.where(tf.cast(mask, scores.dtype) > 0, scores, tf.constant(scores.dtype.min, scores.dtype))

    def call(self, query, keys, mask):
        scores = self.scores(query, keys)
        mask = tf.cast(mask, scores.dtype)
        weights = masked_softmax(scores, mask) if self.unit is None else scores * mask
        # A [1, T] x [T, D] matmul per sample: twice as fast here as the equivalent einsum, forward and back.
        pooled = tf.squeeze(tf.matmul(tf.cast(weights, keys.dtype)[:, None, :], keys), axis=1)
        ranked = tf.where(mask > 0, scores, tf.constant(scores.dtype.min, scores.dtype))
        return pooled, ranked

    def part_scores(self, query, parts):
        """Float32 scores [B, T] (kind ``dot`` only) of keys given as feature parts (see :meth:`call_parts`):
        the sum of each part's dot products with the matching slice of ``query``."""
        if self.unit is not None:
            raise ValueError("scores over parts support kind='dot' only")
        widths = [p.width if isinstance(p, TableRows) else p.shape[-1] for p in parts]
        queries = tf.split(_float32(query), widths, axis=-1)
        return tf.add_n([p.scores(q) if isinstance(p, TableRows) else tf.einsum("btd,bd->bt", _float32(p), q)
                         for p, q in zip(parts, queries)])

    def call_parts(self, query, parts, mask):
        """:meth:`call` (kind ``dot`` only) for keys given as feature parts, without concatenating them.

        ``parts`` lists, per item feature, either keys [B, T, D_i] or, for a small vocabulary, a
        :class:`TableRows`; the keys are their concatenation. The score is the sum of the parts'
        dot products with the matching slices of ``query``, and the pooled vector the concatenation of the
        parts' pools: the same numbers as :meth:`call` on the concatenated keys, up to float rounding.
        """
        scores = self.part_scores(query, parts)
        mask = tf.cast(mask, scores.dtype)
        weights = masked_softmax(scores, mask)
        low = tf.cast(weights, query.dtype)
        pooled = tf.concat([p.pool(low) if isinstance(p, TableRows)
                            else tf.squeeze(tf.matmul(low[:, None, :], p), axis=1) for p in parts], axis=-1)
        return pooled, tf.where(mask > 0, scores, tf.constant(scores.dtype.min, scores.dtype))

    def get_config(self):
        return {**super().get_config(), "kind": self.kind}


class TableRows:
    """Keys ``table[ids]`` [B, T, D] given as the table and the ids, for maths that need not gather them.

    * Dot-product attention over a *small* table (V rows, V << T): the score <table[id_bt], q_b> is entry
      (b, id_bt) of q table^T [B, V], and the pool sum_t w_bt table[id_bt] is (the weights summed per id,
      [B, V]) x table: O(B T) scalars plus O(B V D), where gathering the keys costs O(B T D) forward and
      backward. Category ids (hundreds of values against thousands of behaviours) are the case.
    * A fixed projection of any table (long_sequence.project): table x W is computed once per step, and a
      behaviour gathers its row of that product instead of its embedding.
    """

    def __init__(self, table: tf.Tensor, ids: tf.Tensor):
        self.table = table  # [V, D], in the compute dtype (its rows are the keys' values)
        self.ids = ids  # [B, T] int
        self.width = table.shape[-1]

    def scores(self, query: tf.Tensor) -> tf.Tensor:
        """[B, T] scores <table[id_bt], query_b>, in the query's dtype."""
        per_id = tf.matmul(query, tf.cast(self.table, query.dtype), transpose_b=True)  # [B, V]
        return tf.gather(per_id, self.ids, batch_dims=1)

    def pool(self, weights: tf.Tensor) -> tf.Tensor:
        rows = tf.shape(self.table, out_type=tf.int64)[0]
        batch = tf.shape(self.ids, out_type=tf.int64)[0]
        flat = tf.reshape(tf.cast(self.ids, tf.int64) + tf.range(batch)[:, None] * rows, [-1])
        per_id = tf.math.unsorted_segment_sum(tf.reshape(weights, [-1]), flat, batch * rows)
        return tf.matmul(tf.reshape(per_id, [batch, rows]), self.table)
