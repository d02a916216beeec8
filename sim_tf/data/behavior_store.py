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
target's (the SIM paper's hard search). Both are TensorFlow functions over a batch, for tf.data.

A worker holds the whole store in memory (Amazon Books' 22.5M reviews x 2 features x 4 bytes + offsets
+ timestamps: ~0.4 GB). Beyond one machine it shards by user: docs/architecture.md.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from sim_tf.data.inputs import DataError


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
    def load(cls, path: str) -> "BehaviorStore":
        with np.load(path) as data:
            features = {key.split(":", 1)[1]: data[key] for key in data.files if key.startswith("feature:")}
            store = cls(data["offsets"].astype(np.int64), features, data["timestamps"].astype(np.int64))
        store.validate(path)
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


def _ranges(offsets: tf.Tensor, users: tf.Tensor, ends: tf.Tensor, length: int):
    """Row ranges [start, stop) of each sample's most recent ``length`` behaviours before ``ends``."""
    base = tf.gather(offsets, users)
    stop = base + tf.cast(ends, tf.int64)
    start = tf.maximum(base, stop - length)
    return start, stop


def assemble(offsets: tf.Tensor, values: tf.Tensor, users: tf.Tensor, ends: tf.Tensor, length: int) -> tf.Tensor:
    """[B, length] int32: each sample's most recent ``length`` behaviours (of one feature) before its
    ``history_end``, oldest first, left-padded with 0 (the padded format's layout)."""
    start, stop = _ranges(offsets, users, ends, length)
    rows = tf.ragged.range(start, stop)
    picked = tf.gather(values, rows)  # ragged [B, <= length]
    # Left padding: pad the reversed rows on the right, then reverse back.
    return tf.reverse(tf.reverse(picked, axis=[1]).to_tensor(0, shape=[None, length]), axis=[1])


def hard_search(offsets: tf.Tensor, categories: tf.Tensor, users: tf.Tensor, ends: tf.Tensor,
                target_categories: tf.Tensor, k: int, max_history: int) -> tuple[tf.Tensor, tf.Tensor]:
    """The SIM paper's hard search, in the input pipeline: among each sample's most recent ``max_history``
    behaviours before ``history_end``, the most recent ``k`` whose category equals the target's.

    Returns (rows [B, k] int64, mask [B, k] float32): store rows, oldest of the selection first and
    left-padded (row 0 under mask 0), so any feature can be gathered with ``tf.gather(values, rows)``.
    """
    start, stop = _ranges(offsets, users, ends, max_history)
    rows = tf.ragged.range(start, stop)
    same = tf.equal(tf.gather(categories, rows), tf.cast(target_categories, categories.dtype)[:, None])
    kept = tf.ragged.boolean_mask(rows, same)
    position = tf.ragged.range(kept.row_lengths())  # 0 .. n - 1 within each row, oldest first
    last_k = tf.ragged.boolean_mask(kept, position >= (kept.row_lengths() - k)[:, None])
    dense = tf.reverse(tf.reverse(last_k, axis=[1]).to_tensor(-1, shape=[None, k]), axis=[1])
    mask = tf.cast(dense >= 0, tf.float32)
    return tf.maximum(dense, 0), mask
