"""A behaviour store: every user's behaviours kept once, sorted by time, instead of a padded history in
every sample.

Layout (one array per item feature, ragged by user, as values + row offsets):

* ``offsets`` int64 [U + 2]: user u's behaviours are rows ``offsets[u] : offsets[u + 1]`` (user ids start
  at 1; row 0 of ``offsets`` belongs to the padding id 0, which has no behaviours).
* ``features[name]`` int32 [N]: the item feature of each behaviour (e.g. item id, category id).
* ``timestamps`` int64 [N]: non-decreasing within each user.

A training sample references its user and ``history_end``: how many of the user's behaviours happened
before it. Its history is the user's behaviours ``[0, history_end)`` only, so no behaviour at or after the
sample can leak into it. :func:`assemble` builds the most recent ``length`` of them, left-padded with 0
as the padded format is; :func:`hard_search` keeps the most recent ``k`` whose category equals the
target's (the SIM paper's hard search) through a per-user category index, in O(log n + k) per sample
whatever the history's length. Both are TensorFlow functions over a batch, for tf.data;
:func:`store_inputs` builds the model's input dict from them.

A worker holds the whole store in memory (Amazon Books' 22.5M reviews x 2 features x 4 bytes + offsets
+ timestamps: ~0.4 GB). Beyond one machine it shards by user: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses
import io
import os
import zipfile
import zlib

import numpy as np
import tensorflow as tf

from sim_tf.data import inputs as keys
from sim_tf.data.inputs import DataError, checked_ids


@dataclasses.dataclass
class BehaviorStore:
    offsets: np.ndarray
    features: dict[str, np.ndarray]
    timestamps: np.ndarray

    @property
    def num_users(self) -> int:
        return len(self.offsets) - 2

    def history_length(self, user: int) -> int:
        return int(self.offsets[user + 1] - self.offsets[user])

    def validate(self, where: str = "behaviour store") -> None:
        """One DataError naming what is wrong: offsets, sibling lengths, time order."""
        offsets = np.asarray(self.offsets)
        if offsets.ndim != 1 or offsets.size < 2 or offsets[0] != 0:
            raise DataError(f"{where}: offsets must be a 1-D array starting at 0")
        if np.any(np.diff(offsets) < 0):
            bad = int(np.argmax(np.diff(offsets) < 0))
            raise DataError(f"{where}: offsets are not monotonic (user {bad}: {offsets[bad]} -> {offsets[bad + 1]})")
        total = int(offsets[-1])
        lengths = {name: len(values) for name, values in self.features.items()} | {"timestamps": len(self.timestamps)}
        for name, length in lengths.items():
            if length != total:
                raise DataError(f"{where}: {name} holds {length:,} behaviours but the offsets describe {total:,} "
                                f"(every feature needs one value per behaviour)")
        if total:
            step = np.diff(self.timestamps)
            first_of_user = np.zeros(total, bool)
            first_of_user[offsets[:-1][offsets[:-1] < total]] = True
            backwards = (step < 0) & ~first_of_user[1:]
            if backwards.any():
                row = int(np.argmax(backwards)) + 1
                user = int(np.searchsorted(offsets, row, side="right") - 1)
                raise DataError(f"{where}: user {user}'s timestamps go back in time at behaviour {row - offsets[user]}")

    def check_references(self, users: np.ndarray, ends: np.ndarray, where: str = "samples") -> None:
        """Every sample must name a user of the store and a position inside that user's history."""
        users, ends = np.asarray(users), np.asarray(ends)
        if users.size and (users.min() < 1 or users.max() > self.num_users):
            raise DataError(f"{where}: a sample references user {int(users.max() if users.max() > self.num_users else users.min())}, "
                            f"but the store has users 1..{self.num_users}")
        available = self.offsets[users + 1] - self.offsets[users]
        beyond = (ends < 0) | (ends > available)
        if beyond.any():
            i = int(np.argmax(beyond))
            raise DataError(f"{where}: sample {i} is drawn at position {int(ends[i])} of user {int(users[i])}'s history, "
                            f"which holds {int(available[i])} behaviours")

    def save(self, path: str) -> None:
        np.savez(path, offsets=self.offsets, timestamps=self.timestamps,
                 **{f"feature:{name}": values for name, values in self.features.items()})

    @classmethod
    def load(cls, path, where: str | None = None) -> "BehaviorStore":
        """Reads a store written by :meth:`save` (a path or a binary file object) and validates it."""
        try:
            with np.load(path, allow_pickle=False) as data:
                for needed in ("offsets", "timestamps"):
                    if needed not in data.files:
                        raise DataError(f"{where or path}: not a behaviour store (no {needed!r} array)")
                features = {key.split(":", 1)[1]: data[key] for key in data.files if key.startswith("feature:")}
                store = cls(data["offsets"].astype(np.int64), features, data["timestamps"].astype(np.int64))
        except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as e:
            raise DataError(f"{where or path} is not a readable behaviour store (truncated, or not written by "
                            f"sim-tf: {e}); write it again") from None
        store.validate(where or str(path))
        return store

    @classmethod
    def from_events(cls, users: np.ndarray, times: np.ndarray, features: dict[str, np.ndarray],
                    num_users: int) -> "BehaviorStore":
        """Builds the store from one row per behaviour (any order): sorted by (user, time), stable."""
        users, times = np.asarray(users, np.int64), np.asarray(times, np.int64)
        order = np.lexsort((times, users))
        counts = np.bincount(users, minlength=num_users + 1)[: num_users + 1]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(offsets, {n: np.asarray(v, np.int32)[order] for n, v in features.items()}, times[order])


def category_index(offsets: np.ndarray, categories: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """The hard search's index: (rows, search_keys, stride).

    ``rows`` int64 [N] lists the store's rows user by user (same blocks as ``offsets``), sorted within a
    user by (category, position); ``search_keys[i] = category * stride + position`` of ``rows[i]``, where
    position is the behaviour's index in its user's history and ``stride`` exceeds every position. Within
    a user's block the keys are sorted, so "category c, positions [a, b)" is one contiguous range found by
    two binary searches.
    """
    total = int(offsets[-1])
    users = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    positions = np.arange(total, dtype=np.int64) - offsets[users]
    stride = int(np.diff(offsets).max(initial=0)) + 1
    cats = categories.astype(np.int64)
    order = np.lexsort((positions, cats, users))
    return order.astype(np.int64), cats[order] * stride + positions[order], stride


@dataclasses.dataclass
class StoreTensors:
    """A store as the input pipeline uses it: constant tensors, built once per process and shared."""

    offsets: tf.Tensor  # int64 [U + 2]
    arrays: tuple[tf.Tensor, ...]  # int32 [N], one per item-feature position
    rows: tf.Tensor  # int64 [N], category_index's rows
    search_keys: tf.Tensor  # int64 [N]
    stride: int
    search_steps: int  # binary-search iterations that cover the longest history
    num_users: int
    total: int

    @classmethod
    def from_store(cls, store: BehaviorStore, arrays: tuple[str, ...], category: str) -> "StoreTensors":
        rows, search_keys, stride = category_index(store.offsets, store.features[category])
        return cls(tf.constant(store.offsets, tf.int64), tuple(tf.constant(store.features[a], tf.int32) for a in arrays),
                   tf.constant(rows), tf.constant(search_keys), stride, max(1, int(stride).bit_length()),
                   store.num_users, int(store.offsets[-1]))


_LOADED: dict = {}


def load_for_spec(spec) -> StoreTensors:
    """The store of a store-backed FeatureSpec, checked against it (arrays present, ids inside the
    cardinalities, or mapped to the OOV row under ``out_of_range_ids: oov``), loaded once per process."""
    section = spec.store
    stamp = os.stat(section.file).st_mtime_ns if "://" not in section.file else 0
    key = (section.file, stamp, section.arrays, section.category, spec.out_of_range_ids,
           tuple(g.cardinality for g in spec.item_groups))
    if key not in _LOADED:
        try:
            with tf.io.gfile.GFile(section.file, "rb") as f:
                raw = f.read()
        except tf.errors.OpError as e:
            raise DataError(f"behaviour store {section.file!r} cannot be read: {e.message}") from None
        store = BehaviorStore.load(io.BytesIO(raw), where=f"behaviour store {section.file!r}")
        del raw
        for group, name in zip(spec.item_groups, section.arrays):
            if name not in store.features:
                raise DataError(f"behaviour store {section.file!r} has no array {name!r} (it holds "
                                f"{sorted(store.features)}); the FeatureSpec's behavior_store.arrays names it")
            values = store.features[name]
            bad = (values < 1) | (values > group.cardinality)
            if bad.any():
                if spec.out_of_range_ids != "oov":
                    raise DataError(
                        f"behaviour store {section.file!r}: array {name!r} holds id {int(values[np.argmax(bad)])} "
                        f"outside 1..{group.cardinality} (feature {group.target}'s cardinality; 0 is padding) - fix the "
                        f"store, or set out_of_range_ids: oov in the FeatureSpec metadata")
                store.features[name] = np.where(bad, group.cardinality + 1, values).astype(np.int32)
        _LOADED.clear()  # one store per process at a time: they can be large
        _LOADED[key] = StoreTensors.from_store(store, section.arrays, section.category)
    return _LOADED[key]


def _left_padded(start: tf.Tensor, stop: tf.Tensor, length: int) -> tuple[tf.Tensor, tf.Tensor]:
    """(indices [B, length], valid [B, length]) of the ranges [start, stop) (each at most ``length`` long),
    right-aligned: position j holds index stop - length + j, valid when >= start."""
    index = stop[:, None] - length + tf.range(length, dtype=tf.int64)[None, :]
    valid = index >= start[:, None]
    return tf.maximum(index, 0), valid


def assemble(offsets, values, users, ends, length: int) -> tf.Tensor:
    """[B, length] int32: each sample's most recent ``length`` behaviours (of one feature) before its
    ``history_end``, oldest first, left-padded with 0 (the padded format's layout)."""
    offsets = tf.convert_to_tensor(offsets, tf.int64)
    base = tf.gather(offsets, tf.cast(users, tf.int64))
    stop = base + tf.cast(ends, tf.int64)
    index, valid = _left_padded(tf.maximum(base, stop - length), stop, length)
    values = tf.convert_to_tensor(values)
    return tf.where(valid, tf.gather(values, index), tf.zeros([], values.dtype))


def _lower_bound(search_keys: tf.Tensor, low: tf.Tensor, high: tf.Tensor, target: tf.Tensor, steps: int) -> tf.Tensor:
    """First index in [low, high) whose key is >= target (high if none), for every sample at once: a
    binary search of ``steps`` rounds (enough for the longest block), each one gather per sample."""
    for _ in range(steps):
        active = low < high
        middle = (low + high) // 2
        below = tf.gather(search_keys, tf.minimum(middle, tf.size(search_keys, out_type=tf.int64) - 1)) < target
        low = tf.where(active & below, middle + 1, low)
        high = tf.where(active & ~below, middle, high)
    return low


def hard_search(tensors: StoreTensors, users, ends, target_categories, k: int, max_history: int):
    """The SIM paper's hard search, in the input pipeline: among each sample's most recent ``max_history``
    behaviours before ``ends``, the most recent ``k`` whose category equals the target's.

    Returns (rows [B, k] int64, mask [B, k] bool): store rows, oldest of the selection first and
    left-padded (row 0 under mask False), so any feature can be gathered with ``tf.gather(values, rows)``.
    Cost per sample: two binary searches in the user's category index and k gathers, flat in the history.
    """
    users = tf.cast(users, tf.int64)
    ends = tf.cast(ends, tf.int64)
    base = tf.gather(tensors.offsets, users)
    block_end = tf.gather(tensors.offsets, users + 1)
    keyed = tf.cast(target_categories, tf.int64) * tensors.stride
    first = _lower_bound(tensors.search_keys, base, block_end, keyed + tf.maximum(ends - max_history, 0),
                         tensors.search_steps)
    last = _lower_bound(tensors.search_keys, first, block_end, keyed + ends, tensors.search_steps)
    index, valid = _left_padded(tf.maximum(first, last - k), last, k)
    return tf.where(valid, tf.gather(tensors.rows, index), tf.zeros([], tf.int64)), valid


def negative_rows(users, ends, length: int, total: int) -> tf.Tensor:
    """[B, length] int64 store rows drawn as negatives for each sample's recent history (DIEN's auxiliary
    loss): a behaviour of any user, so its features belong together, and popularity-weighted as behaviours
    are. A hash of (user, position, slot), so a sample gets the same negatives in every pass, on every
    replica count and in any batch; the arithmetic stays below 2**62, so no int64 overflows."""
    prime = 2_147_483_647
    slot = tf.range(length, dtype=tf.int64)[None, :]
    x = (tf.cast(users, tf.int64)[:, None] % prime * 1_103_515_245 + tf.cast(ends, tf.int64)[:, None] * 12_345
         + slot * 2_654_435_761 % prime) % prime
    x = (x * 48_271 + 11) % prime
    x = (x * 69_621 + 7) % prime
    return x % max(1, total)


def check_samples(tensors: StoreTensors, users: tf.Tensor, ends: tf.Tensor) -> list:
    """Assertions that every sample names a user of the store and a position inside its history; the
    messages (read back by inputs.explain_data_error) name the first sample that does not."""
    users = tf.cast(users, tf.int64)
    ends = tf.cast(ends, tf.int64)
    known = (users >= 1) & (users <= tensors.num_users)
    stranger = tf.gather(users, tf.argmin(tf.cast(known, tf.int32)))
    check_users = tf.debugging.Assert(
        tf.reduce_all(known),
        ["a sample references user", stranger, f"but the behaviour store has users 1..{tensors.num_users} only - "
         "the samples and the store were not written together; rewrite them together"],
        name="check_store_users")
    with tf.control_dependencies([check_users]):
        safe = tf.where(known, users, tf.ones_like(users))
        available = tf.gather(tensors.offsets, safe + 1) - tf.gather(tensors.offsets, safe)
        good = (ends >= 0) & (ends <= available)
        first = tf.argmin(tf.cast(good, tf.int32))
        check_positions = tf.debugging.Assert(
            tf.reduce_all(good),
            ["a sample references user", tf.gather(users, first), "at history position", tf.gather(ends, first),
             "but the behaviour store holds", tf.gather(available, first), "behaviours for that user - the samples "
             "and the store were not written together; rewrite them together"],
            name="check_store_positions")
    return [check_users, check_positions]


def store_inputs(parsed: dict, tensors: StoreTensors, spec, gsu: str, max_long_history: int, top_k: int,
                 out_of_range: str, negative_history: bool = True) -> dict:
    """The model's input dict (sim_tf.data.inputs) for a batch of store-backed samples.

    * short history: the most recent S behaviours before each sample (S = the spec's history length);
    * long window: the ``max_long_history`` behaviours before those. ``soft`` hands the model the whole
      window (its search unit attends over it); ``hard`` hands it only the most recent ``top_k`` of the
      window whose category equals the target's, so the model never embeds the rest;
    * negative short history (when asked): behaviours of :func:`negative_rows`.
    """
    section = spec.store
    short = spec.history_length

    def ids(name):
        return checked_ids(tf.reshape(parsed[name], [-1]), name, spec.cardinality(name), out_of_range)

    users = tuple(ids(n) for n in spec.user_features)
    targets = tuple(ids(n) for n in spec.target_item_features)
    store_user = tf.reshape(parsed[section.user], [-1])
    ends = tf.reshape(parsed[section.position], [-1])
    with tf.control_dependencies(check_samples(tensors, store_user, ends)):
        store_user = tf.identity(tf.cast(store_user, tf.int64))
    ends = tf.cast(ends, tf.int64)
    base = tf.gather(tensors.offsets, store_user)
    recent_index, recent_valid = _left_padded(tf.maximum(base, base + ends - short), base + ends, short)
    long_end = tf.maximum(ends - short, 0)
    if gsu == "hard":
        category = targets[section.category_index]
        long_index, long_valid = hard_search(tensors, store_user, long_end, category, top_k, max_long_history)
    else:
        stop = base + long_end
        long_index, long_valid = _left_padded(tf.maximum(base, stop - max_long_history), stop, max_long_history)

    def gather(values, index, valid):
        return tf.where(valid, tf.gather(values, index), tf.zeros([], values.dtype))

    out = {
        keys.USER: users,
        keys.TARGET: targets,
        keys.LONG_HISTORY: tuple(gather(a, long_index, long_valid) for a in tensors.arrays),
        keys.SHORT_HISTORY: tuple(gather(a, recent_index, recent_valid) for a in tensors.arrays),
        keys.SHORT_NEG_HISTORY: (),
        keys.LONG_MASK: tf.cast(long_valid, tf.float32),
        keys.SHORT_MASK: tf.cast(recent_valid, tf.float32),
    }
    if negative_history:
        negatives = negative_rows(store_user, ends, short, tensors.total)
        out[keys.SHORT_NEG_HISTORY] = tuple(gather(a, negatives, recent_valid) for a in tensors.arrays)
    return out
