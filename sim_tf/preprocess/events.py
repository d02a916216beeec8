"""An interaction log (user, item, item features, time, optional label) -> training data, on Dask.

Three passes, each a set of independent per-partition tasks, so memory is bounded by a partition and
the same code runs on a laptop (Dask's local cluster), a single process (the synchronous scheduler,
for tests) or an existing cluster (``--scheduler``):

1. **Partition by user.** The log's columns are read (parquet or CSV, any fsspec path or glob), checked
   (nulls, time parses) and shuffled by a hash of the raw user id into ``partitions`` parts, which are
   written as parquet into a work folder inside the output's staging folder. A part holds every event
   of its users; which part a user lands in depends only on its id and ``partitions``.
2. **Vocabularies.** Users with fewer than ``min_events`` events are dropped. Dense ids from 1 (0 is
   padding): items and every item feature's values in sorted order of their raw values; users part by
   part (sorted raw ids within a part, parts in order). An item's feature value is the largest raw value
   it is logged with (items are expected to have one; the log says how many do not). Popularity = how
   often an item is a positive event.
3. **Samples.** Per part, events sorted by (user, time, item, features, label); a sample's history is
   the user's positive events before it (the last ``history_length``, left-padded). Without a label
   column every event is positive and each training/test target is paired with a negative whose item
   is drawn by popularity; with one, every event is a sample with its own label. The last event of a
   user is its test sample (or, with ``test_split time:T``, every event at or after T). Negative
   histories: one popularity-drawn item per history position.

Every random draw is a hash of (seed, dense user id, the event's rank in the user's sequence, slot), so
the output is the same bytes whatever the engine, the number of workers or the input's chunking. Train
rows of a part come in an order seeded by (seed, part): without labels, (positive, negative twin) pairs
in random order; with labels, shuffled rows.

Outputs: the recipe's BYO parquet layout (``metadata.json``, ``train/part.N.parquet``,
``test/part.N.parquet``; columns label, uid, item, each feature, ``item_sequence``, ``{f}_sequence``,
``neg_item_sequence``, ``neg_{f}_sequence``), or a behaviour-store dataset (``fmt="store"``), with the
id mappings in ``mapping/`` (raw value -> dense id, per column).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import time
from typing import Callable

import numpy as np

from sim_tf.errors import UserError, brief
from sim_tf.preprocess.byo_parquet import write_row_groups

TIME_SPLIT_PREFIX = "time:"
_USER, _ITEM, _TIME, _LABEL, _PART = "user", "item", "time", "label", "_part"
_FEW_PARTITIONS = 32  # up to this many user parts, the partitioning shuffle is task-based (one stage)


@dataclasses.dataclass(frozen=True)
class EventsConfig:
    user_col: str = "user"
    item_col: str = "item"
    item_feature_cols: tuple[str, ...] = ()
    time_col: str = "time"
    label_col: str | None = None
    history_length: int = 100
    min_events: int = 3
    min_history: int = 1
    test_split: str = "last"  # "last" | "time:T" (T an integer or an ISO date/time)
    partitions: int = 0  # user parts; 0: as many as the input has chunks (files, row groups, 64 MB of CSV)
    seed: int = 0
    fmt: str = "parquet"  # "parquet" | "store"
    csv: bool | None = None  # None: by the input's extension

    def __post_init__(self):
        for name in ("history_length", "min_events"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.min_history < 0 or self.partitions < 0:
            raise UserError("--min_history and --partitions must be >= 0")
        if self.fmt not in ("parquet", "store"):
            raise UserError(f"--format must be parquet or store, got {self.fmt!r}")
        names = [self.user_col, self.item_col, *self.item_feature_cols, self.time_col]
        names += [self.label_col] if self.label_col else []
        if len(set(names)) != len(names) or not all(names):
            raise UserError(f"the column options name a column twice or name none: {names}")
        reserved = {"label", "uid", "item", "item_sequence", "neg_item_sequence"}
        clash = [f for f in self.item_feature_cols if f in reserved or f.endswith("_sequence")]
        if clash:
            raise UserError(f"--item_feature_cols {clash}: these names are taken by the output's own columns; "
                            f"rename the column(s) in the log")
        self.split_time()

    def split_time(self) -> int | None:
        """The time-split cut in the log's time unit, or None for the last-event split."""
        if self.test_split == "last":
            return None
        if not self.test_split.startswith(TIME_SPLIT_PREFIX):
            raise UserError(f"--test_split must be `last` or `time:T`, got {self.test_split!r}")
        value = self.test_split[len(TIME_SPLIT_PREFIX):]
        try:
            return int(value)
        except ValueError:
            pass
        import pandas as pd

        try:
            return int(pd.Timestamp(value, tz="UTC").value // 1_000_000_000)
        except (ValueError, TypeError):
            raise UserError(f"--test_split {self.test_split!r}: T must be an integer time or an ISO date/time") from None

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(self.item_feature_cols)


# --------------------------------------------------------------------------------------------------
# deterministic draws


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix_in_place(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array, overwriting it (one scratch array, not ten temporaries:
    a row group's negative histories are millions of draws); wrapping arithmetic is intended."""
    shifted = np.empty_like(x)
    with np.errstate(over="ignore"):
        for shift, factor in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
            np.right_shift(x, np.uint64(shift), out=shifted)
            x ^= shifted
            x *= np.uint64(factor)
        np.right_shift(x, np.uint64(31), out=shifted)
        x ^= shifted
    return x


def _mix(x) -> np.ndarray:
    """:func:`_mix_in_place` on a copy: a well-mixed uint64 per input."""
    return _mix_in_place(np.array(x, dtype=np.uint64))


def _row_keys(seed: int, users, ranks) -> np.ndarray:
    """The (seed, user, rank) part of :func:`draw_bits`: draw_bits(seed, u, r, s) ==
    _mix(_row_keys(seed, u, r) + (s + 1) * _GOLDEN), so a row's many slots share one key."""
    with np.errstate(over="ignore"):
        return _mix(np.uint64(seed) + _GOLDEN * np.asarray(users).astype(np.uint64)) \
            ^ (np.asarray(ranks).astype(np.uint64) * np.uint64(0xD6E8FEB86659FD93))


def draw_bits(seed: int, users: np.ndarray, ranks: np.ndarray, slots) -> np.ndarray:
    """uint64 random bits, one per (user, rank, slot) (arrays of one shape, or broadcastable): a function
    of (seed, user, rank, slot) only."""
    with np.errstate(over="ignore"):
        return _mix(_row_keys(seed, users, ranks) + (np.asarray(slots).astype(np.uint64) + np.uint64(1)) * _GOLDEN)


class Popularity:
    """Walker's alias table over items 1..I weighted by ``counts``: a draw is one bucket (the high 32 bits
    of a random word) and one coin (the low 32 bits) against the bucket's threshold, O(1) whatever the
    number of items (a binary search over the cumulative counts costs ~18 cache misses at 200k items)."""

    def __init__(self, counts: np.ndarray):
        counts = np.asarray(counts, np.float64)
        if counts.sum() <= 0:
            counts = np.ones_like(counts)
        n = counts.size
        scaled = counts * n / counts.sum()
        threshold = np.ones(n)
        alias = np.arange(n, dtype=np.int64)
        small = [int(i) for i in np.flatnonzero(scaled < 1.0)]
        large = [int(i) for i in np.flatnonzero(scaled >= 1.0)]
        scaled = scaled.tolist()
        while small and large:  # Vose's construction, exact up to float rounding
            s_i, l_i = small.pop(), large[-1]
            threshold[s_i], alias[s_i] = scaled[s_i], l_i
            scaled[l_i] -= 1.0 - scaled[s_i]
            if scaled[l_i] < 1.0:
                small.append(large.pop())
        # Coins compare 32-bit integers: bucket i keeps itself when coin < threshold[i] * 2**32 (a
        # threshold of 2**32, "always", is stored as such, so the table is int64).
        self.threshold = np.minimum(np.round(threshold * 2.0**32), 2.0**32).astype(np.int64)
        self.alias = (alias + 1).astype(np.int32)  # as 1-based ids
        self.size = n

    def draw(self, bits: np.ndarray) -> np.ndarray:
        """Dense item ids (1-based, int32), one per uint64 of ``bits``."""
        bucket = (((bits >> np.uint64(32)) * np.uint64(self.size)) >> np.uint64(32)).astype(np.int64)
        keep = (bits & np.uint64(0xFFFFFFFF)).astype(np.int64) < self.threshold[bucket]
        return np.where(keep, (bucket + 1).astype(np.int32), self.alias[bucket])


# --------------------------------------------------------------------------------------------------
# pass 1: read, check, partition by user


def _is_csv(path: str, csv: bool | None) -> bool:
    if csv is not None:
        return csv
    base = path.rstrip("/").lower()
    return base.endswith((".csv", ".csv.gz", ".tsv", ".txt"))


def _log_source(path: str, csv: bool | None) -> tuple[str | list[str], bool]:
    """(what Dask reads, whether it is CSV). A folder (local or any fsspec URL) is read as its data files
    (names not starting with "." or "_"): parquet as the folder, CSV as the sorted list of the files, which
    dask's read_csv needs; ``csv`` None (auto) picks CSV when every data file is named as one."""
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(path)
        folder = fs.isdir(root)
    except (OSError, ValueError, ImportError):
        folder = False  # read_log names the problem
    if not folder:
        return path, _is_csv(path, csv)
    # One listing with the entries' types (on an object store, a request per entry otherwise).
    files = sorted(e["name"] for e in fs.ls(root, detail=True)
                   if e["type"] == "file" and not os.path.basename(e["name"].rstrip("/")).startswith((".", "_")))
    if csv is None:
        csv = bool(files) and all(_is_csv(n, None) for n in files)
    if not csv:
        return path, False
    if not files:
        raise UserError(f"--input {path!r} is a folder with no data files in it")
    from fsspec.implementations.local import LocalFileSystem

    return [n if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(n) for n in files], True


def read_log(path: str, config: EventsConfig):
    """The log as a Dask frame with the canonical columns user, item, features, time[, label]."""
    import dask.dataframe as dd

    wanted = {config.user_col: _USER, config.item_col: _ITEM, config.time_col: _TIME,
              **{f: f for f in config.features}}
    if config.label_col:
        wanted[config.label_col] = _LABEL
    source, csv = _log_source(path, config.csv)
    try:
        if csv:
            # Dask infers one compression for all paths and cannot split a gzip file: plain and gzipped
            # files are read apart, the plain ones in 64 MB blocks.
            dtype = {c: "string" for c in (config.user_col, config.item_col, *config.features)}
            groups: dict[bool, list[str]] = {}
            for name in [source] if isinstance(source, str) else source:
                groups.setdefault(name.lower().endswith(".gz"), []).append(name)
            frames = [dd.read_csv(names, blocksize=None if gz else "64MB", compression="gzip" if gz else None,
                                  dtype=dtype) for gz, names in sorted(groups.items())]
            frame = frames[0] if len(frames) == 1 else dd.concat(frames)
        else:
            frame = dd.read_parquet(source)
    except (FileNotFoundError, OSError, ValueError) as e:
        hint = " (--input_format csv reads CSV files whatever their names)" if config.csv is None and not csv else ""
        raise UserError(f"--input {path!r} cannot be read as {'CSV' if csv else 'parquet'}: "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}{hint}") from None
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise UserError(f"--input {path!r} has no column(s) {missing} (it has {list(frame.columns)}); set "
                        f"--user_col, --item_col, --item_feature_cols, --time_col or --label_col to its names")
    frame = frame[list(wanted)].rename(columns=wanted)
    return frame


def _shown(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _time_seconds(series, where: str):
    """Integer times as they are; strings and datetimes as Unix seconds. Anything else is an error."""
    import pandas as pd

    if pd.api.types.is_integer_dtype(series.dtype):
        return series.astype("int64")
    if pd.api.types.is_float_dtype(series.dtype):
        whole = series.dropna()
        if not (whole == np.floor(whole)).all():
            bad = whole[whole != np.floor(whole)].iloc[0]
            raise UserError(f"{where}: time {_shown(bad)} is not an integer (give integer times or date/times)")
        return series.astype("int64")
    parsed = pd.to_datetime(series, utc=True, errors="coerce", format="mixed") \
        if not pd.api.types.is_datetime64_any_dtype(series.dtype) else series
    if parsed.isna().any():
        bad = series[parsed.isna()].iloc[0]
        raise UserError(f"{where}: time {_shown(bad)} is neither an integer nor a date/time")
    if getattr(parsed.dt, "tz", None) is None:
        parsed = parsed.dt.tz_localize("UTC")
    return (parsed.astype("datetime64[ns, UTC]").astype("int64") // 1_000_000_000).astype("int64")


def _user_hash(users) -> np.ndarray:
    import pandas as pd

    return pd.util.hash_pandas_object(users.astype("string"), index=False).to_numpy(np.uint64)


def clean_partition(frame, partitions: int, label: bool, source: str):
    """Checks a chunk of the log (nulls, times, labels), normalises types and adds the user's part."""
    import pandas as pd

    if len(frame) == 0:
        return frame.assign(**{_PART: pd.Series([], dtype="int64")})
    nulls = [c for c in frame.columns if frame[c].isna().any()]
    if nulls:
        column = nulls[0]
        raise UserError(f"{source}: column {column!r} has {int(frame[column].isna().sum()):,} null value(s) in one "
                        f"chunk (first at row {int(np.flatnonzero(frame[column].isna().to_numpy())[0]):,} of it); "
                        f"drop or fill them before preprocessing")
    out = frame.copy()
    out[_TIME] = _time_seconds(frame[_TIME], source)
    for c in frame.columns:
        if c not in (_TIME, _LABEL):
            out[c] = frame[c].astype("string")
    if label:
        values = pd.to_numeric(frame[_LABEL], errors="coerce")
        bad = values.isna() | ~values.isin([0, 1])
        if bad.any():
            raise UserError(f"{source}: label {_shown(frame[_LABEL][bad].iloc[0])} is not 0 or 1")
        out[_LABEL] = values.astype("int8")
    out[_PART] = (_user_hash(out[_USER]) % np.uint64(partitions)).astype(np.int64)
    return out


def _meta(config: EventsConfig):
    import pandas as pd

    columns = {_USER: pd.Series([], dtype="string"), _ITEM: pd.Series([], dtype="string"),
               _TIME: pd.Series([], dtype="int64"), **{f: pd.Series([], dtype="string") for f in config.features}}
    if config.label_col:
        columns[_LABEL] = pd.Series([], dtype="int8")
    columns[_PART] = pd.Series([], dtype="int64")
    return pd.DataFrame(columns)


def write_user_parts(frame, folder: str) -> int:
    """Writes each part (a value of _part) held by one shuffled partition; returns rows written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = 0
    for part, group in frame.groupby(_PART, sort=True):
        table = pa.Table.from_pandas(group.drop(columns=[_PART]), preserve_index=False)
        pq.write_table(table, os.path.join(folder, f"part.{int(part)}.parquet"))
        rows += len(group)
    return rows


# --------------------------------------------------------------------------------------------------
# pass 2: vocabularies


def _kept(frame, min_events: int):
    counts = frame.groupby(_USER, sort=False)[_USER].transform("size")
    return frame[counts.to_numpy() >= min_events]


def part_users(frame) -> np.ndarray:
    """The sorted raw ids of a part's (kept) users: user u of part p gets dense id offsets[p] + rank + 1."""
    return np.sort(frame[_USER].unique().to_numpy(dtype=object)) if len(frame) else np.array([], dtype=object)


def part_stats(path: str, config: EventsConfig):
    """(kept users, item statistics) of one user part: per item its events, positives and each feature's
    smallest and largest raw value."""
    import pandas as pd

    frame = _kept(pd.read_parquet(path), config.min_events)
    positive = frame if not config.label_col else frame[frame[_LABEL] == 1]
    aggregations = {"events": (_ITEM, "size")}
    for f in config.features:
        aggregations[f"{f}_min"] = (f, "min")
        aggregations[f"{f}_max"] = (f, "max")
    items = frame.groupby(_ITEM, sort=False).agg(**aggregations)
    items["positives"] = positive.groupby(_ITEM, sort=False).size().reindex(items.index, fill_value=0)
    return int(frame[_USER].nunique()), items


def combine_items(frames: list, features: tuple):
    """Item statistics of several parts merged (sums of counts, min of minima, max of maxima): a node of
    the reduction tree, so the driver receives one row per item whatever the number of parts."""
    import pandas as pd

    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame()
    if len(frames) == 1:
        return frames[0]
    grouped = pd.concat(frames).groupby(level=0, sort=False)
    merged = grouped[["events", "positives"]].sum()
    for f in features:
        merged[f"{f}_min"] = grouped[f"{f}_min"].min()
        merged[f"{f}_max"] = grouped[f"{f}_max"].max()
    return merged


@dataclasses.dataclass
class Vocabulary:
    items: np.ndarray  # sorted raw item ids; dense id = index + 1
    popularity: np.ndarray  # [I] int64 positive events per dense item
    feature_values: dict  # feature -> sorted raw values
    item_features: dict  # feature -> [I + 1] int32 dense value of each dense item (0 for padding)
    user_offsets: np.ndarray  # [parts + 1]: part p's users get dense ids offsets[p] + 1 ... (part_users order)
    inconsistent_items: int

    @property
    def num_users(self) -> int:
        return int(self.user_offsets[-1])

    def dense(self, name: str, raw: np.ndarray) -> np.ndarray:
        """Dense ids (1-based) of raw item or feature values, through a hash index built once per process."""
        index = self.__dict__.setdefault("_indexes", {}).get(name)
        if index is None:
            import pandas as pd

            index = pd.Index(self.items if name == _ITEM else self.feature_values[name])
            self._indexes[name] = index
        return index.get_indexer(raw).astype(np.int64) + 1

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_indexes"}

    @functools.cached_property
    def sampler(self) -> Popularity:
        """Built once where it is first used (the driver builds it before the vocabulary is sent)."""
        return Popularity(self.popularity)


def make_vocabulary(user_counts: list, table, config: EventsConfig) -> Vocabulary:
    """Dense ids from the merged item statistics (combine_items) and the parts' kept-user counts."""
    import pandas as pd

    if not len(table):
        raise UserError(f"no user has {config.min_events} or more events; lower --min_events")
    table = table.loc[np.sort(table.index.to_numpy(dtype=object))]
    raw_items = table.index.to_numpy(dtype=object)
    feature_values, item_features = {}, {}
    inconsistent = np.zeros(len(table), bool)
    for f in config.features:
        values = np.sort(pd.unique(table[f"{f}_max"].to_numpy(dtype=object)))
        feature_values[f] = values
        dense = np.zeros(len(table) + 1, np.int32)
        dense[1:] = np.searchsorted(values, table[f"{f}_max"].to_numpy(dtype=object)) + 1
        item_features[f] = dense
        inconsistent |= (table[f"{f}_min"] != table[f"{f}_max"]).to_numpy()
    return Vocabulary(raw_items, table["positives"].to_numpy(np.int64), feature_values, item_features,
                      np.concatenate([[0], np.cumsum(np.asarray(user_counts, np.int64))]), int(inconsistent.sum()))


# --------------------------------------------------------------------------------------------------
# pass 3: samples


def sequences(path: str, part: int, output: str, vocab: Vocabulary, config: EventsConfig):
    """One part's kept events as dense arrays sorted by (user, time, item, features, label); writes the
    part's user mapping (mapping/user/part.N.parquet)."""
    import pandas as pd

    frame = _kept(pd.read_parquet(path), config.min_events)
    raw_users = part_users(frame)
    write_mapping(os.path.join(output, "mapping", config.user_col, f"part.{part}.parquet"), raw_users,
                  int(vocab.user_offsets[part]))
    user = pd.Index(raw_users).get_indexer(frame[_USER]).astype(np.int64) + 1 + vocab.user_offsets[part]
    item = vocab.dense(_ITEM, frame[_ITEM])
    label = frame[_LABEL].to_numpy(np.int64) if config.label_col else np.ones(len(frame), np.int64)
    times = frame[_TIME].to_numpy(np.int64)
    logged = [vocab.dense(f, frame[f]) for f in config.features]
    order = np.lexsort((label, *reversed(logged), item, times, user))
    return user[order], times[order], item[order], label[order]


def build_samples(user, times, item, label, config: EventsConfig) -> dict:
    """Index form of one part's samples: per sample (user, rank, target item, label, test?, history end),
    with histories as positions in the part's positive-event array."""
    n = user.size
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]]) if n else np.array([], np.int64)
    lengths = np.diff(np.r_[starts, n])
    first = np.repeat(starts, lengths)
    rank = np.arange(n) - first  # the event's place in its user's sequence
    positive = label == 1
    before = np.cumsum(positive) - positive  # positives before each event, over the part
    history_count = before - np.repeat(before[starts], lengths) if n else before
    last = np.r_[starts[1:] - 1, n - 1] if n else np.array([], np.int64)
    cut = config.split_time()
    if cut is None:
        is_test = np.zeros(n, bool)
        is_test[last] = True
    else:
        is_test = times >= cut
    # Without labels a user's events are all positives and the last one is held out even from training.
    eligible = history_count >= config.min_history
    return {"user": user, "rank": rank, "item": item, "label": label, "test": is_test, "eligible": eligible,
            "end": before, "user_first_positive": np.repeat(before[starts], lengths) if n else before,
            # L zeros, then the positives: row j of its length-L sliding windows is the L positives before j.
            "padded_positive_items": np.concatenate([np.zeros(config.history_length, np.int32),
                                                     item[positive].astype(np.int32)])}


class Buffers:
    """Arrays reused from one row group to the next. A row group's columns are hundreds of MB; fresh
    allocations that size are new pages every time, and page faults then cost as much as filling them
    (Dask's workers set MALLOC_TRIM_THRESHOLD_, which makes glibc hand every freed block back at once)."""

    def __init__(self):
        self._arrays = {}

    def get(self, name: str, shape: tuple, dtype) -> np.ndarray:
        size = int(np.prod(shape))
        array = self._arrays.get(name)
        if array is None or array.size < size or array.dtype != dtype:
            array = self._arrays[name] = np.empty(max(size, 1), dtype)
        return array[:size].reshape(shape)


def history_columns(samples: dict, rows: np.ndarray, vocab: Vocabulary, config: EventsConfig,
                    popularity: Popularity, buffers: Buffers) -> dict:
    """The [len(rows), L] history columns of samples ``rows`` (item_sequence, {f}_sequence,
    neg_item_sequence, neg_{f}_sequence), left-padded with 0, in ``buffers``.

    A history is the window of the part's positive events that ends just before the sample, cut at the
    user's first positive: a row of a sliding-window view over the padded positives, then masked. Negative
    histories get one popularity draw per real position, draw_bits(seed, user, rank, slot + 1) at slot
    ``slot``, computed only at those positions."""
    length = config.history_length
    shape = (rows.size, length)
    end, first = samples["end"][rows], samples["user_first_positive"][rows]
    real = np.minimum(end - first, length)  # real positions, at the right end of the window
    windows = np.lib.stride_tricks.sliding_window_view(samples["padded_positive_items"], length)
    items = windows[end]  # (np.take from a strided view is ~20x slower than this copy)
    # padded[end : end + L] is the L positives before index ``end``; zero the ones of earlier users.
    pad = np.greater_equal(np.arange(length)[None, :], (length - real)[:, None], out=buffers.get("pad", shape, bool))
    items *= pad
    total = int(real.sum())
    # Flat index of every real position: row r holds flat r * L + L - real[r] ... (r + 1) * L - 1.
    offsets = np.cumsum(real) - real
    flat = np.arange(total, dtype=np.int64) + np.repeat((np.arange(1, rows.size + 1) * length - real) - offsets, real)
    slot = flat % length
    with np.errstate(over="ignore"):
        bits = np.repeat(_row_keys(config.seed, samples["user"][rows], samples["rank"][rows]), real)
        bits += (slot.astype(np.uint64) + np.uint64(2)) * _GOLDEN  # draw_bits' slot + 1 for history slot ``slot``
    negatives = buffers.get("neg_item_sequence", shape, np.int32)
    negatives.fill(0)
    negatives.reshape(-1)[flat] = popularity.draw(_mix_in_place(bits))
    columns = {"item_sequence": items}
    for f in config.features:
        columns[f"{f}_sequence"] = np.take(vocab.item_features[f], items, mode="clip",
                                           out=buffers.get(f"{f}_sequence", shape, np.int32))
    columns["neg_item_sequence"] = negatives
    for f in config.features:
        columns[f"neg_{f}_sequence"] = np.take(vocab.item_features[f], negatives, mode="clip",
                                               out=buffers.get(f"neg_{f}_sequence", shape, np.int32))
    return columns


def _in_split(samples: dict, split: str) -> np.ndarray:
    """Which of a part's events are samples of ``split`` (they have enough history, and are or are not test)."""
    return samples["eligible"] & (samples["test"] if split == "test" else ~samples["test"])


def sample_groups(samples: dict, split: str, config: EventsConfig, part: int, rows_per_group: int):
    """A split's output rows, a row group at a time: (source sample rows, per output row its source's index
    there, negative-twin flags).

    Without labels each positive is followed by its negative twin, which shares the positive's user and
    histories, so a group draws the histories of rows_per_group / 2 positives once and writes each twice.
    Train rows are pairs in a seeded random order; the twin stays next to its positive, where snappy finds
    its histories again: a third less parquet to write. (The trainer's shuffle buffer separates them; a
    reader that does not shuffle gets each pair in one batch.) With labels, train groups shuffle their
    own rows (seed, part, group). Test rows stay in order."""
    chosen = _in_split(samples, split)
    paired = not config.label_col
    rows = np.flatnonzero(chosen & (samples["label"] == 1) if paired else chosen)
    if split == "train":
        rows = rows[np.random.default_rng([config.seed, part]).permutation(rows.size)]
    step = max(1, rows_per_group // 2) if paired else rows_per_group
    for group, start in enumerate(range(0, rows.size, step)):
        source = rows[start:start + step]
        if paired:
            index, negative = np.repeat(np.arange(source.size), 2), np.tile([False, True], source.size)
        else:
            index, negative = np.arange(source.size), np.zeros(source.size, bool)
        if split == "train" and not paired:
            order = np.random.default_rng([config.seed, part, group]).permutation(index.size)
            index, negative = index[order], negative[order]
        yield source, index, negative


def group_table(samples: dict, source: np.ndarray, index: np.ndarray, negative: np.ndarray, vocab: Vocabulary,
                config: EventsConfig, popularity: Popularity, buffers: Buffers) -> dict:
    """The output columns of one row group (see :func:`sample_groups`), valid until ``buffers`` is used
    again: a twin's target is a popularity draw at slot 0 and its label is 0."""
    rows = source[index]
    target = samples["item"][rows]
    if negative.any():
        twin = np.flatnonzero(negative)
        twin_rows = rows[twin]
        bits = draw_bits(config.seed, samples["user"][twin_rows], samples["rank"][twin_rows], 0)
        target[twin] = popularity.draw(bits)
    columns = {"label": np.where(negative, 0, samples["label"][rows]), "uid": samples["user"][rows], "item": target}
    for f in config.features:
        columns[f] = vocab.item_features[f][target]
    histories = history_columns(samples, source, vocab, config, popularity, buffers)
    shared = index.size != source.size or (index != np.arange(index.size)).any()
    for name, values in histories.items():
        # mode="clip": the indices are in range, and np.take buffers ``out`` in its default mode.
        out = buffers.get(f"out:{name}", (index.size, values.shape[1]), np.int32)
        columns[name] = np.take(values, index, axis=0, mode="clip", out=out) if shared else values
    return columns


def chosen_rows(samples: dict, split: str, config: EventsConfig, part: int) -> tuple[np.ndarray, np.ndarray]:
    """(sample rows, negative-twin flags) of a split for the behaviour store, train rows in a seeded random
    order."""
    chosen = _in_split(samples, split)
    if config.label_col:
        rows = np.flatnonzero(chosen)
        negative = np.zeros(rows.size, bool)
    else:
        rows = np.repeat(np.flatnonzero(chosen & (samples["label"] == 1)), 2)  # each positive, then its twin
        negative = np.tile([False, True], rows.size // 2)
    if split == "train":
        order = np.random.default_rng([config.seed, part]).permutation(rows.size)
        rows, negative = rows[order], negative[order]
    return rows, negative


def write_samples(path: str, part: int, output: str, vocab: Vocabulary, config: EventsConfig,
                  rows_per_group: int = 65536) -> dict:
    """Pass 3 for one part (BYO parquet): its train and test files, a row group at a time (memory is one
    group's histories); returns row counts."""
    samples = build_samples(*sequences(path, part, output, vocab, config), config)
    popularity, buffers = vocab.sampler, Buffers()
    counts = {"train": 0, "test": 0}
    for split in ("train", "test"):
        # Each group is written before the next one refills the buffers its arrays view.
        groups = (group_table(samples, *group, vocab, config, popularity, buffers)
                  for group in sample_groups(samples, split, config, part, rows_per_group))
        counts[split] = write_row_groups(os.path.join(output, split, f"part.{part}.parquet"), groups)
    return counts


def store_arrays(path: str, part: int, output: str, vocab: Vocabulary, config: EventsConfig) -> dict:
    """Pass 3 for one part (behaviour store): the positive events per user and the samples by reference
    (user, position in the user's positive events, target, label)."""
    user, times, item, label = sequences(path, part, output, vocab, config)
    samples = build_samples(user, times, item, label, config)
    positive = label == 1
    out = {"user": user[positive], "item": item[positive], "time": times[positive], "splits": {}}
    popularity = vocab.sampler
    for split in ("train", "test"):
        rows, negative = chosen_rows(samples, split, config, part)
        bits = draw_bits(config.seed, samples["user"][rows], samples["rank"][rows], 0)
        target = np.where(negative, popularity.draw(bits), samples["item"][rows])
        out["splits"][split] = (samples["user"][rows], samples["end"][rows] - samples["user_first_positive"][rows],
                                target, np.where(negative, 0, samples["label"][rows]))
    return out


# --------------------------------------------------------------------------------------------------
# the engine and the driver


class Engine:
    """Where the tasks run: ``workers == 0`` in this process (Dask's synchronous scheduler); otherwise a
    Dask cluster: ``scheduler`` (an address) or a local one of ``workers`` processes with
    ``memory_limit`` each, bound to 127.0.0.1 (nothing listens on other interfaces)."""

    def __init__(self, scheduler: str | None = None, workers: int = 0, memory_limit: str = "auto",
                 log: Callable[[str], None] = print, timeout_s: float = 10.0):
        self.client = None
        self.cluster = None
        if scheduler or workers > 0:
            _quiet_dask()
        if scheduler:
            from distributed import Client

            try:
                self.client = Client(scheduler, timeout=timeout_s)
            except (OSError, TimeoutError, ValueError) as e:
                raise UserError(f"--scheduler {scheduler!r}: no Dask scheduler answered there within {timeout_s:.0f}s "
                                f"({type(e).__name__}); check the address (tcp://HOST:8786) and that the scheduler "
                                f"is running") from None
            log(f"running on the Dask cluster at {scheduler} (dashboard: {self.client.dashboard_link})")
        elif workers > 0:
            import dask
            from distributed import Client, LocalCluster

            # Dask starts workers with MALLOC_TRIM_THRESHOLD_=64 KiB, which also fixes glibc's mmap
            # threshold at 128 KiB: every array of a row group is then fresh pages, and faulting them in
            # costs ~10% of the samples pass. Arrays up to 32 MiB come from the heap here, and up to
            # 128 MiB of it stays with the worker between groups.
            environ = {**dask.config.get("distributed.nanny.pre-spawn-environ", {}),
                       "MALLOC_TRIM_THRESHOLD_": 128 * 2**20, "MALLOC_MMAP_THRESHOLD_": 32 * 2**20}
            with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
                self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                            memory_limit=memory_limit, host="127.0.0.1",
                                            dashboard_address="127.0.0.1:0", silence_logs=40)
            self.client = Client(self.cluster)
            log(f"running on a local Dask cluster: {workers} worker process(es), memory limit "
                f"{_limit_text(self.cluster)} each (dashboard: {self.client.dashboard_link})")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def run(self, tasks: list, label: str, unit: str = "parts") -> list:
        """Computes delayed ``tasks``; results in task order, with a progress line as they finish."""
        from sim_tf.progress import Progress

        progress = Progress(label, unit=unit)
        if self.client is None:
            import dask
            from dask.callbacks import Callback

            wanted = {t.key for t in tasks}
            finished = []

            class Count(Callback):
                def _posttask(self, key, result, dsk, state, worker_id):
                    if key in wanted:
                        finished.append(key)
                        progress.update(len(finished), len(finished) / len(wanted))

            # One compute for all tasks: they share the upstream graph (the shuffle), computed once.
            with Count(), _named_failures(label):
                return list(dask.compute(*tasks, scheduler="synchronous"))
        from distributed import as_completed

        futures = self.client.compute(tasks)
        index = {f.key: i for i, f in enumerate(futures)}
        results = [None] * len(futures)
        done = 0
        with _named_failures(label):
            for future in as_completed(futures):
                results[index[future.key]] = future.result()
                done += 1
                progress.update(done, done / max(1, len(futures)))
        return results


def _quiet_dask() -> None:
    """Dask's own INFO/WARNING lines (workers starting and closing, shuffles finishing) are not the user's
    business; errors still show, and the progress lines say what is happening. Importing distributed sets
    its loggers' levels, so this comes after."""
    import distributed  # noqa: F401

    for name in list(logging.root.manager.loggerDict):
        if name == "distributed" or name.startswith("distributed."):
            logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def _named_failures(step: str):
    """A task's failure as one message naming the step (a UserError passes as it is; --debug re-raises)."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:  # a task's own exception, re-raised here by Dask
        if os.environ.get("SIM_TF_DEBUG"):
            raise
        raise UserError(f"preprocessing failed while {step}: {type(e).__name__}: {brief(e)} "
                        f"(--debug shows the traceback)") from None


def _limit_text(cluster) -> str:
    limits = [w.memory_manager.memory_limit for w in cluster.workers.values()
              if getattr(w, "memory_manager", None) is not None]
    return f"{limits[0] / 2**30:.1f} GiB" if limits and limits[0] else "none"


def preprocess_events(path: str, output: str, config: EventsConfig, engine: Engine,
                      log: Callable[[str], None] = print) -> dict:
    """Runs the three passes into ``output`` (a staging folder the caller renames when this returns)."""
    import dask

    started = time.perf_counter()
    frame = read_log(path, config)
    partitions = config.partitions or max(1, frame.npartitions)
    work = os.path.join(output, ".work")
    os.makedirs(work, exist_ok=True)
    meta = _meta(config)
    cleaned = frame.map_partitions(clean_partition, partitions, bool(config.label_col), f"--input {path!r}", meta=meta)
    # Dask's task-based shuffle starts faster than its peer-to-peer one (p2p, its default on a cluster),
    # which is built for many partitions; with few, tasks finish the 5M-event pass ~0.8 s sooner.
    method = "tasks" if partitions <= _FEW_PARTITIONS else None
    shuffled = cleaned.shuffle(on=_PART, npartitions=partitions, shuffle_method=method)
    tasks = [dask.delayed(write_user_parts)(chunk, work) for chunk in shuffled.to_delayed()]
    events = sum(engine.run(tasks, "partitioning by user", unit="partitions"))
    if events == 0:
        raise UserError(f"--input {path!r} holds no events")
    elapsed = time.perf_counter() - started
    log(f"read and partitioned {events:,} events in {elapsed:.1f}s ({events / max(elapsed, 1e-9):,.0f}/s) "
        f"into {partitions} part(s)")

    parts = [p for p in range(partitions) if os.path.exists(os.path.join(work, f"part.{p}.parquet"))]
    part_path = {p: os.path.join(work, f"part.{p}.parquet") for p in parts}
    shuffled_bytes = sum(os.path.getsize(part_path[p]) for p in parts)
    log(f"user parts: {shuffled_bytes / 2**20:,.1f} MiB ({shuffled_bytes / events:.1f} bytes/event), the largest "
        f"{max(os.path.getsize(part_path[p]) for p in parts) / 2**20:,.1f} MiB")
    step = time.perf_counter()
    stats = [dask.delayed(part_stats, nout=2)(part_path[p], config) for p in parts]
    level = [s[1] for s in stats]
    while len(level) > 1:  # a tree of merges, 8 at a time, so the driver gets one row per item
        level = [dask.delayed(combine_items)(level[i:i + 8], config.features) for i in range(0, len(level), 8)]
    results = engine.run([level[0], *(s[0] for s in stats)], "vocabularies")
    by_part = dict(zip(parts, results[1:]))
    vocab = make_vocabulary([by_part.get(p, 0) for p in range(partitions)], results[0], config)
    log(f"{vocab.num_users:,} users with >= {config.min_events} events, {vocab.items.size:,} items"
        + "".join(f", {vocab.feature_values[f].size:,} {f} values" for f in config.features)
        + (f"; {vocab.inconsistent_items:,} item(s) logged with more than one feature value kept the largest"
           if vocab.inconsistent_items else "") + f" ({time.perf_counter() - step:.1f}s)")
    write_mappings(output, vocab, config)
    step = time.perf_counter()

    vocab.sampler  # noqa: B018 - the alias table travels with the vocabulary
    if engine.client is not None:
        [vocab_ref] = engine.client.scatter([vocab], broadcast=True)
    else:
        vocab_ref = vocab
    if config.fmt == "parquet":
        for split in ("train", "test"):
            os.makedirs(os.path.join(output, split), exist_ok=True)
        results = engine.run([dask.delayed(write_samples)(part_path[p], p, output, vocab_ref, config) for p in parts],
                             "writing samples")
        counts = {k: sum(r[k] for r in results) for k in ("train", "test")}
        if counts["train"] == 0:
            raise _no_training_samples()
        metadata = {"cardinalities": [{"name": "uid", "value": vocab.num_users},
                                      {"name": "item", "value": int(vocab.items.size)},
                                      *({"name": f, "value": int(vocab.feature_values[f].size)} for f in config.features)],
                    "source": {"input": path, "user_col": config.user_col, "item_col": config.item_col,
                               "item_feature_cols": list(config.features), "time_col": config.time_col,
                               "label_col": config.label_col, "history_length": config.history_length,
                               "min_events": config.min_events, "min_history": config.min_history,
                               "test_split": config.test_split, "seed": config.seed}}
        with open(os.path.join(output, "metadata.json"), "w") as f:
            json.dump(metadata, f, indent=2)
    else:
        results = engine.run([dask.delayed(store_arrays)(part_path[p], p, output, vocab_ref, config) for p in parts],
                             "building histories")
        counts = write_store(output, results, vocab, config, log)
    log(f"wrote {counts['train']:,} train and {counts['test']:,} test samples in {time.perf_counter() - step:.1f}s")
    import shutil

    shutil.rmtree(work)
    counts.update(events=events, users=vocab.num_users, items=int(vocab.items.size),
                  seconds=time.perf_counter() - started)
    return counts


def _no_training_samples() -> UserError:
    return UserError("the kept users have no training samples; lower --min_history or --min_events, or move the "
                     "--test_split time")


def write_mapping(path: str, raw: np.ndarray, first: int = 0) -> None:
    """(raw value as a string, dense id) for ``raw`` in order, ids from ``first`` + 1."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.table({"raw": pa.array([str(v) for v in raw], pa.string()),
                             "id": pa.array(np.arange(first + 1, first + len(raw) + 1, dtype=np.int64))}), path)


def write_mappings(output: str, vocab: Vocabulary, config: EventsConfig) -> None:
    """mapping/{item,FEATURE}.parquet: (raw value, dense id), so predictions join back to the log's ids;
    mapping/USER/ holds the users' mapping, a part per user part (written by the parts' tasks)."""
    write_mapping(os.path.join(output, "mapping", f"{config.item_col}.parquet"), vocab.items)
    for f in config.features:
        write_mapping(os.path.join(output, "mapping", f"{f}.parquet"), vocab.feature_values[f])


def write_store(output: str, results: list, vocab: Vocabulary, config: EventsConfig, log) -> dict:
    """The behaviour-store dataset: every positive event once (item, features, time) in user order."""
    from sim_tf.data import tfrecord_writer as tw
    from sim_tf.data.behavior_store import BehaviorStore

    user = np.concatenate([r["user"] for r in results])
    order = np.argsort(user, kind="stable")  # parts hold users by hash; each part is already in time order
    user, item, times = user[order], np.concatenate([r["item"] for r in results])[order], \
        np.concatenate([r["time"] for r in results])[order]
    counts = np.bincount(user, minlength=vocab.num_users + 1)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    arrays = {tw.item_base(0): item.astype(np.int32)}
    for i, f in enumerate(config.features, start=1):
        arrays[tw.item_base(i)] = vocab.item_features[f][item].astype(np.int32)
    if not config.features:  # the store's hard search needs a category: one for every item
        arrays[tw.item_base(1)] = np.ones(item.size, np.int32)
    store = BehaviorStore(offsets, arrays, times.astype(np.int64))
    splits = {}
    for name in ("train", "test"):
        parts = [r["splits"][name] for r in results if r["splits"][name][0].size]
        if not parts:
            if name == "train":
                raise _no_training_samples()
            parts = [tuple(np.array([], np.int64) for _ in range(4))]
        s_user, position, target, label = (np.concatenate([p[k] for p in parts]) for k in range(4))
        columns = {tw.LABEL: label, tw.user_feature(0): s_user, tw.item_feature(0, tw.TARGET): target,
                   tw.POSITION: position}
        for i, f in enumerate(config.features, start=1):
            columns[tw.item_feature(i, tw.TARGET)] = vocab.item_features[f][target]
        if not config.features:
            columns[tw.item_feature(1, tw.TARGET)] = np.ones(target.size, np.int64)
        splits[name] = columns
    cardinalities = [int(vocab.items.size), *(int(vocab.feature_values[f].size) for f in config.features)]
    if not config.features:
        cardinalities.append(1)
    metadata = {"samples": {k: int(v[tw.LABEL].size) for k, v in splits.items()}, "source": "events log"}
    files = max(1, min(8, splits["train"][tw.LABEL].size // 100_000 + 1))
    tw.write_dataset(output, splits, [vocab.num_users], cardinalities, config.history_length,
                     num_files={"train": files, "test": max(1, files // 4)}, prebatch_size=32, metadata=metadata,
                     log=log, store=store)
    return {k: int(v[tw.LABEL].size) for k, v in splits.items()}
