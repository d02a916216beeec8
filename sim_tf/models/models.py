"""DIN, DIEN and SIM as Keras 3 models over the input pipeline's nested features.

Each model's ``call(features, training)`` returns a dict:

* ``logit`` [B] float32 and ``prediction`` [B] float32 (its sigmoid) — for SIM the stage-two logit;
* SIM, when called with ``training=True``: ``stage_one_logit`` [B] (it only feeds the loss);
* DIEN, SIM, when called with ``training=True``: ``aux_click_logits``, ``aux_noclick_logits``,
  ``aux_pair_mask`` [B, Ls - 1] (inference skips the auxiliary network and needs no negative history).

Embeddings: one table per user feature and one per item-feature position (shared by the target, the
positive and the negative history); an item is the concatenation of its feature embeddings (width
n_items * E), a user the concatenation of its user-feature embeddings (n_users * E).

Models never see the strategy, files or flags: they are built from a :class:`ModelConfig` and the table
sizes, which :func:`build_model` takes from a FeatureSpec.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random as python_random
import zlib
from typing import Sequence

import keras
import tensorflow as tf

from sim_tf.data import inputs as keys
from sim_tf.data import feature_spec as fs
from sim_tf.layers.core import (MLP, AttentionPooling, EmbeddingTable, TableRows,
                                masked_mean, masked_softmax)
from sim_tf.layers.dien import AUGRU, AuxiliaryNetwork, DienAttention, MaskedGRU
from sim_tf.layers.long_sequence import EtaSearch, SdimSampler, TwinAttention, age_buckets
from sim_tf.models import MODEL_TYPES
from sim_tf.models.config import ModelConfig



class CtrModel(keras.Model):
    """Embedding tables and their lookups; subclasses add the interest modelling and heads.

    Initial values follow the global seed (``keras.utils.set_random_seed``, the trainer's ``--seed``) part
    by part: each named part (a table, the GRU, a head) draws from a stream of its own, keyed by the seed
    and its name (:meth:`make_part`, :meth:`build_part`). So two models built under one seed start every
    part they share alike (SIM with ``--gsu=soft`` and with ``--gsu=eta`` differ only in the search unit's
    own weights), and a comparison paired by seed pairs the same starting point, not two draws.
    """

    def __init__(
        self,
        user_vocab_sizes: Sequence[int],
        item_vocab_sizes: Sequence[int],
        config: ModelConfig | dict = ModelConfig(),
        **kwargs,
    ):
        # Drawn first, before anything else draws, so it depends on the global seed alone.
        seed = python_random.getrandbits(32)
        super().__init__(**kwargs)
        self._part_seed = seed
        self.config = config if isinstance(config, ModelConfig) else ModelConfig(**config)
        self.user_vocab_sizes = [int(v) for v in user_vocab_sizes]
        self.item_vocab_sizes = [int(v) for v in item_vocab_sizes]
        if not self.user_vocab_sizes or not self.item_vocab_sizes:
            raise ValueError("a model needs at least one user feature and one item feature")
        dim = self.config.embedding_dim
        self.user_tables = [EmbeddingTable(r, dim, name=f"user_embedding_{i}") for i, r in enumerate(self.user_vocab_sizes)]
        self.item_tables = [EmbeddingTable(r, dim, name=f"item_embedding_{i}") for i, r in enumerate(self.item_vocab_sizes)]
        self.item_width = dim * len(self.item_vocab_sizes)
        self.user_width = dim * len(self.user_vocab_sizes)

    @contextlib.contextmanager
    def _stream(self, name: str, stage: str):
        """Runs the construction (``stage="make"``) or the build (``"build"``) of the part ``name`` on a
        random stream of its own.

        Keras seeds every initializer (and dropout) that has no seed of its own from Python's ``random``
        (``make_default_seed``) when it is created: at a layer's construction (``Dense``) or its build
        (``add_weight``). Reseeding that module from (model seed, name, stage) makes a part's initial
        values independent of which other parts exist and in what order they were made; the module's
        previous state is restored after, so nothing else's draws move.
        """
        state = python_random.getstate()
        python_random.seed(zlib.crc32(f"{self._part_seed}/{name}/{stage}".encode()))
        try:
            yield
        finally:
            python_random.setstate(state)

    def make_part(self, name: str, layer_class, *args, **kwargs):
        """``layer_class(*args, name=name, **kwargs)``, constructed on the part's own random stream."""
        with self._stream(name, "make"):
            return layer_class(*args, name=name, **kwargs)

    def make_head(self, name: str, hidden_units) -> MLP:
        """A CTR head (MLP) with the config's dropout and input normalisation."""
        return self.make_part(name, MLP, hidden_units, self.config.dropout_rate,
                              input_norm=self.config.head_batch_norm)

    def build_part(self, layer: keras.layers.Layer, *shapes):
        """``layer.build(*shapes)`` on the part's own random stream."""
        with self._stream(layer.name, "build"):
            layer.build(*shapes)

    def build_layers(self):
        """Creates every variable from the known widths, so a fresh model can load weights before a call."""
        for table in self.user_tables + self.item_tables:
            self.build_part(table)

    def embed_user(self, features) -> tf.Tensor:
        return tf.concat([t.lookup(ids) for t, ids in zip(self.user_tables, features[keys.USER])], axis=-1)

    def item_sources(self) -> list:
        """Each item table's lookup source for this step (see EmbeddingTable.source), shared by its lookups."""
        return [t.source() for t in self.item_tables]

    def embed_items(self, ids: Sequence[tf.Tensor], sources: Sequence | None = None) -> tf.Tensor:
        """Item-feature ids (one tensor per position, any shape) -> concatenated embeddings [..., n * E]."""
        sources = sources if sources is not None else [None] * len(self.item_tables)
        return tf.concat([t.lookup(x, s) for t, x, s in zip(self.item_tables, ids, sources)], axis=-1)

    def get_config(self):
        return {
            "user_vocab_sizes": self.user_vocab_sizes,
            "item_vocab_sizes": self.item_vocab_sizes,
            "config": dataclasses.asdict(self.config),
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    @staticmethod
    def _with_prediction(outputs: dict) -> dict:
        outputs["prediction"] = tf.sigmoid(outputs["logit"])
        return outputs


class _DienBlock:
    """DIEN over the short history: GRU -> attention -> AUGRU, plus the auxiliary logits.

    A mixin for DIEN and SIM; expects ``embed_items`` and ``config``.
    """

    def _make_dien_layers(self):
        units = self.config.gru_units
        self.gru = self.make_part("interest_extractor", MaskedGRU, units)
        self.dien_attention = self.make_part("dien_attention", DienAttention, units)
        self.augru = self.make_part("interest_evolution", AUGRU, units)
        self.aux_net = self.make_part("auxiliary_network", AuxiliaryNetwork, self.config.aux_mlp_dims)

    def _build_dien_layers(self):
        units = self.config.gru_units
        self.build_part(self.gru, (None, None, self.item_width))
        self.build_part(self.dien_attention, (None, self.item_width), (None, None, units))
        self.build_part(self.augru, (None, None, units))
        self.build_part(self.aux_net, (None, None, units), (None, None, self.item_width))

    def _dien(self, query, features, training, sources):
        """(final interest state, auxiliary outputs); the auxiliary network runs only when training."""
        short = tf.transpose(self.embed_items(features[keys.SHORT_HISTORY], sources), [1, 0, 2])  # [T, B, D]
        mask = tf.cast(features[keys.SHORT_MASK], short.dtype)
        # Time-major [T, B, H] between the layers: the AUGRU runs step by step and the attention is
        # per position, so no [B, T, H] transposes are needed.
        states, _ = self.gru(short, mask, time_major_input=True, time_major_output=True)
        attention = self.dien_attention(query, states, mask, time_major=True)
        final = self.augru(states, mask, attention, time_major_input=True)
        if not training:
            return final, {}
        short_neg = self.embed_items(features[keys.SHORT_NEG_HISTORY], sources)
        # Interest state t predicts behaviour t + 1. tf.split, not x[1:]: a strided slice's gradient is
        # a zero-filled copy of the whole tensor.
        steps = short.shape[0]
        earlier, _ = tf.split(states, [steps - 1, 1], axis=0)
        _, clicked = tf.split(short, [1, steps - 1], axis=0)
        _, unclicked = tf.split(tf.transpose(short_neg, [1, 0, 2]), [1, steps - 1], axis=0)
        click_logits, noclick_logits = (tf.transpose(x) for x in self.aux_net.pair(earlier, clicked, unclicked))
        aux = {
            "aux_click_logits": click_logits,
            "aux_noclick_logits": noclick_logits,
            "aux_pair_mask": keys.aux_pair_mask(features[keys.SHORT_MASK]),
        }
        return final, aux


@keras.saving.register_keras_serializable(package="sim_tf")
class DIN(CtrModel):
    """DIN: target attention over the whole history (long + short) -> MLP([q, pooled, user])."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.attention = self.make_part("attention", AttentionPooling, self.config.attention)
        self.head = self.make_head("head", self.config.stage_two_mlp_dims)
        self.build_layers()

    def build_layers(self):
        super().build_layers()
        self.build_part(self.attention, (None, None, self.item_width))
        self.build_part(self.head, (None, 2 * self.item_width + self.user_width))
        self.built = True

    def call(self, features, training=False):
        sources = self.item_sources()
        query = self.embed_items(features[keys.TARGET], sources)
        history = self.embed_items(
            [tf.concat([a, b], axis=1) for a, b in zip(features[keys.LONG_HISTORY], features[keys.SHORT_HISTORY])],
            sources,
        )
        mask = tf.concat([features[keys.LONG_MASK], features[keys.SHORT_MASK]], axis=1)
        pooled, _ = self.attention(query, history, mask)
        user = self.embed_user(features)
        logit = self.head(tf.concat([query, pooled, user], axis=-1), training=training)
        return self._with_prediction({"logit": logit})


@keras.saving.register_keras_serializable(package="sim_tf")
class DIEN(_DienBlock, CtrModel):
    """DIEN over the short history -> MLP([q, final interest state, user]); trained with the aux loss."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._make_dien_layers()
        self.head = self.make_head("head", self.config.stage_two_mlp_dims)
        self.build_layers()

    def build_layers(self):
        super().build_layers()
        self._build_dien_layers()
        self.build_part(self.head, (None, self.item_width + self.config.gru_units + self.user_width))
        self.built = True

    def call(self, features, training=False):
        sources = self.item_sources()
        query = self.embed_items(features[keys.TARGET], sources)
        final, aux = self._dien(query, features, training, sources)
        user = self.embed_user(features)
        logit = self.head(tf.concat([query, final, user], axis=-1), training=training)
        return self._with_prediction({"logit": logit, **aux})


@keras.saving.register_keras_serializable(package="sim_tf")
class SIM(_DienBlock, CtrModel):
    """SIM.

    * GSU, ``gsu="soft"`` (stage one): attention of the target over the long history ->
      MLP([q, pooled_long, user]); then the ``top_k`` long-history positions with the highest GSU scores
      (only real behaviours count as valid; an empty long history gives an empty selection).
    * GSU, ``gsu="hard"``: the input pipeline's category search already chose the long history (at most
      ``top_k`` behaviours of the target's category); it is taken whole, with no stage-one head or loss.
    * ESU (stage two): attention over the selection, its masked mean and DIEN over the short history ->
      MLP([att, mean, q, final, user]).
    """

    # Long histories up to this many positions take the soft search of the padded recipe format
    # (_soft_search_by_mask, or _soft_search for DIN-style attention); longer ones the one built for
    # thousands of behaviours (_long_soft_search), which pools only the k chosen ones. At T = 1,000 and
    # B = 1,024 the sort-based selection alone costs 100 ms forward + backward, against 20 for embedding
    # the chosen behaviours again (docs/performance.md).
    sort_select_max_steps = 128
    small_vocabulary_rows = 4096

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        c = self.config
        self.soft = c.gsu == "soft"
        if self.soft:  # the other search units have no stage-one loss
            self.gsu_attention = self.make_part("gsu_attention", AttentionPooling, c.attention)
            self.stage_one_head = self.make_head("stage_one_head", c.stage_one_mlp_dims)
        if c.gsu in ("soft", "hard", "eta"):
            self.esu_attention = self.make_part("esu_attention", AttentionPooling, c.attention)
        if c.gsu == "eta":
            self.eta = self.make_part("eta_search", EtaSearch, c.hash_bits)
        elif c.gsu == "sdim":
            self.sdim = self.make_part("sdim_sampler", SdimSampler, c.sdim_rounds, c.sdim_bits)
        elif c.gsu == "twin":
            self.twin = self.make_part("twin_attention", TwinAttention, c.twin_heads, c.embedding_dim)
        self._make_dien_layers()
        self.head = self.make_head("stage_two_head", self.config.stage_two_mlp_dims)
        self.build_layers()

    def build_layers(self):
        super().build_layers()
        if self.soft:
            self.build_part(self.gsu_attention, (None, None, self.item_width))
            self.build_part(self.stage_one_head, (None, 2 * self.item_width + self.user_width))
        if hasattr(self, "esu_attention"):
            self.build_part(self.esu_attention, (None, None, self.item_width))
        for unit in ("eta", "sdim"):
            if hasattr(self, unit):
                self.build_part(getattr(self, unit), [self.config.embedding_dim] * len(self.item_tables))
        if hasattr(self, "twin"):
            self.build_part(self.twin, self.item_width)
        self._build_dien_layers()
        self.build_part(self.head, (None, 3 * self.item_width + self.config.gru_units + self.user_width))
        self.built = True

    def _stage_one(self, query, pooled_long, user, training) -> dict:
        return {"stage_one_logit": self.stage_one_head(tf.concat([query, pooled_long, user], axis=-1), training=training)}

    def _soft_search(self, query, user, features, sources, training):
        """The soft search over a short long history with DIN-style attention (whose ESU has weights of its
        own): the chosen behaviours gathered from the embedded history by a sort (whose backward is a
        gather, see select_top_k)."""
        long_history = self.embed_items(features[keys.LONG_HISTORY], sources)
        long_mask = tf.cast(features[keys.LONG_MASK], long_history.dtype)
        stage_one = {}
        if training:
            pooled_long, scores = self.gsu_attention(query, long_history, long_mask)
            stage_one = self._stage_one(query, pooled_long, user, training)
        else:
            # The stage-one logit only feeds the training loss; prediction needs the search scores alone.
            scores = self.gsu_attention.ranked(query, long_history, long_mask)
        k = min(self.config.top_k, long_history.shape[1])
        top_items, top_mask = select_top_k(scores, long_history, long_mask, k, differentiable=training)
        return top_items, top_mask, stage_one

    def _searches_by_mask(self, steps) -> bool:
        """Whether the soft search runs as :meth:`_soft_search_by_mask`: dot attention over a padded long
        history of at most ``sort_select_max_steps`` positions (the recipe's format)."""
        return self.soft and self.config.attention == "dot" and steps is not None and steps <= self.sort_select_max_steps

    def _soft_search_by_mask(self, query, user, features, sources, training):
        """(ESU attention, mean of the chosen behaviours, stage-one outputs) of the soft search.

        The GSU and ESU attentions are both dot products of the same target with the same keys and have
        no weights, so the ESU's scores over the chosen behaviours are the GSU's. The top-k choice becomes a
        mask over the long history (top_k_mask: the positions select_top_k gathers), and the pools run over
        all T positions under it: the ESU's attention, the mean of the chosen behaviours and, when
        training, the GSU's attention over every real behaviour for the stage-one head, as one
        [B, pools, T] x [B, T, D_i] matmul per item feature in the compute dtype. The same function as
        gathering the k chosen behaviours and attending over them (_soft_search), and the same gradient:
        the gather's gradient puts each chosen behaviour's share back at its position, where the mask
        leaves it. Without the sort, the [B, k, D] gather and its gradient, the concatenation of the long
        history's features and the ESU's second set of scores (docs/performance.md).
        """
        parts = [table.lookup(ids, source)
                 for table, ids, source in zip(self.item_tables, features[keys.LONG_HISTORY], sources)]
        mask = tf.cast(features[keys.LONG_MASK], tf.float32)
        scores = self.gsu_attention.part_scores(query, parts)  # float32 under a mixed policy too
        ranked = tf.where(mask > 0, scores, tf.constant(scores.dtype.min, scores.dtype))
        chosen = top_k_mask(ranked, min(self.config.top_k, parts[0].shape[1])) * mask
        count = tf.reduce_sum(chosen, axis=-1, keepdims=True)
        weights = [masked_softmax(scores, chosen), chosen / tf.maximum(count, 1.0)]
        if training:
            weights.append(masked_softmax(scores, mask))
        pools = tf.cast(tf.stack(weights, axis=1), parts[0].dtype)
        pooled = tf.concat([tf.matmul(pools, p) for p in parts], axis=-1)
        stage_one = self._stage_one(query, pooled[:, 2], user, training) if training else {}
        return pooled[:, 0], pooled[:, 1], stage_one

    def _long_soft_search(self, query, user, features, sources, training):
        """The soft search over a long history (thousands of behaviours), where the cost per behaviour rules.

        * Dot-product attention reads the history feature by feature, never concatenating it, and a
          small table (at most ``small_vocabulary_rows`` rows, fewer than the positions: categories) is
          scored and pooled per id (TableRows) instead of gathered per position.
        * The k chosen behaviours are embedded again instead of gathered from the long history's
          embeddings: the same values, but their gradient goes to the tables' rows directly, so the backward
          pass never builds a [B, T, D] gradient for the selection, nor sorts twice.
        """
        long_ids = features[keys.LONG_HISTORY]
        steps = tf.shape(long_ids[0])[1]
        mask = features[keys.LONG_MASK]
        if self.config.attention == "dot":
            parts = self._long_parts(long_ids, sources)
            pooled_long, scores = self.gsu_attention.call_parts(query, parts, mask)
        else:
            pooled_long, scores = self.gsu_attention(query, self.embed_items(long_ids, sources), mask)
        stage_one = self._stage_one(query, pooled_long, user, training) if training else {}
        _, top = tf.math.top_k(scores, k=tf.minimum(self.config.top_k, steps), sorted=False)
        top_items, top_mask = self._embed_chosen(long_ids, mask, top, sources)
        return top_items, top_mask, stage_one

    def _long_parts(self, long_ids, sources) -> list:
        """The long history as parts (see AttentionPooling.call_parts): a small table's ids stay ids."""
        steps = long_ids[0].shape[1] or 0
        return [TableRows(tf.cast(source, table.compute_dtype), ids)
                if table.rows <= self.small_vocabulary_rows and steps > table.rows else table.lookup(ids, source)
                for table, ids, source in zip(self.item_tables, long_ids, sources)]

    def _embed_chosen(self, long_ids, mask, top, sources):
        """The chosen positions [B, k] embedded again (their gradient goes to the tables' rows directly)."""
        items = self.embed_items([tf.gather(ids, top, batch_dims=1) for ids in long_ids], sources)
        return items, tf.cast(tf.gather(mask, top, batch_dims=1), items.dtype)

    def _successor(self, query, features, sources):
        """(attended, mean) of the long history under ETA, SDIM or TWIN (sim_tf/layers/long_sequence.py).

        The hashes (ETA, SDIM) hash every table row once per step and a behaviour gathers its rows'
        signatures (TableRows, long_sequence.FeatureSimHash): one integer a feature, no embedding."""
        gsu = self.config.gsu
        long_ids = features[keys.LONG_HISTORY]
        mask = features[keys.LONG_MASK]
        rows = [TableRows(source, ids) for ids, source in zip(long_ids, sources)]
        queries = tf.split(query, len(self.item_tables), axis=-1)
        if gsu == "sdim":
            return self.sdim.interest(queries, rows, mask)
        k = tf.minimum(self.config.top_k, tf.shape(long_ids[0])[1])
        if gsu == "eta":
            top, _ = self.eta.search(queries, rows, mask, k)
            items, top_mask = self._embed_chosen(long_ids, mask, top, sources)
            attended, _ = self.esu_attention(query, items, top_mask)
            return attended, masked_mean(items, top_mask)
        parts = self._long_parts(long_ids, sources)
        ages = age_buckets(tf.shape(long_ids[0])[1])
        _, top = tf.math.top_k(self.twin.gsu_scores(query, parts, mask, ages[None, :]), k=k, sorted=False)
        items, top_mask = self._embed_chosen(long_ids, mask, top, sources)
        attended, _ = self.twin(query, items, top_mask, tf.gather(ages, top))
        return attended, masked_mean(items, top_mask)

    def call(self, features, training=False):
        sources = self.item_sources()
        query = self.embed_items(features[keys.TARGET], sources)
        user = self.embed_user(features)
        long_ids = features[keys.LONG_HISTORY]
        steps = long_ids[0].shape[1]
        stage_one = {}
        if self.config.gsu in ("eta", "sdim", "twin"):
            attended, mean = self._successor(query, features, sources)
        elif self._searches_by_mask(steps):
            attended, mean, stage_one = self._soft_search_by_mask(query, user, features, sources, training)
        else:
            if self.config.gsu == "hard":
                top_items = self.embed_items(long_ids, sources)
                top_mask = tf.cast(features[keys.LONG_MASK], top_items.dtype)
            elif steps is not None and steps <= self.sort_select_max_steps:
                top_items, top_mask, stage_one = self._soft_search(query, user, features, sources, training)
            else:
                top_items, top_mask, stage_one = self._long_soft_search(query, user, features, sources, training)
            attended, _ = self.esu_attention(query, top_items, top_mask)
            mean = masked_mean(top_items, top_mask)

        final, aux = self._dien(query, features, training, sources)
        logit = self.head(tf.concat([attended, mean, query, final, user], axis=-1), training=training)
        return self._with_prediction({"logit": logit, **stage_one, **aux})


def top_k_mask(scores: tf.Tensor, k: int) -> tf.Tensor:
    """[B, T] 1 at the ``k`` highest ``scores`` [B, T] of each row and 0 elsewhere, in the scores' dtype.

    Ties at the k-th score go to the lower index, as in select_top_k's stable sort, so the ones mark
    exactly the positions select_top_k gathers.
    """
    values, _ = tf.math.top_k(scores, k=k, sorted=False)
    kth = tf.reduce_min(values, axis=-1, keepdims=True)
    above = scores > kth
    tied = tf.equal(scores, kth)
    room = k - tf.reduce_sum(tf.cast(above, tf.int32), axis=-1, keepdims=True)
    first_tied = tf.logical_and(tied, tf.cumsum(tf.cast(tied, tf.int32), axis=-1) <= room)
    return tf.cast(tf.logical_or(above, first_tied), scores.dtype)


def select_top_k(scores: tf.Tensor, values: tf.Tensor, mask: tf.Tensor, k: int,
                 differentiable: bool = True) -> tuple[tf.Tensor, tf.Tensor]:
    """(values [B, k, D], mask [B, k]) at the k highest ``scores`` [B, T] of each row (ties: lower index).

    Same selection as ``tf.math.top_k``. When ``differentiable``, the positions come from a full
    descending sort so that the backward pass can be a gather by the inverse permutation: TensorFlow's
    gradient of a batched gather is an UnsortedSegmentSum over [B * T, D], single-threaded on CPU,
    although the k positions never collide. Prediction uses ``tf.math.top_k``, which is cheaper than a sort.
    """
    if not differentiable:
        _, top = tf.math.top_k(scores, k=k, sorted=False)
        return tf.gather(values, top, batch_dims=1), tf.gather(mask, top, batch_dims=1)
    steps = values.shape[1]
    order = tf.argsort(scores, axis=-1, direction="DESCENDING", stable=True)
    top, _ = tf.split(order, [k, steps - k], axis=1) if k < steps else (order, None)

    @tf.custom_gradient
    def gather(v):
        def grad(upstream):
            if k < steps:
                shape = tf.stack([tf.shape(upstream)[0], steps - k, tf.shape(upstream)[2]])
                upstream = tf.concat([upstream, tf.zeros(shape, upstream.dtype)], axis=1)
            inverse = tf.argsort(order, axis=-1, stable=True)
            return tf.gather(upstream, inverse, batch_dims=1)

        return tf.gather(v, top, batch_dims=1), grad

    return gather(values), tf.gather(mask, top, batch_dims=1)


_MODELS = {"sim": SIM, "dien": DIEN, "din": DIN}


def build_model(model_type: str, config: ModelConfig, spec: fs.FeatureSpec, out_of_range: str | None = None) -> CtrModel:
    """Builds (and creates the variables of) a model whose tables fit ``spec``'s cardinalities."""
    if model_type not in _MODELS:
        raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
    policy = out_of_range or spec.out_of_range_ids
    users = [keys.embedding_rows(c, policy) for c in spec.user_cardinalities]
    items = [keys.embedding_rows(g.cardinality, policy) for g in spec.item_groups]
    return _MODELS[model_type](users, items, config, name=model_type)
