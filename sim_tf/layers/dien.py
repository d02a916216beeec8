"""DIEN's pieces: a masked GRU, the AUGRU, DIEN attention and the auxiliary network.

Recurrence (DIEN paper, eqs. 1-4 and 8-9), for input i_t and state h_{t-1}:

    u_t  = sigmoid(W_u i_t + U_u h_{t-1} + b_u)            update gate
    r_t  = sigmoid(W_r i_t + U_r h_{t-1} + b_r)            reset gate
    h~_t = tanh(W_h i_t + r_t * (U_h h_{t-1}) + b_h)       candidate
    GRU:   h_t = (1 - u_t) * h_{t-1} + u_t * h~_t
    AUGRU: h_t = (1 - a_t u_t) * h_{t-1} + a_t u_t * h~_t  (a_t the attention weight of step t)

On a padded step (mask 0) the state is carried over unchanged, so outputs do not depend on how much
left padding a history has. (The reference passes no mask, and its AUGRU updates the state on padded
steps.) The short history is ~10 steps, so the loop is unrolled; the input projections of all steps are
computed with one matmul before the loop.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from sim_tf.layers.core import check_positive_ints, masked_softmax, matmul_3d, sigmoid, split_first_layer


class _GatedRecurrence(keras.layers.Layer):
    """Shared GRU machinery; subclasses decide how the update gate is scaled."""

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        (self.units,) = check_positive_ints("units", units)

    def build(self, input_shape):
        width = input_shape[-1]
        self.input_kernel = self.add_weight(
            name="input_kernel", shape=(width, 3 * self.units), initializer="glorot_uniform"
        )
        self.recurrent_kernel = self.add_weight(
            name="recurrent_kernel", shape=(self.units, 3 * self.units), initializer="orthogonal"
        )
        self.bias = self.add_weight(name="bias", shape=(3 * self.units,), initializer="zeros")
        self.built = True

    def _run(self, inputs, mask, attention, time_major_input=False, keep_states=True):
        """(states [T, B, H] time-major, or None unless ``keep_states``; final state [B, H]).

        Under a mixed policy the matmuls (input projections and the recurrent ones) run in the reduced dtype;
        the state and the gates, a dozen elementwise ops per step, stay float32. In bfloat16 (CPUs) that is
        also faster, as CPUs compute float32 elementwise maths ~3x faster than bfloat16; in float16 (GPUs)
        it keeps the state from drifting, as a 10-bit mantissa would round it at each of a hundred steps
        (the casts fuse into the neighbouring kernels under XLA). The state is rounded to the reduced
        dtype only as a matmul operand, as in any mixed-precision GRU. Outputs are in the compute dtype.
        """
        dtype = self.compute_dtype
        steps_dtype = tf.float32 if dtype in ("bfloat16", "float16") else dtype
        inputs = tf.cast(inputs, dtype)
        steps, width = inputs.shape[0 if time_major_input else 1], inputs.shape[2]
        if steps is None:
            raise ValueError("the sequence length must be static (it is fixed by the FeatureSpec)")
        units = self.units
        # Time-major, one matmul per gate: the input projections of every step are computed at once and
        # split by step along the leading axis (contiguous copies), and each gate gets its own recurrent
        # matmul, so no step slices or splits a [B, 3H] tensor. Slicing step t out of a batch-major
        # [B, T, 3H] tensor with x[:, t] also made the backward pass build a full-size zero tensor per
        # step (StridedSliceGrad), a third of SIM's training step before this layout.
        w_u, w_r, w_h = tf.split(tf.cast(self.input_kernel, dtype), 3, axis=1)
        u_u, u_r, u_h = tf.split(tf.cast(self.recurrent_kernel, dtype), 3, axis=1)
        b_u, b_r, b_h = tf.split(tf.cast(self.bias, steps_dtype), 3)
        batch = tf.shape(inputs)[1 if time_major_input else 0]
        flat = tf.reshape(inputs if time_major_input else tf.transpose(inputs, [1, 0, 2]), [-1, width])

        def by_step(kernel, bias):
            projected = tf.cast(tf.matmul(flat, kernel), steps_dtype) + bias
            return tf.unstack(tf.reshape(projected, [steps, batch, units]))

        x_u, x_r, x_h = by_step(w_u, b_u), by_step(w_r, b_r), by_step(w_h, b_h)
        # The state moves towards the candidate by gate_t * u_t, where gate_t is the mask (0 on padding:
        # the state is carried over) times the attention weight for the AUGRU:
        #   h_t = h_{t-1} + gate_t * u_t * (h~_t - h_{t-1})
        # equals (1 - a u) h + a u h~ on real steps and h on padded ones.
        gate = tf.cast(mask, steps_dtype)
        if attention is not None:
            gate = gate * tf.cast(attention, steps_dtype)
        gates = tf.unstack(tf.transpose(gate)[:, :, None])
        state = None
        states = []
        for t in range(steps):
            if state is None:
                # h_0 = 0: the recurrent terms vanish.
                state = gates[t] * tf.sigmoid(x_u[t]) * tf.tanh(x_h[t])
            else:
                operand = tf.cast(state, dtype)  # the matmuls' copy of the state (no-op in float32)
                update = tf.sigmoid(x_u[t] + tf.cast(tf.matmul(operand, u_u), steps_dtype))
                reset = tf.sigmoid(x_r[t] + tf.cast(tf.matmul(operand, u_r), steps_dtype))
                candidate = tf.tanh(x_h[t] + reset * tf.cast(tf.matmul(operand, u_h), steps_dtype))
                state = state + gates[t] * update * (candidate - state)
            states.append(state)
        if steps_dtype != dtype:
            return (tf.cast(tf.stack(states), dtype) if keep_states else None), tf.cast(state, dtype)
        return (tf.stack(states) if keep_states else None), state

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="sim_tf")
class MaskedGRU(_GatedRecurrence):
    """GRU over inputs [B, T, D] with mask [B, T]; returns (all states [B, T, H], final state [B, H]).

    ``time_major_input`` / ``time_major_output`` switch the inputs / states to [T, B, ...].
    """

    def call(self, inputs, mask, time_major_input=False, time_major_output=False):
        states, final = self._run(inputs, mask, None, time_major_input)
        return (states if time_major_output else tf.transpose(states, [1, 0, 2])), final


@keras.saving.register_keras_serializable(package="sim_tf")
class AUGRU(_GatedRecurrence):
    """GRU with attentional update gate (DIEN's interest evolution layer).

    ``call(inputs [B, T, D], mask [B, T], attention [B, T])`` returns the final state [B, H]. With
    attention 0 a step leaves the state unchanged; with attention 1 it is a plain GRU step.
    ``time_major_input`` takes inputs as [T, B, D].
    """

    def call(self, inputs, mask, attention, time_major_input=False):
        return self._run(inputs, mask, attention, time_major_input, keep_states=False)[1]


@keras.saving.register_keras_serializable(package="sim_tf")
class DienAttention(keras.layers.Layer):
    """DIEN attention of a target over interest states.

    q' = PReLU(Dense(H)(q)); score_t = MLP([q', h_t, q' - h_t, q' * h_t]) with sigmoid hidden layers
    (80, 40) -> 1; weights = masked softmax over t. Inputs query [B, Dq], states [B, T, H], mask [B, T];
    output weights [B, T].
    """

    def __init__(self, units: int, hidden_units=(80, 40), **kwargs):
        super().__init__(**kwargs)
        (self.units,) = check_positive_ints("units", units)
        self.hidden_units = check_positive_ints("hidden_units", hidden_units)
        self.query_dense = keras.layers.Dense(units, name="query_dense")
        self.query_prelu = keras.layers.PReLU(alpha_initializer=keras.initializers.Constant(0.1), name="query_prelu")
        self.dense = [
            keras.layers.Dense(h, name=f"dense_{i}") for i, h in enumerate(self.hidden_units)
        ]
        # Scores and their softmax in float32 under a mixed policy. A bfloat16 score keeps 8 significant
        # bits, and a softmax weight's relative error is its score's absolute one (~1% for a score near 5);
        # these weights gate every AUGRU step.
        self.out = keras.layers.Dense(1, dtype="float32", name="score")

    def build(self, query_shape, states_shape=None):
        self.query_dense.build((None, query_shape[-1]))
        self.query_prelu.build((None, self.units))
        width = 4 * self.units
        for dense in self.dense:
            dense.build((None, None, width))
            width = dense.units
        self.out.build((None, None, width))
        self.built = True

    def call(self, query, states, mask, time_major=False):
        """Weights [B, T]; ``states`` is [B, T, H], or [T, B, H] with ``time_major``."""
        q = self.query_prelu(self.query_dense(query))
        first = self.dense[0]
        x = sigmoid(split_first_layer(first, q, tf.cast(states, q.dtype), time_major))
        for dense in self.dense[1:]:
            x = sigmoid(dense(x))
        scores = tf.squeeze(self.out(x), axis=-1)
        return masked_softmax(tf.transpose(scores) if time_major else scores, mask)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "hidden_units": list(self.hidden_units)}


@keras.saving.register_keras_serializable(package="sim_tf")
class AuxiliaryNetwork(keras.layers.Layer):
    """DIEN's auxiliary classifier: logit of "behaviour e follows interest state h".

    Input concat[h_t, e_{t+1}] -> sigmoid MLP (100, 50) -> 1. ``call(states [B, T, H], items [B, T, D])``
    returns logits [B, T] in float32 (the loss works on logits, which is numerically stable).
    """

    def __init__(self, hidden_units=(100, 50), **kwargs):
        super().__init__(**kwargs)
        self.hidden_units = check_positive_ints("hidden_units", hidden_units)
        self.dense = [
            keras.layers.Dense(h, name=f"dense_{i}") for i, h in enumerate(self.hidden_units)
        ]
        self.out = keras.layers.Dense(1, dtype="float32", name="logit")

    def build(self, states_shape, items_shape=None):
        width = states_shape[-1] + (items_shape[-1] if items_shape is not None else 0)
        for dense in self.dense:
            dense.build((None, None, width))
            width = dense.units
        self.out.build((None, None, width))
        self.built = True

    def call(self, states, items):
        return self.pair(states, items)[0]

    def pair(self, states, clicked, unclicked=None):
        """Logits for the clicked items and, if given, the unclicked ones, sharing the states' term.

        The first layer on concat[h, e] is h W_h + e W_e + b; h W_h is computed once for both item kinds,
        and the two kinds then go through the rest of the network as one batch.
        """
        dtype = states.dtype
        first = self.dense[0]
        kernel = tf.cast(first.kernel, dtype)
        units = states.shape[-1]
        w_states, w_items = kernel[:units], kernel[units:]
        shared = matmul_3d(states, w_states) + tf.cast(first.bias, dtype)
        kinds = [clicked] if unclicked is None else [clicked, unclicked]
        items = tf.concat([tf.cast(e, dtype) for e in kinds], axis=0)
        x = sigmoid(tf.tile(shared, [len(kinds), 1, 1]) + matmul_3d(items, w_items))
        for dense in self.dense[1:]:
            x = sigmoid(dense(x))
        logits = tf.squeeze(self.out(x), axis=-1)
        return tf.split(logits, len(kinds), axis=0)

    def get_config(self):
        return {**super().get_config(), "hidden_units": list(self.hidden_units)}
