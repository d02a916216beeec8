"""Synthetic click datasets with a planted signal that long behaviour histories are needed to find.

Generative story (all vectorised numpy, seeded):

* Items belong to categories; category sizes and item popularity are Zipf-distributed.
* Every history has a few **long-term interest** categories: ``stable_interests`` of them belong to the
  user (a user embedding can learn them), the others are drawn per history (only the history shows them).
* A history of ``h`` behaviours (h varies per sample, left-padded to L) draws its older positions from
  those interests (probability ``interest_probability``) or from one-off categories, and its newest
  ``recent_length`` positions from one-off categories; the newest behaviour is the current **session**.
* Each history yields one pair of samples (label 1 and 0, same history), of one of two kinds:
  - *long-term* (probability ``long_term_target_probability``): an interest item against an item of a
    random category. Only the older behaviours show the difference: DIEN, which reads the recent ones,
    cannot see it; DIN and SIM's search unit can.
  - *session*: an item of the newest behaviour's category against one of another recent behaviour's
    category. Both categories appear once in the history; only their order tells them apart, which DIN's
    order-free pooling cannot see and DIEN's GRU (alone, or inside SIM) can.
* Targets of both labels are drawn the same way (a category, then a popularity-weighted item in it), so
  the target alone says nothing. The negative history holds popularity-drawn items, like the recipe's.

SIM sees both kinds; DIN and DIEN each see one.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np

from sim_tf.data import tfrecord_writer as tw


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    users: int
    items: int
    categories: int
    history_length: int = 100
    train_samples: int = 200_000
    test_samples: int = 20_000
    min_history: int = 5
    recent_length: int = 10
    interests_per_sample: int = 3
    stable_interests: int = 1
    interest_probability: float = 0.6
    long_term_target_probability: float = 0.5
    zipf_exponent: float = 1.1
    seed: int = 0

    def __post_init__(self):
        for name in ("users", "items", "categories", "history_length", "min_history", "recent_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"synthetic data: {name} must be >= 1, got {getattr(self, name)}")
        if self.categories > self.items:
            raise ValueError(f"synthetic data: {self.categories} categories need at least as many items, got {self.items}")
        if self.min_history > self.history_length:
            raise ValueError(
                f"synthetic data: min_history {self.min_history} exceeds history_length {self.history_length}"
            )
        if self.train_samples < 2 or self.test_samples < 2:
            raise ValueError("synthetic data: train_samples and test_samples must be >= 2 (pairs of samples)")
        if not 0 <= self.stable_interests <= self.interests_per_sample or self.interests_per_sample < 1:
            raise ValueError("synthetic data: need 0 <= stable_interests <= interests_per_sample and >= 1 interest")
        for name in ("interest_probability", "long_term_target_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"synthetic data: {name} must be in [0, 1]")


PRESETS: dict[str, SyntheticConfig] = {
    # Runs end to end in seconds; used by the tests.
    "tiny": SyntheticConfig(
        users=200, items=2000, categories=100, history_length=20, train_samples=16384, test_samples=2048,
        min_history=3, recent_length=5,
    ),
    # The demo and benchmark shape: the scale of the recipe's synthetic benchmark data.
    "small": SyntheticConfig(users=20_000, items=200_000, categories=500),
    # Amazon Books cardinalities; same sample counts as `small`, so throughput is comparable.
    "amazon": SyntheticConfig(users=105_925, items=1_209_081, categories=2_330),
}


class _Catalogue:
    """Items grouped by category, with Zipf popularity inside each category and across all items."""

    def __init__(self, config: SyntheticConfig, rng: np.random.Generator):
        a = config.zipf_exponent
        cat_weights = 1.0 / np.arange(1, config.categories + 1) ** a
        # Every category gets at least one item; the rest follow the category weights.
        extra = rng.multinomial(config.items - config.categories, cat_weights / cat_weights.sum())
        sizes = extra + 1
        self.category_of_item = np.concatenate([[0], np.repeat(np.arange(1, config.categories + 1), sizes)])
        rng.shuffle(self.category_of_item[1:])
        order = np.argsort(self.category_of_item[1:], kind="stable") + 1  # item ids sorted by category
        self.items_by_category = order
        # Popularity: a random Zipf rank per item.
        ranks = rng.permutation(config.items) + 1
        weights = 1.0 / ranks.astype(np.float64) ** a
        self.item_weights = weights / weights.sum()  # index i -> item i + 1
        sorted_weights = weights[order - 1]
        self.cumulative = np.cumsum(sorted_weights)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        self.category_low = np.concatenate([[0.0], self.cumulative])[starts[:-1]]
        self.category_high = self.cumulative[starts[1:] - 1]
        self.category_popularity = (self.category_high - self.category_low) / self.cumulative[-1]
        self.global_cumulative = np.cumsum(self.item_weights)

    def items_in(self, categories: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A popularity-weighted item of each given category (same shape as ``categories``)."""
        low = self.category_low[categories - 1]
        high = self.category_high[categories - 1]
        u = low + rng.random(categories.shape) * (high - low)
        idx = np.searchsorted(self.cumulative, u, side="right")
        return self.items_by_category[np.minimum(idx, self.items_by_category.size - 1)]

    def popular_items(self, shape, rng: np.random.Generator) -> np.ndarray:
        idx = np.searchsorted(self.global_cumulative, rng.random(shape) * self.global_cumulative[-1], side="right")
        return np.minimum(idx, self.item_weights.size - 1) + 1

    def popular_categories(self, shape, rng: np.random.Generator) -> np.ndarray:
        cumulative = np.cumsum(self.category_popularity)
        idx = np.searchsorted(cumulative, rng.random(shape) * cumulative[-1], side="right")
        return np.minimum(idx, self.category_popularity.size - 1) + 1


def _split(config: SyntheticConfig, catalogue: _Catalogue, interests: np.ndarray, pairs: int, rng) -> dict:
    L = config.history_length
    recent = min(config.recent_length, L)
    rows = np.arange(pairs)
    users = rng.integers(1, config.users + 1, size=pairs)
    lengths = rng.integers(config.min_history, L + 1, size=pairs)
    fresh = rng.integers(1, config.categories + 1, size=(pairs, config.interests_per_sample - config.stable_interests))
    user_interests = np.concatenate([interests[users - 1], fresh], axis=1)  # [pairs, interests_per_sample]

    # Older positions: one of the history's interests, or a one-off category. Recent positions: one-off
    # categories; the newest one is the current session.
    pick = rng.integers(0, config.interests_per_sample, size=(pairs, L))
    categories = np.take_along_axis(user_interests, pick, axis=1)
    one_off = rng.random((pairs, L)) >= config.interest_probability
    one_off[:, L - recent :] = True
    categories = np.where(one_off, rng.integers(1, config.categories + 1, size=(pairs, L)), categories)
    history_items = catalogue.items_in(categories, rng)

    # Left padding: positions before L - length are empty.
    valid = np.arange(L)[None, :] >= (L - lengths)[:, None]
    history_items = np.where(valid, history_items, 0)
    history_categories = np.where(valid, catalogue.category_of_item[history_items], 0)

    random_categories = rng.integers(1, config.categories + 1, size=pairs)
    long_term = rng.random(pairs) < config.long_term_target_probability
    # Long-term pairs: an interest (present in the older part) against a random category (absent).
    interest = np.take_along_axis(user_interests, rng.integers(0, config.interests_per_sample, (pairs, 1)), 1)[:, 0]
    # Session pairs: the newest behaviour's category against another recent behaviour's category; both
    # are present once, so only their order tells them apart.
    earlier = np.zeros((pairs, L), dtype=bool)
    earlier[:, L - recent : L - 1] = True
    earlier &= valid
    pick_earlier = np.argmax(earlier * rng.random((pairs, L)), axis=1)
    earlier_category = np.where(earlier.any(axis=1), history_categories[rows, pick_earlier], random_categories)
    positive_categories = np.where(long_term, interest, history_categories[:, -1])
    negative_categories = np.where(long_term, random_categories, earlier_category)
    positive_items = catalogue.items_in(positive_categories, rng)
    negative_items = catalogue.items_in(negative_categories, rng)

    negative_history = np.where(valid, catalogue.popular_items((pairs, L), rng), 0)
    negative_history_categories = np.where(valid, catalogue.category_of_item[negative_history], 0)

    def both(a):  # positive and negative sample of a pair share everything but target and label
        return np.concatenate([a, a])

    targets = np.concatenate([positive_items, negative_items])
    columns = {
        tw.LABEL: np.concatenate([np.ones(pairs, np.int64), np.zeros(pairs, np.int64)]),
        tw.user_feature(0): both(users),
        tw.item_feature(0, tw.TARGET): targets,
        tw.item_feature(1, tw.TARGET): catalogue.category_of_item[targets],
        tw.item_feature(0, tw.HISTORY): both(history_items),
        tw.item_feature(1, tw.HISTORY): both(history_categories),
        tw.item_feature(0, tw.NEGATIVE_HISTORY): both(negative_history),
        tw.item_feature(1, tw.NEGATIVE_HISTORY): both(negative_history_categories),
    }
    order = rng.permutation(2 * pairs)
    return {k: np.ascontiguousarray(v[order]).astype(np.int64) for k, v in columns.items()}


def generate(config: SyntheticConfig) -> dict[str, dict[str, np.ndarray]]:
    """Returns {"train": columns, "test": columns} in the recipe converter's feature naming."""
    rng = np.random.default_rng(config.seed)
    catalogue = _Catalogue(config, rng)
    # Interests are spread over all categories (not popularity-drawn), so that a popular negative target
    # rarely falls in a user's interests by chance.
    interests = rng.integers(1, config.categories + 1, size=(config.users, config.stable_interests))
    return {
        "train": _split(config, catalogue, interests, config.train_samples // 2, rng),
        "test": _split(config, catalogue, interests, config.test_samples // 2, rng),
    }


def synthesize(
    config: SyntheticConfig,
    output_dir: str,
    num_files: int = 8,
    prebatch_size: int = 32,
    log: Callable[[str], None] | None = print,
):
    """Generates a dataset and writes it (TFRecord shards + feature_spec.yaml); returns the FeatureSpec."""
    started = time.perf_counter()
    splits = generate(config)
    if log:
        log(f"generated {config.train_samples:,} train and {config.test_samples:,} test samples in "
            f"{time.perf_counter() - started:.1f}s")
    metadata = {
        "samples": {name: int(len(cols[tw.LABEL])) for name, cols in splits.items()},
        "generator": {"kind": "sim_tf.synthetic", **dataclasses.asdict(config)},
    }
    return tw.write_dataset(
        output_dir,
        splits,
        user_cardinalities=[config.users],
        item_cardinalities=[config.items, config.categories],
        history_length=config.history_length,
        num_files={"train": num_files, "test": max(1, num_files // 4)},
        prebatch_size=prebatch_size,
        metadata=metadata,
        log=log,
    )


# ---------------------------------------------------------------------------------------------- lifelong
LIFELONG_GENERATOR = "sim_tf.synthetic.lifelong"  # feature_spec.yaml's metadata.generator.kind for these datasets


@dataclasses.dataclass(frozen=True)
class LifelongConfig:
    """A store-backed dataset of lifelong histories whose signal lies *older than the most recent
    ``recent_span``* behaviours of every sample.

    Each user has one history of ``min_history`` .. ``max_history`` behaviours. Its older part (all but
    the last ``recent_span + samples_per_user``) draws from the user's ``interests`` categories with
    probability ``interest_probability``, else from one-off categories; the rest is all one-off. Samples
    are drawn at the user's last ``samples_per_user`` positions, in pairs (label 1 and 0) as in
    :func:`generate`: *long-term* pairs (an interest against a random category: only behaviours older
    than ``recent_span`` tell them apart, so a model given the last 100 or 1,000 cannot) and *session*
    pairs (the newest behaviour's category against another of the last ``short_length``: only their
    order tells). Test samples belong to held-out users, whose user embedding was never trained, so
    nothing but the history carries their interests.
    """

    users: int = 2_200
    items: int = 200_000
    categories: int = 500
    max_history: int = 10_000
    min_history: int = 1_500
    recent_span: int = 1_000
    samples_per_user: int = 100
    test_fraction: float = 0.1
    short_length: int = 10
    interests: int = 3
    interest_probability: float = 0.6
    long_term_target_probability: float = 0.5
    zipf_exponent: float = 1.1
    seed: int = 0

    def __post_init__(self):
        for name in ("users", "items", "categories", "max_history", "min_history", "samples_per_user",
                     "short_length", "interests"):
            if getattr(self, name) < 1:
                raise ValueError(f"synthetic data: {name} must be >= 1, got {getattr(self, name)}")
        if self.samples_per_user % 2:
            raise ValueError(f"synthetic data: samples_per_user must be even (pairs), got {self.samples_per_user}")
        if self.min_history > self.max_history:
            raise ValueError(f"synthetic data: min_history {self.min_history} exceeds max_history {self.max_history}")
        if self.min_history <= self.recent_span + self.samples_per_user:
            raise ValueError(f"synthetic data: min_history {self.min_history} must exceed recent_span + samples_per_user "
                             f"({self.recent_span + self.samples_per_user}), or some users have no old behaviours")
        if self.categories > self.items:
            raise ValueError(f"synthetic data: {self.categories} categories need at least as many items")
        if not 0 < self.test_fraction < 1:
            raise ValueError("synthetic data: test_fraction must be between 0 and 1")

    @property
    def train_users(self) -> int:
        return max(1, min(self.users - 1, round(self.users * (1 - self.test_fraction))))

    @property
    def history_length(self) -> int:  # the recent history each sample carries (assembled from the store)
        return self.short_length


def generate_lifelong(config: LifelongConfig, pair_kinds: bool = False):
    """(store, {"train": columns, "test": columns}); the columns reference the store by user and position.

    With ``pair_kinds``, also {"train": kinds, "test": kinds}: per sample, in the columns' order, True for
    a long-term pair's sample and False for a session pair's (the same data either way: the kinds are
    drawn whether asked for or not), so a model's AUC can be read per kind (sim_tf.bench.lifelong_pairs).
    """
    from sim_tf.data.behavior_store import BehaviorStore

    rng = np.random.default_rng(config.seed)
    catalogue = _Catalogue(config, rng)
    U, n_pairs = config.users, config.samples_per_user // 2
    lengths = rng.integers(config.min_history, config.max_history + 1, size=U)
    offsets = np.concatenate([[0, 0], np.cumsum(lengths)]).astype(np.int64)  # user 0 (padding) has none
    total = int(offsets[-1])
    owner = np.repeat(np.arange(1, U + 1), lengths)
    position = np.arange(total) - offsets[owner]
    interests = rng.integers(1, config.categories + 1, size=(U + 1, config.interests))
    old = position < (lengths[owner - 1] - config.recent_span - config.samples_per_user)
    use_interest = old & (rng.random(total) < config.interest_probability)
    categories = np.where(use_interest, interests[owner, rng.integers(0, config.interests, total)],
                          rng.integers(1, config.categories + 1, total))
    items = catalogue.items_in(categories, rng)
    categories = catalogue.category_of_item[items]
    times = 1_000_000 + np.cumsum(rng.integers(1, 3600, total))  # increasing within every user
    store = BehaviorStore(offsets, {"item_feat_0": items.astype(np.int32), "item_feat_1": categories.astype(np.int32)},
                          times.astype(np.int64))

    def split(users: np.ndarray) -> dict:
        pair_users = np.repeat(users, n_pairs)
        # Pairs at the user's last positions: a pair at position p sees behaviours [0, p).
        ends = lengths[pair_users - 1] - rng.integers(0, n_pairs, pair_users.size) * 2 - 1
        base = offsets[pair_users]
        newest = categories[base + ends - 1]
        earlier_pos = ends - 1 - rng.integers(1, config.short_length, pair_users.size)
        earlier = categories[base + earlier_pos]
        random_categories = rng.integers(1, config.categories + 1, pair_users.size)
        interest = interests[pair_users, rng.integers(0, config.interests, pair_users.size)]
        long_term = rng.random(pair_users.size) < config.long_term_target_probability
        positive = catalogue.items_in(np.where(long_term, interest, newest), rng)
        negative = catalogue.items_in(np.where(long_term, random_categories, earlier), rng)
        targets = np.concatenate([positive, negative])
        columns = {
            tw.LABEL: np.concatenate([np.ones(pair_users.size, np.int64), np.zeros(pair_users.size, np.int64)]),
            tw.user_feature(0): np.concatenate([pair_users, pair_users]),
            tw.item_feature(0, tw.TARGET): targets,
            tw.item_feature(1, tw.TARGET): catalogue.category_of_item[targets],
            tw.POSITION: np.concatenate([ends, ends]),
        }
        order = rng.permutation(targets.size)
        kinds = np.concatenate([long_term, long_term])[order]
        return {k: np.ascontiguousarray(v[order]).astype(np.int64) for k, v in columns.items()}, kinds

    train, train_kinds = split(np.arange(1, config.train_users + 1))
    test, test_kinds = split(np.arange(config.train_users + 1, U + 1))
    splits = {"train": train, "test": test}
    return (store, splits, {"train": train_kinds, "test": test_kinds}) if pair_kinds else (store, splits)


def synthesize_lifelong(config: LifelongConfig, output_dir: str, num_files: int = 8, prebatch_size: int = 32,
                        log: Callable[[str], None] | None = print):
    """Generates a lifelong dataset and writes it (behaviour store + TFRecord samples + feature_spec.yaml)."""
    started = time.perf_counter()
    store, splits = generate_lifelong(config)
    if log:
        log(f"generated {int(store.offsets[-1]):,} behaviours of {config.users:,} users and "
            f"{sum(len(c[tw.LABEL]) for c in splits.values()):,} samples in {time.perf_counter() - started:.1f}s")
    metadata = {
        "samples": {name: int(len(cols[tw.LABEL])) for name, cols in splits.items()},
        "generator": {"kind": LIFELONG_GENERATOR, **dataclasses.asdict(config)},
    }
    return tw.write_dataset(
        output_dir, splits, user_cardinalities=[config.users], item_cardinalities=[config.items, config.categories],
        history_length=config.short_length, num_files={"train": num_files, "test": max(1, num_files // 4)},
        prebatch_size=prebatch_size, metadata=metadata, log=log, store=store,
    )


LIFELONG_PRESETS: dict[str, LifelongConfig] = {"lifelong": LifelongConfig()}
