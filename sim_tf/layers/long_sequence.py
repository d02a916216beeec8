"""SIM's successors over long behaviour histories: ETA, SDIM and TWIN's search and interest units.

Shapes: B batch, T long-history positions, D item width (the concatenated item-feature embeddings),
k kept behaviours. The long history comes as *parts*, one per item feature: keys [B, T, D_i] or, for a
small vocabulary, a :class:`~sim_tf.layers.core.SmallVocabularyKeys`; the behaviour's vector is their
concatenation (see AttentionPooling.call_parts). Masks are 1 on real behaviours, 0 on padding.

* **ETA** (Chen et al. 2021, arXiv 2108.04468): SimHash signatures (signs of ``bits`` fixed random
  projections) of the target's and the behaviours' *current* embeddings; the k behaviours at the smallest
  Hamming distance are kept (ties: the most recent), and target attention runs over them. The retrieval
  has no parameters and takes no gradient; everything is trained end to end through the attention.
* **SDIM** (Cao et al. 2022, arXiv 2205.10249): ``rounds`` hash functions of ``bits`` hyperplanes each. In
  round j the behaviours whose signature equals the target's are summed and the sum is L2-normalised; the
  interest is the mean over rounds. No top-k and no attention over the long history.
* **TWIN** (Chang et al. 2023, arXiv 2302.02352): one relevance metric for both stages. The ESU is
  multi-head target attention whose head-h logit is (k W_K^h) . (q W_Q^h) / sqrt(d_h) + beta_h[age]: a
  projection of the behaviour's inherent features (its embedding) and a bias per age bucket for the
  user-behaviour cross feature (how long ago, in behaviours). The GSU scores every behaviour with the mean
  of those logits over the heads, which is linear in the embedding: k . u(q) + mean_h beta_h[age], with
  u(q) = mean_h W_K^h W_Q^h^T q / sqrt(d_h) computed once per sample, so a behaviour costs one dot product.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from sim_tf.layers.core import SmallVocabularyKeys, check_positive_ints, masked_softmax

AGE_BUCKETS = 24  # floor(log2(age)) buckets: ages up to 2**24 behaviours


def part_widths(parts) -> list[int]:
    return [p.width if isinstance(p, SmallVocabularyKeys) else p.shape[-1] for p in parts]


def project(parts, matrix: tf.Tensor) -> tf.Tensor:
    """[B, T, P]: the concatenated behaviour vectors times ``matrix`` [D, P], part by part."""
    slices = tf.split(matrix, part_widths(parts), axis=0)
    out = []
    for part, w in zip(parts, slices):
        if isinstance(part, SmallVocabularyKeys):
            out.append(tf.gather(tf.matmul(part.table, tf.cast(w, part.table.dtype)), part.ids))
        else:
            out.append(tf.einsum("btd,dp->btp", part, tf.cast(w, part.dtype)))
    return tf.add_n(out)


def pool(parts, weights: tf.Tensor) -> tf.Tensor:
    """[B, m, D]: for each of the m columns of ``weights`` [B, T, m], the weighted sum of the behaviours."""
    out = []
    for part in parts:
        if isinstance(part, SmallVocabularyKeys):
            rows = tf.shape(part.table, out_type=tf.int64)[0]
            batch = tf.shape(part.ids, out_type=tf.int64)[0]
            flat = tf.reshape(tf.cast(part.ids, tf.int64) + tf.range(batch)[:, None] * rows, [-1])
            columns = weights.shape[-1]
            per_id = tf.math.unsorted_segment_sum(tf.reshape(tf.cast(weights, part.table.dtype), [-1, columns]),
                                                  flat, batch * rows)  # [B * V, m]
            per_id = tf.transpose(tf.reshape(per_id, [batch, rows, columns]), [0, 2, 1])  # [B, m, V]
            out.append(tf.einsum("bmv,vd->bmd", per_id, part.table))
        else:
            out.append(tf.matmul(tf.cast(weights, part.dtype), part, transpose_a=True))
    return tf.concat(out, axis=-1)


def behaviour_vectors(parts) -> tf.Tensor:
    """[B, T, D]: the parts gathered and concatenated (for the reference paths and tests)."""
    return tf.concat([tf.gather(p.table, p.ids) if isinstance(p, SmallVocabularyKeys) else p for p in parts], axis=-1)


def _hyperplanes(layer: keras.layers.Layer, width: int, count: int, seed: int):
    # Fixed random projections: saved with the model (so serving hashes as training did), never trained.
    return layer.add_weight(name="hyperplanes", shape=(width, count), dtype="float32", trainable=False,
                            initializer=keras.initializers.RandomNormal(seed=seed))


def sign_bits(projections: tf.Tensor) -> tf.Tensor:
    """int64 [..., P] -> 1 where the projection is positive, else 0."""
    return tf.cast(projections > 0, tf.int64)


def pack_bits(bits: tf.Tensor) -> tf.Tensor:
    """int64 [..., P] of 0/1 (P <= 62) -> int64 [...]: bit p of the result is bits[..., p]."""
    weights = tf.bitwise.left_shift(tf.constant(1, tf.int64), tf.range(bits.shape[-1], dtype=tf.int64))
    return tf.reduce_sum(bits * weights, axis=-1)


@keras.saving.register_keras_serializable(package="sim_tf")
class EtaSearch(keras.layers.Layer):
    """ETA's retrieval: the ``k`` behaviours closest to the target in Hamming distance of SimHash signatures.

    ``search(query [B, D], parts, mask [B, T], k)`` returns (positions [B, k] int32, distances [B, T] int64).
    (A method, not ``call``: Keras layers take only tensors as positional inputs, and parts are not.)
    Ties in distance go to the more recent behaviour; padding is never chosen before a real behaviour.
    """

    def __init__(self, bits: int = 32, seed: int = 17, **kwargs):
        super().__init__(**kwargs)
        (self.bits,) = check_positive_ints("bits", bits)
        if self.bits > 62:
            raise ValueError(f"ETA's signatures pack into 63 bits; got bits={bits}")
        self.seed = seed

    def build(self, width):
        self.hyperplanes = _hyperplanes(self, int(width), self.bits, self.seed)
        self.built = True

    def signatures(self, parts) -> tf.Tensor:
        return pack_bits(sign_bits(project(parts, self.hyperplanes)))

    def search(self, query, parts, mask, k):
        query_code = pack_bits(sign_bits(tf.matmul(tf.cast(query, tf.float32), self.hyperplanes)))
        codes = self.signatures(parts)
        distance = tf.cast(tf.raw_ops.PopulationCount(x=tf.bitwise.bitwise_xor(codes, query_code[:, None])), tf.int64)
        steps = tf.shape(codes, out_type=tf.int64)[1]
        # Closer first, then more recent (a larger position); exact in float32 up to T ~ 2**24 / 64.
        closeness = (self.bits - distance) * (steps + 1) + tf.range(steps)[None, :] + 1
        score = tf.where(tf.cast(mask, tf.bool), tf.cast(closeness, tf.float32), tf.constant(-1.0))
        _, top = tf.math.top_k(tf.stop_gradient(score), k=k, sorted=False)
        return top, distance

    def get_config(self):
        return {**super().get_config(), "bits": self.bits, "seed": self.seed}


@keras.saving.register_keras_serializable(package="sim_tf")
class SdimSampler(keras.layers.Layer):
    """SDIM's hash-based interest: ``rounds`` signatures of ``bits`` hyperplanes each.

    ``interest(query [B, D], parts, mask [B, T])`` returns (interest [B, D], mean [B, D]): interest =
    mean_j normalize(sum over behaviours t with sig_j(k_t) == sig_j(q) of k_t) (an empty bucket gives a zero
    vector), and the masked mean of the whole long history (one more column of the same pooling). The
    bucket choice takes no gradient; the pooled behaviours do.
    """

    def __init__(self, rounds: int = 4, bits: int = 3, seed: int = 23, **kwargs):
        super().__init__(**kwargs)
        self.rounds, self.bits = check_positive_ints("rounds and bits", (rounds, bits))
        if self.bits > 30:
            raise ValueError(f"SDIM's signatures take at most 30 bits per round; got bits={bits}")
        self.seed = seed

    def build(self, width):
        self.hyperplanes = _hyperplanes(self, int(width), self.rounds * self.bits, self.seed)
        self.built = True

    def round_codes(self, projections: tf.Tensor) -> tf.Tensor:
        """[..., rounds * bits] projections -> [..., rounds] int64 bucket of each round."""
        bits = sign_bits(projections)
        shape = tf.concat([tf.shape(bits)[:-1], [self.rounds, self.bits]], axis=0)
        weights = tf.bitwise.left_shift(tf.constant(1, tf.int64), tf.range(self.bits, dtype=tf.int64))
        return tf.reduce_sum(tf.reshape(bits, shape) * weights, axis=-1)

    def interest(self, query, parts, mask):
        query_codes = self.round_codes(tf.matmul(tf.cast(query, tf.float32), self.hyperplanes))  # [B, m]
        codes = self.round_codes(tf.cast(project(parts, self.hyperplanes), tf.float32))  # [B, T, m]
        mask = tf.cast(mask, tf.float32)
        same = tf.cast(tf.equal(codes, query_codes[:, None, :]), tf.float32) * mask[:, :, None]
        counts = tf.reduce_sum(mask, axis=1, keepdims=True)
        weights = tf.stop_gradient(tf.concat([same, (mask / tf.maximum(counts, 1.0))[:, :, None]], axis=-1))
        pooled = pool(parts, weights)  # [B, m + 1, D]
        buckets, mean = pooled[:, :-1], pooled[:, -1]
        norm = tf.sqrt(tf.reduce_sum(tf.square(tf.cast(buckets, tf.float32)), axis=-1, keepdims=True))
        # An empty bucket's sum is 0; dividing by max(norm, eps) keeps it 0 and its gradient finite.
        normalised = tf.cast(buckets, tf.float32) / tf.maximum(norm, 1e-6)
        interest = tf.reduce_mean(normalised, axis=1)
        return tf.cast(interest, mean.dtype), mean

    def get_config(self):
        return {**super().get_config(), "rounds": self.rounds, "bits": self.bits, "seed": self.seed}


def age_buckets(steps: int | tf.Tensor) -> tf.Tensor:
    """[T] int32: floor(log2(age)) of each position of a left-padded window of T, the last one of age 1."""
    age = tf.cast(steps, tf.float32) - tf.range(tf.cast(steps, tf.float32))
    return tf.minimum(tf.cast(tf.math.floor(tf.math.log(age) / math.log(2.0)), tf.int32), AGE_BUCKETS - 1)


@keras.saving.register_keras_serializable(package="sim_tf")
class TwinAttention(keras.layers.Layer):
    """TWIN's target attention, shared by its GSU (all T behaviours) and ESU (the k kept).

    Head h (of ``heads``, width d_h = ``head_dim``): logit_h = (k W_K^h) . (q W_Q^h) / sqrt(d_h) +
    beta_h[age bucket]; value k W_V^h. ``call(query [B, D], keys [B, k, D], mask [B, k], ages [B, k])``
    returns (output [B, D] = W_O [softmax-pooled values of every head], logits [B, k, heads]).
    :meth:`gsu_scores` scores every behaviour with mean_h logit_h, computed as one dot product per behaviour.
    """

    def __init__(self, heads: int = 4, head_dim: int = 16, **kwargs):
        super().__init__(**kwargs)
        self.heads, self.head_dim = check_positive_ints("heads and head_dim", (heads, head_dim))

    def build(self, width):
        width = int(width)
        inner = self.heads * self.head_dim
        glorot = keras.initializers.GlorotUniform
        self.w_query = self.add_weight(name="w_query", shape=(width, inner), initializer=glorot(seed=1))
        self.w_key = self.add_weight(name="w_key", shape=(width, inner), initializer=glorot(seed=2))
        self.w_value = self.add_weight(name="w_value", shape=(width, inner), initializer=glorot(seed=3))
        self.w_out = self.add_weight(name="w_out", shape=(inner, width), initializer=glorot(seed=4))
        self.age_bias = self.add_weight(name="age_bias", shape=(AGE_BUCKETS, self.heads), initializer="zeros")
        self.built = True

    def _heads(self, x):
        return tf.reshape(x, tf.concat([tf.shape(x)[:-1], [self.heads, self.head_dim]], axis=0))

    def logits(self, query, keys, ages):
        """[B, k, heads]."""
        dtype = keys.dtype
        q = self._heads(tf.matmul(query, tf.cast(self.w_query, dtype)))  # [B, H, d]
        k = self._heads(tf.einsum("bkd,de->bke", keys, tf.cast(self.w_key, dtype)))  # [B, k, H, d]
        scale = tf.constant(1.0 / math.sqrt(self.head_dim), dtype)
        return tf.einsum("bkhd,bhd->bkh", k, q) * scale + tf.cast(tf.gather(self.age_bias, ages), dtype)

    def call(self, query, keys, mask, ages):
        logits = self.logits(query, keys, ages)
        weights = masked_softmax(tf.transpose(logits, [0, 2, 1]), tf.cast(mask, logits.dtype)[:, None, :])  # [B, H, k]
        values = self._heads(tf.einsum("bkd,de->bke", keys, tf.cast(self.w_value, keys.dtype)))  # [B, k, H, d]
        pooled = tf.einsum("bhk,bkhd->bhd", weights, values)
        flat = tf.reshape(pooled, [-1, self.heads * self.head_dim])
        return tf.matmul(flat, tf.cast(self.w_out, flat.dtype)), logits

    def gsu_scores(self, query, parts, mask, ages):
        """[B, T]: mean over heads of the ESU's logit for every behaviour (padding at the dtype's minimum)."""
        dtype = query.dtype
        q = self._heads(tf.matmul(query, tf.cast(self.w_query, dtype)))  # [B, H, d]
        k_weights = tf.reshape(tf.cast(self.w_key, dtype), [-1, self.heads, self.head_dim])  # [D, H, d]
        direction = tf.einsum("bhd,ehd->be", q, k_weights) / (self.heads * math.sqrt(self.head_dim))  # [B, D]
        directions = tf.split(direction, part_widths(parts), axis=-1)
        scores = tf.add_n([p.scores(u) if isinstance(p, SmallVocabularyKeys) else tf.einsum("btd,bd->bt", p, u)
                           for p, u in zip(parts, directions)])
        scores += tf.cast(tf.reduce_mean(tf.gather(self.age_bias, ages), axis=-1), scores.dtype)
        return tf.where(tf.cast(mask, tf.bool), scores, tf.constant(scores.dtype.min, scores.dtype))

    def get_config(self):
        return {**super().get_config(), "heads": self.heads, "head_dim": self.head_dim}
