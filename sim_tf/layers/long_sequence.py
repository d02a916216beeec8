"""SIM's successors over long behaviour histories: ETA, SDIM and TWIN's search and interest units.

Shapes: B batch, T long-history positions, D item width (the concatenated item-feature embeddings),
k kept behaviours. The long history comes as *parts*, one per item feature: keys [B, T, D_i] or, for a
small vocabulary, a :class:`~sim_tf.layers.core.TableRows`; the behaviour's vector is their
concatenation (see AttentionPooling.call_parts). Masks are 1 on real behaviours, 0 on padding.

* **ETA** (Chen et al. 2021, arXiv 2108.04468): SimHash signatures (signs of fixed random projections) of
  the target's and the behaviours' *current* embeddings; the k behaviours at the smallest Hamming distance
  are kept (ties: the most recent), and target attention runs over them. The retrieval has no parameters
  and takes no gradient; everything is trained end to end through the attention.
* **SDIM** (Cao et al. 2022, arXiv 2205.10249): ``rounds`` hash functions. In round j the behaviours whose
  signature equals the target's are summed and the sum is L2-normalised; the interest is the mean over
  rounds. No top-k and no attention over the long history.

Both hash per item feature, a table row at a time (:class:`FeatureSimHash`): a behaviour's signature is
then one gathered integer per feature (int64 for ETA, int32 for SDIM), not a projection of its embedding.
* **TWIN** (Chang et al. 2023, arXiv 2302.02352): one relevance metric for both stages. The ESU is
  multi-head target attention whose head-h logit is (k W_K^h) . (q W_Q^h) / sqrt(d_h) + s beta_h[age]: a
  projection of the behaviour's inherent features (its embedding) and a bias per age bucket, at a scale s
  (TwinAttention says why), for the user-behaviour cross feature (how long ago, in behaviours). The GSU
  scores every behaviour with the mean of those logits over the heads, which is linear in the embedding:
  k . u(q) + s mean_h beta_h[age], with
  u(q) = mean_h W_K^h W_Q^h^T q / sqrt(d_h) computed once per sample, so a behaviour costs one dot product.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from sim_tf.layers.core import TableRows, check_positive_ints, masked_softmax
from sim_tf.models import MAX_SDIM_BITS

AGE_BUCKETS = 24  # floor(log2(age)) buckets: ages up to 2**24 behaviours


def part_widths(parts) -> list[int]:
    return [p.width if isinstance(p, TableRows) else p.shape[-1] for p in parts]


def _split_bits(total: int, features: int) -> list[int]:
    """``total`` signature bits shared out over ``features`` item features (the first ones get the rest)."""
    return [total // features + (1 if f < total % features else 0) for f in range(features)]


class FeatureSimHash:
    """SimHash per item feature, computed per table row: the signature of a behaviour is the concatenation
    of its features' signatures, sign(e_f R_f) for fixed random hyperplanes R_f [D_f, n_f], packed into
    one int64 (bit ``offsets[f] + i`` is feature f's bit i; ``of_vectors``, ``of_rows``), or kept one int32
    per feature (``codes``; ``packed=False`` lifts the 62-bit limit on the total).

    A behaviour's signature depends only on its ids, so each step hashes every table row once (V_f x D_f x
    n_f multiply-adds) and a behaviour gathers one integer per feature, where hashing its embedding
    would gather D floats and multiply them by R. The Hamming distance of two signatures is the sum of the
    features' distances, each estimating the angle between the two feature embeddings (SimHash's
    guarantee holds per feature rather than for the concatenated vector).
    """

    def __init__(self, layer: keras.layers.Layer, widths: list[int], bits: list[int], seed: int,
                 name: str = "hyperplanes", packed: bool = True):
        if packed and sum(bits) > 62:
            raise ValueError(f"signatures pack into 62 bits; asked for {sum(bits)}")
        self.bits = bits
        self.offsets = [sum(bits[:f]) for f in range(len(bits))]
        self.planes = [layer.add_weight(name=f"{name}_{f}", shape=(w, n), dtype="float32", trainable=False,
                                        initializer=keras.initializers.RandomNormal(seed=seed + f))
                       for f, (w, n) in enumerate(zip(widths, bits))]

    def codes(self, vectors: tf.Tensor, f: int, dtype=tf.int32, offset: int = 0) -> tf.Tensor:
        """[...] feature f's signature bits (bit ``offset + i`` = hyperplane i): int32 and unpacked by
        default (at most 31 bits); int64 at the feature's ``offsets[f]`` for the packed signature."""
        bits = tf.cast(tf.matmul(tf.cast(vectors, tf.float32), self.planes[f]) > 0, dtype)
        weights = tf.bitwise.left_shift(tf.constant(1, dtype), tf.range(self.bits[f], dtype=dtype) + offset)
        return tf.reduce_sum(bits * weights, axis=-1)

    def _codes(self, vectors: tf.Tensor, f: int) -> tf.Tensor:
        return self.codes(vectors, f, tf.int64, self.offsets[f])

    def of_vectors(self, vectors: list[tf.Tensor]) -> tf.Tensor:
        """[...] int64: the signature of vectors given per feature ([..., D_f] each), e.g. the target's."""
        return tf.add_n([self._codes(v, f) for f, v in enumerate(vectors)])

    def of_rows(self, rows: list[TableRows]) -> tf.Tensor:
        """[B, T] int64: the signatures of behaviours given as table rows (one table hash per step)."""
        return tf.add_n([tf.gather(self._codes(tf.stop_gradient(r.table), f), r.ids) for f, r in enumerate(rows)])


@keras.saving.register_keras_serializable(package="sim_tf")
class EtaSearch(keras.layers.Layer):
    """ETA's retrieval: the ``k`` behaviours closest to the target in Hamming distance of their signatures
    (:class:`FeatureSimHash`, ``bits`` in all, shared out over the item features).

    ``search(queries, rows, mask [B, T], k)``: ``queries`` the target's per-feature embeddings [B, D_f],
    ``rows`` the long history's per-feature TableRows; returns (positions [B, k] int32, distances [B, T]
    int64). Ties in distance go to the more recent behaviour; padding is never chosen before a real one.
    (A method, not ``call``: Keras layers take only tensors as positional inputs.)
    """

    def __init__(self, bits: int = 32, seed: int = 17, **kwargs):
        super().__init__(**kwargs)
        (self.bits,) = check_positive_ints("bits", bits)
        if self.bits > 62:
            raise ValueError(f"ETA's signatures pack into 62 bits; got bits={bits}")
        self.seed = seed

    def build(self, widths):
        widths = [int(w) for w in widths]
        self.hash = FeatureSimHash(self, widths, _split_bits(self.bits, len(widths)), self.seed)
        self.built = True

    def search(self, queries, rows, mask, k):
        query_code = self.hash.of_vectors(queries)
        codes = self.hash.of_rows(rows)
        distance = tf.cast(tf.raw_ops.PopulationCount(x=tf.bitwise.bitwise_xor(codes, query_code[:, None])), tf.int64)
        steps = tf.shape(codes, out_type=tf.int64)[1]
        # Closer first, then more recent (a larger position); exact in float32 up to T ~ 2**24 / 64.
        closeness = (self.bits - distance) * (steps + 1) + tf.range(steps)[None, :] + 1
        score = tf.where(tf.cast(mask, tf.bool), tf.cast(closeness, tf.float32), tf.constant(-1.0))
        _, top = tf.math.top_k(score, k=k, sorted=False)
        return top, distance

    def get_config(self):
        return {**super().get_config(), "bits": self.bits, "seed": self.seed}


@keras.saving.register_keras_serializable(package="sim_tf")
class SdimSampler(keras.layers.Layer):
    """SDIM's hash-based interest: ``rounds`` hash functions, each a SimHash of ``bits`` hyperplanes per
    item feature (2 ** (bits x features) buckets); a behaviour is in the target's round-j bucket when all
    of its features' round-j signatures equal the target's.

    ``interest(queries, rows, mask [B, T])`` (the target per feature [B, D_f]; the long history as
    per-feature TableRows) returns (interest [B, D], average [B, D]):

    * interest = mean_j normalize(s_j), s_j the sum of the behaviours in the target's round-j bucket (an
      empty bucket gives a zero vector): the paper's estimate of target attention;
    * average = mean_j s_j / n_j, n_j the bucket's size: the same buckets without the normalisation, which
      keeps what the direction drops (how similar the behaviours are; empty buckets give zeros).

    Cost per behaviour: one int32 gathered per item feature (its table row's code: round j's bits at
    [j x bits, (j + 1) x bits), the same place for every feature, so OR-ing the features' differences from
    the target gives one code whose zero chunks are the rounds it shares) and a few integer operations;
    only the behaviours in at least one of the target's buckets (about rounds / 2 ** (bits x features) of
    the history) are embedded and pooled. The bucket choice takes no gradient, the pooled behaviours do.
    """

    def __init__(self, rounds: int = 4, bits: int = 3, seed: int = 23, **kwargs):
        super().__init__(**kwargs)
        self.rounds, self.bits = check_positive_ints("rounds and bits", (rounds, bits))
        if self.rounds * self.bits > MAX_SDIM_BITS:
            raise ValueError(f"SDIM's per-feature codes are int32: rounds x bits = {self.rounds} x {self.bits} "
                             f"is more than {MAX_SDIM_BITS}")
        self.seed = seed

    def build(self, widths):
        widths = [int(w) for w in widths]
        self.hash = FeatureSimHash(self, widths, [self.rounds * self.bits] * len(widths), self.seed, packed=False)
        self.built = True

    def _chunks(self, value: int) -> int:
        """An int32 constant with ``value`` in every round's chunk."""
        return sum(value << (j * self.bits) for j in range(self.rounds))

    def shared_rounds(self, queries, rows) -> tf.Tensor:
        """[B, T] int32, the OR over features of (behaviour code XOR target code): round j's chunk is zero
        exactly when the behaviour is in the target's round-j bucket."""
        differ = None
        for f, (query, r) in enumerate(zip(queries, rows)):
            table_codes = self.hash.codes(tf.stop_gradient(r.table), f)  # [V_f]: each table row once
            d = tf.bitwise.bitwise_xor(tf.gather(table_codes, r.ids), self.hash.codes(query, f)[:, None])
            differ = d if differ is None else tf.bitwise.bitwise_or(differ, d)
        return differ

    def interest(self, queries, rows, mask):
        differ = self.shared_rounds(queries, rows)
        # Some chunk of `differ` is zero iff (differ - ones) & ~differ & tops != 0, with ones and tops the
        # lowest and highest bit of every chunk (the "has a zero byte" test, exact for the yes/no answer
        # at any chunk width: the lowest zero chunk borrows and nothing below it does).
        ones, tops = self._chunks(1), self._chunks(1 << (self.bits - 1))
        some_round = tf.not_equal(tf.bitwise.bitwise_and(
            tf.bitwise.bitwise_and(differ - ones, tf.bitwise.invert(differ)), tops), 0)
        where = tf.where(some_round & tf.cast(mask, tf.bool))  # [N, 2]: (sample, position) in some bucket
        width = (1 << self.bits) - 1
        member_differ = tf.gather_nd(differ, where)
        in_round = tf.stack([tf.equal(tf.bitwise.bitwise_and(tf.bitwise.right_shift(member_differ, j * self.bits),
                                                             width), 0) for j in range(self.rounds)])  # [rounds, N]
        pairs = tf.where(in_round)  # [P, 2]: (round, member), one per bucket a behaviour is in, round-major
        member_ids = [tf.gather(tf.gather_nd(r.ids, where), pairs[:, 1]) for r in rows]
        batch = tf.shape(differ, out_type=tf.int64)[0]
        buckets = batch * self.rounds
        # (round, sample) ids come out sorted, which makes the segment sums several times faster.
        segment = pairs[:, 0] * batch + tf.gather(where[:, 0], pairs[:, 1])
        total = tf.concat([tf.math.unsorted_segment_sum(tf.cast(tf.gather(r.table, ids), tf.float32), segment, buckets)
                           for r, ids in zip(rows, member_ids)], axis=-1)
        total = tf.transpose(tf.reshape(total, [self.rounds, batch, -1]), [1, 0, 2])  # [B, rounds, D]: s_j
        count = tf.math.unsorted_segment_sum(tf.ones_like(segment, tf.float32), segment, buckets)
        count = tf.transpose(tf.reshape(count, [self.rounds, batch]))[:, :, None]  # n_j
        norm = tf.sqrt(tf.reduce_sum(tf.square(total), axis=-1, keepdims=True))
        # An empty bucket's sum is 0; dividing by max(norm, eps) keeps it 0 and its gradient finite.
        interest = tf.reduce_mean(total / tf.maximum(norm, 1e-6), axis=1)
        average = tf.reduce_mean(total / tf.maximum(count, 1.0), axis=1)
        dtype = queries[0].dtype
        return tf.cast(interest, dtype), tf.cast(average, dtype)

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
    s beta_h[age bucket], s = ``age_bias_scale``; value k W_V^h. ``call(query [B, D], keys [B, k, D], mask [B, k],
    ages [B, k])`` returns (output [B, D] = W_O [softmax-pooled values of every head], logits [B, k, heads]).
    :meth:`gsu_scores` scores every behaviour with mean_h logit_h, computed as one dot product per behaviour.

    Why the scale s (0.1): fresh embeddings make the content logits ~0.001, and Adam moves beta by about the
    learning rate a step whatever its gradient's size, so unscaled, one age bucket's bias outweighed every
    similarity within ~50 steps and the GSU kept that bucket alone; when it was younger than the signal,
    training never recovered (1 seed of 5 on the lifelong preset at 0.74 AUC; docs/performance.md, "Why a
    TWIN seed fails"). With s = 0.1 the bias moves a tenth as fast, the content scores grow first, and the
    search keeps the target's category on every seed checked (0-3 of 0-4).
    """

    def __init__(self, heads: int = 4, head_dim: int = 16, age_bias_scale: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.heads, self.head_dim = check_positive_ints("heads and head_dim", (heads, head_dim))
        self.age_bias_scale = float(age_bias_scale)

    def build(self, width):
        width = int(width)
        inner = self.heads * self.head_dim
        glorot = keras.initializers.GlorotUniform
        # Query and key projections start equal, so every head's first scores are a similarity, (kW).(qW),
        # and the GSU's first top-k is the behaviours most like the target. The GSU learns only through what
        # the ESU sees; from unrelated random projections it starts from an arbitrary selection, which the
        # ESU cannot learn relevance from (4 of 5 seeds stayed at the last-100 model's AUC on the lifelong
        # preset: docs/performance.md).
        # Likewise the value projection has orthonormal rows and the output projection starts as its transpose,
        # so W_V W_O = I (when heads * head_dim >= width): while the heads attend alike, the ESU's first output
        # is the attention-weighted mean of the kept behaviours themselves, which the head can compare with the
        # target from the first step, as SIM's weightless ESU is. From two independent random projections the
        # output was a random mix the head had to learn to undo first (long-term pairs' AUC 0.9556-0.9801
        # over seeds 0-4, against 0.9816-0.9894 for soft; docs/performance.md).
        # The draws follow keras' global seed (the trainer's --seed), so seeds sample this layer's start too.
        # autocast=False: the logits read the float32 weights as they are (see logits); the value path casts.
        self.w_query = self.add_weight(name="w_query", shape=(width, inner), initializer=glorot(), autocast=False)
        self.w_key = self.add_weight(name="w_key", shape=(width, inner), autocast=False,
                                     initializer=lambda shape, dtype=None: tf.identity(self.w_query))
        self.w_value = self.add_weight(name="w_value", shape=(width, inner), autocast=False,
                                       initializer=keras.initializers.Orthogonal())
        self.w_out = self.add_weight(name="w_out", shape=(inner, width), autocast=False,
                                     initializer=lambda shape, dtype=None: tf.transpose(self.w_value))
        self.age_bias = self.add_weight(name="age_bias", shape=(AGE_BUCKETS, self.heads), initializer="zeros",
                                        autocast=False)
        self.built = True

    def _heads(self, x):
        return tf.reshape(x, tf.concat([tf.shape(x)[:-1], [self.heads, self.head_dim]], axis=0))

    def _age_bias(self, ages):
        return self.age_bias_scale * tf.gather(self.age_bias, ages)

    def _query_heads(self, query):
        """[B, H, d] float32: the query's projection, which the ESU's logits and the GSU's scores share."""
        return self._heads(tf.matmul(tf.cast(query, tf.float32), self.w_query))

    def logits(self, query, keys, ages):
        """[B, k, heads], float32 under a mixed policy too: the GSU ranks by the same numbers (gsu_scores), and
        in bfloat16 near-ties between behaviours flip, so the two stages would keep different ones."""
        q = self._query_heads(query)
        k = self._heads(tf.einsum("bkd,de->bke", tf.cast(keys, tf.float32), self.w_key))  # [B, k, H, d]
        return tf.einsum("bkhd,bhd->bkh", k, q) * (1.0 / math.sqrt(self.head_dim)) + self._age_bias(ages)

    def call(self, query, keys, mask, ages):
        logits = self.logits(query, keys, ages)
        weights = masked_softmax(tf.transpose(logits, [0, 2, 1]), tf.cast(mask, logits.dtype)[:, None, :])  # [B, H, k]
        values = self._heads(tf.einsum("bkd,de->bke", keys, tf.cast(self.w_value, keys.dtype)))  # [B, k, H, d]
        pooled = tf.einsum("bhk,bkhd->bhd", tf.cast(weights, values.dtype), values)
        flat = tf.reshape(pooled, [-1, self.heads * self.head_dim])
        return tf.matmul(flat, tf.cast(self.w_out, flat.dtype)), logits

    def gsu_scores(self, query, parts, mask, ages):
        """[B, T] float32: mean over heads of the ESU's logit for every behaviour (padding at float32's minimum)."""
        q = self._query_heads(query)
        k_weights = tf.reshape(self.w_key, [-1, self.heads, self.head_dim])  # [D, H, d]
        direction = tf.einsum("bhd,ehd->be", q, k_weights) / (self.heads * math.sqrt(self.head_dim))  # [B, D]
        directions = tf.split(direction, part_widths(parts), axis=-1)
        scores = tf.add_n([p.scores(u) if isinstance(p, TableRows)
                           else tf.einsum("btd,bd->bt", tf.cast(p, tf.float32), u)
                           for p, u in zip(parts, directions)])
        scores += tf.reduce_mean(self._age_bias(ages), axis=-1)
        return tf.where(tf.cast(mask, tf.bool), scores, tf.constant(scores.dtype.min, scores.dtype))

    def get_config(self):
        return {**super().get_config(), "heads": self.heads, "head_dim": self.head_dim,
                "age_bias_scale": self.age_bias_scale}
