"""Losses as small pure functions of model outputs and labels, all computed from logits.

Every model returns ``logit`` (the prediction's logit). DIEN and SIM also return auxiliary logits;
SIM also returns ``stage_one_logit``. The per-sample CTR term is

* DIN, DIEN: BCE(logit)
* SIM:       0.5 * (BCE(stage_one_logit) + BCE(logit))

and DIEN/SIM add the auxiliary loss, a mean over the (t, t+1) pairs of the short history where both
behaviours are real: softplus(-click_logit) + softplus(noclick_logit), i.e. -log p_click - log(1 - p_noclick).
(The reference divides by all B x (Ls - 1) entries, counts pairs that start on padding and can produce
NaN from log(1 - (sigmoid + 1e-6)).)

Under a distribution strategy the sums are divided by *global* counts; :func:`loss_terms` returns the
sums and counts and :func:`combine` does the division, so a single device and N replicas agree.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf


def bce_from_logits(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Per-sample binary cross-entropy [B] from float32 logits."""
    logits = tf.cast(logits, tf.float32)
    return tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(labels, tf.float32), logits=logits)


def auxiliary_terms(click_logits: tf.Tensor, noclick_logits: tf.Tensor, pair_mask: tf.Tensor):
    """(sum over valid pairs of the auxiliary loss, number of valid pairs); inputs [B, T-1]."""
    click_logits = tf.cast(click_logits, tf.float32)
    noclick_logits = tf.cast(noclick_logits, tf.float32)
    pair_mask = tf.cast(pair_mask, tf.float32)
    per_pair = tf.nn.softplus(-click_logits) + tf.nn.softplus(noclick_logits)
    return tf.reduce_sum(per_pair * pair_mask), tf.reduce_sum(pair_mask)


def sim_ctr_loss(labels, stage_one_logit, stage_two_logit) -> tf.Tensor:
    """SIM's per-sample two-stage loss [B]: the mean of both stages' BCE."""
    return 0.5 * (bce_from_logits(labels, stage_one_logit) + bce_from_logits(labels, stage_two_logit))


@dataclasses.dataclass
class LossTerms:
    ctr_sum: tf.Tensor  # sum over the batch of per-sample CTR losses
    aux_sum: tf.Tensor  # sum over valid pairs of the auxiliary loss (0 for DIN)
    aux_count: tf.Tensor  # number of valid pairs (0 for DIN)


def loss_terms(outputs: dict, labels: tf.Tensor) -> LossTerms:
    if "stage_one_logit" in outputs:
        per_sample = sim_ctr_loss(labels, outputs["stage_one_logit"], outputs["logit"])
    else:
        per_sample = bce_from_logits(labels, outputs["logit"])
    if "aux_click_logits" in outputs:
        aux_sum, aux_count = auxiliary_terms(
            outputs["aux_click_logits"], outputs["aux_noclick_logits"], outputs["aux_pair_mask"]
        )
    else:
        aux_sum = aux_count = tf.constant(0.0)
    return LossTerms(tf.reduce_sum(per_sample), aux_sum, aux_count)


def combine(terms: LossTerms, batch_size, aux_count) -> tf.Tensor:
    """Total loss = ctr_sum / batch_size + aux_sum / aux_count (counts may be global across replicas)."""
    batch_size = tf.cast(batch_size, tf.float32)
    return terms.ctr_sum / tf.maximum(batch_size, 1.0) + terms.aux_sum / tf.maximum(tf.cast(aux_count, tf.float32), 1.0)
