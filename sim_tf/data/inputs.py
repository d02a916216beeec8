"""The model's input contract: the keys of its feature dict and the one function that builds that dict.

Both the training/evaluation pipeline (sim_tf.data.dataset) and the SavedModel's serving function
(sim_tf.serve.export) call :func:`model_inputs`, so training and serving cannot drift apart. Models
import only the key constants and :func:`aux_pair_mask` from here; nothing in this module reads files.

The dict (B batch, L the dataset's history length, Ll = ``long_seq_length``, Ls = L - Ll):

* ``USER``: tuple of int32 [B], one per user feature.
* ``TARGET``: tuple of int32 [B], one per item feature.
* ``LONG_HISTORY``: tuple of int32 [B, Ll], the oldest ``long_seq_length`` positions.
* ``SHORT_HISTORY``: tuple of int32 [B, Ls], the newest positions.
* ``SHORT_NEG_HISTORY``: tuple of int32 [B, Ls], the negative history's newest positions (empty when the
  negative history is not given: only DIEN's auxiliary loss uses it).
* ``LONG_MASK`` / ``SHORT_MASK``: float32, 1 where the first positive-history feature is a real
  behaviour (id > 0), 0 on left padding.
"""

from __future__ import annotations

import re

import tensorflow as tf

from sim_tf.data import feature_spec as fs
from sim_tf.errors import UserError

# The id tuples take the FeatureSpec's channel names.
USER = fs.USER_FEATURES_CHANNEL
TARGET = fs.TARGET_ITEM_FEATURES_CHANNEL
LONG_HISTORY = "long_history"
SHORT_HISTORY = "short_history"
SHORT_NEG_HISTORY = "short_neg_history"
LONG_MASK = "long_history_mask"
SHORT_MASK = "short_history_mask"


class DataError(UserError):
    """A dataset whose records do not match its FeatureSpec, or ids outside their vocabulary."""


_ASSERTION = re.compile(r"assertion failed: (\[.*?\])\s*(?:\n|\[\[|$)", re.S)


def explain_data_error(error: tf.errors.OpError) -> DataError | None:
    """Turns the id-range assertion of :func:`checked_ids` (raised deep inside a graph) into a DataError."""
    match = _ASSERTION.search(error.message or "")
    if not match:
        return None
    parts = re.findall(r"\[([^\[\]]*)\]", match.group(1))
    return DataError(" ".join(p.strip() for p in parts))


def embedding_rows(cardinality: int, out_of_range: str) -> int:
    """Rows of an embedding table: ids 0 (padding) .. cardinality, plus one OOV row if asked for."""
    return cardinality + 1 + (1 if out_of_range == "oov" else 0)


def checked_ids(values: tf.Tensor, name: str, cardinality: int, out_of_range: str) -> tf.Tensor:
    """int64 ids -> int32 ids, with ids outside 0..cardinality mapped to the OOV row (policy "oov") or
    stopping the graph with a message naming the feature (policy "error"; see explain_data_error)."""
    if out_of_range == "oov":
        bad = (values < 0) | (values > cardinality)
        values = tf.where(bad, tf.constant(cardinality + 1, values.dtype), values)
    else:
        low = tf.reduce_min(values)
        high = tf.reduce_max(values)
        check = tf.debugging.Assert(
            (low >= 0) & (high <= cardinality),
            [
                f"feature {name} has ids outside 0..{cardinality}; smallest and largest in the batch:",
                low,
                high,
                "- fix the data, or set out_of_range_ids: oov in the FeatureSpec metadata to map such ids "
                "to an out-of-vocabulary row",
            ],
            name="check_ids_" + re.sub(r"[^A-Za-z0-9_.\-]", "_", name),  # op names allow no spaces or non-ASCII
        )
        with tf.control_dependencies([check]):
            values = tf.identity(values)
    return tf.cast(values, tf.int32)


def model_inputs(parsed: dict[str, tf.Tensor], spec, long_seq_length: int, out_of_range: str) -> dict:
    """Raw int64 features by FeatureSpec name -> the model's feature dict (casts, id checks, split, masks).

    ``parsed`` holds every user and target-item feature ([B] or [B, 1]) and every positive-history
    feature ([B, L] or flat [B * L]); negative-history features are used when present. ``spec`` is the
    dataset's FeatureSpec (names, cardinalities, L).
    """
    length = spec.history_length
    if not 0 < long_seq_length < length:
        raise ValueError(f"long_seq_length {long_seq_length} must be between 1 and {length - 1}")

    def ids(name: str, shape: list[int]) -> tf.Tensor:
        return checked_ids(tf.reshape(parsed[name], shape), name, spec.cardinality(name), out_of_range)

    # Checked in channel order, so the first feature named in an id error is the same in every path.
    users = tuple(ids(n, [-1]) for n in spec.user_features)
    targets = tuple(ids(n, [-1]) for n in spec.target_item_features)
    positives = [ids(n, [-1, length]) for n in spec.positive_history_features]
    negatives = [ids(n, [-1, length])[:, long_seq_length:] for n in spec.negative_history_features if n in parsed]
    mask = tf.cast(positives[0] > 0, tf.float32)
    return {
        USER: users,
        TARGET: targets,
        LONG_HISTORY: tuple(p[:, :long_seq_length] for p in positives),
        SHORT_HISTORY: tuple(p[:, long_seq_length:] for p in positives),
        SHORT_NEG_HISTORY: tuple(negatives),
        LONG_MASK: mask[:, :long_seq_length],
        SHORT_MASK: mask[:, long_seq_length:],
    }


def aux_pair_mask(short_mask: tf.Tensor) -> tf.Tensor:
    """[B, Ls - 1] float32: 1 where behaviours t and t + 1 of the short history are both real, i.e. the
    pairs DIEN's auxiliary loss is taken over."""
    short_mask = tf.cast(short_mask, tf.float32)
    return short_mask[:, :-1] * short_mask[:, 1:]
