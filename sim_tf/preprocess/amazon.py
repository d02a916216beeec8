"""Amazon Books 2014 (reviews + metadata) -> the recipe's BYO parquet layout, on CPU in bounded memory.

Steps (the recipe's, with its defaults):

1. Read the reviews (JSON lines; ``reviewerID``, ``asin``, ``unixReviewTime``), drop users with fewer
   than ``min_reviews`` (20) reviews; ids start at 1 in order of first appearance (0 is padding).
2. Read the metadata (one Python dict literal per line): an item's category is the last element of its
   first category path; items without metadata get the "no category" category.
3. Per user, sort by (time, item). The last behaviour is the test target; the rest is the training
   sequence, whose every prefix with at least ``min_history`` behaviours becomes a positive (target = the
   next behaviour, history = up to ``history_length`` previous ones). Each positive is paired with a
   negative with the same history and a target drawn from the review rows (popularity-weighted), and
   every history position gets a popularity-drawn negative-history item. Histories are left-padded.
4. Training rows are shuffled across ``train_parts`` parquet parts: rows are generated a chunk of users at
   a time, each row goes to a random part as a compact index record spilled to disk, and each part is then
   shuffled and materialised on its own, so memory depends on the part size, not on the row count.

Output: ``metadata.json`` + ``train/part_*.parquet`` + ``test/part_*.parquet``, columns in the recipe's
order: label, uid, item, cat, item_sequence, cat_sequence, neg_item_sequence, neg_cat_sequence.
"""

from __future__ import annotations

import ast
import dataclasses
import gzip
import io
import json
import os
import re
from array import array
from typing import Callable

import numpy as np

from sim_tf.errors import UserError
from sim_tf.progress import Progress

NO_CATEGORY = "no category"
COLUMNS = ("label", "uid", "item", "cat", "item_sequence", "cat_sequence", "neg_item_sequence", "neg_cat_sequence")

# The 2014 files write every review as {"reviewerID": "...", "asin": "...", ..., "unixReviewTime": N, ...}:
# one anchored match covers them; anything else goes through the field-by-field path and its diagnostics.
_REVIEW_FAST = re.compile(rb'\{"reviewerID": "([^"\\]*)", "asin": "([^"\\]*)", .*"unixReviewTime": (\d+)[,}]')
_REVIEWER = re.compile(rb'"reviewerID"\s*:\s*"((?:[^"\\]|\\.)*)"')
_ASIN = re.compile(rb'"asin"\s*:\s*"((?:[^"\\]|\\.)*)"')
_TIME = re.compile(rb'"unixReviewTime"\s*:\s*(-?[0-9.eE+]+|"[^"]*"|null)')
_META_ASIN = re.compile(r"""['"]asin['"]\s*:\s*(['"])(.*?)\1""")
_META_CATEGORIES = re.compile(r"""['"]categories['"]\s*:\s*\[\s*(\[.*?\])""")


@dataclasses.dataclass(frozen=True)
class AmazonConfig:
    min_reviews: int = 20
    history_length: int = 100
    min_history: int = 1
    train_parts: int = 8
    test_parts: int = 1
    seed: int = 0
    strict: bool = False
    users_per_chunk: int = 20_000
    workers: int = 2  # processes writing parquet parts

    def __post_init__(self):
        for name in ("min_reviews", "history_length", "min_history", "train_parts", "test_parts", "users_per_chunk",
                     "workers"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.min_reviews < self.min_history + 2:
            raise UserError(
                f"--min_reviews {self.min_reviews} leaves no training prefix with --min_history {self.min_history} "
                f"(a user needs min_history + 2 reviews: history, a training target and the test target)"
            )


@dataclasses.dataclass
class InputReport:
    """What was read and what was skipped, with the first few line numbers of each problem."""

    lines: int = 0
    used: int = 0
    problems: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    counts: dict[str, int] = dataclasses.field(default_factory=dict)

    def problem(self, kind: str, line: int, strict: bool, path: str):
        if strict:
            raise UserError(f"{path}, line {line}: {kind} (--strict stops at the first bad line)")
        self.counts[kind] = self.counts.get(kind, 0) + 1
        examples = self.problems.setdefault(kind, [])
        if len(examples) < 5:
            examples.append(line)

    def summary(self, path: str) -> str:
        text = f"{path}: {self.lines:,} lines, {self.used:,} used"
        for kind, count in sorted(self.counts.items()):
            text += f"; {count:,} skipped ({kind}, e.g. line(s) {', '.join(map(str, self.problems[kind]))})"
        return text


def _open(path: str):
    """Opens a raw file (optionally .gz) for binary line reading; returns (stream, raw file for position)."""
    if not os.path.exists(path):
        raise UserError(f"input file {path!r} does not exist")
    raw = open(path, "rb")
    if path.endswith(".gz"):
        return io.BufferedReader(gzip.GzipFile(fileobj=raw)), raw
    return raw, raw


def _parse_review_lines(lines, first_line: int, strict: bool, path: str, progress=None):
    """Parses review lines; returns local id arrays, local key tables and an InputReport."""
    users: dict[bytes, int] = {}
    items: dict[bytes, int] = {}
    user_col, item_col, time_col = array("i"), array("i"), array("q")
    report = InputReport()
    number = first_line - 1
    for number, line in enumerate(lines, start=first_line):
        if progress is not None and number % 65536 == 0:
            progress(number)
        stripped = line.strip()
        if not stripped:
            continue
        if not (stripped.startswith(b"{") and stripped.endswith(b"}")):
            report.problem("not a JSON object", number, strict, path)
            continue
        fast = _REVIEW_FAST.match(stripped)
        if fast is not None:
            user_col.append(users.setdefault(fast.group(1), len(users)))
            item_col.append(items.setdefault(fast.group(2), len(items)))
            time_col.append(int(fast.group(3)))
            report.used += 1
            continue
        reviewer = _REVIEWER.search(stripped)
        asin = _ASIN.search(stripped)
        when = _TIME.search(stripped)
        if reviewer is None or asin is None or when is None:
            missing = [n for n, m in (("reviewerID", reviewer), ("asin", asin), ("unixReviewTime", when)) if m is None]
            report.problem(f"missing field {'/'.join(missing)}", number, strict, path)
            continue
        try:
            timestamp = int(when.group(1))
        except ValueError:
            report.problem("unparsable unixReviewTime", number, strict, path)
            continue
        user_col.append(users.setdefault(reviewer.group(1), len(users)))
        item_col.append(items.setdefault(asin.group(1), len(items)))
        time_col.append(timestamp)
        report.used += 1
    report.lines = number - first_line + 1
    return (np.frombuffer(user_col, dtype=np.int32), np.frombuffer(item_col, dtype=np.int32),
            np.frombuffer(time_col, dtype=np.int64), list(users), list(items), report)


def _range_lines(path: str, begin: int, end: int) -> list[bytes]:
    """The complete lines of an uncompressed file that start inside [begin, end)."""
    with open(path, "rb") as f:
        if begin:
            f.seek(begin - 1)
            if f.read(1) != b"\n":
                f.readline()  # the line that straddles `begin` belongs to the previous range
        lines = []
        while f.tell() < end:
            line = f.readline()
            if not line:
                break
            lines.append(line)
    return lines


def _ranges(path: str, pieces: int) -> list[tuple[int, int]]:
    bounds = np.linspace(0, os.path.getsize(path), pieces + 1).astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def _read_range(task):
    path, begin, end = task
    return _parse_review_lines(_range_lines(path, begin, end), 1, False, path)


def _merge_reports(reports: list["InputReport"]) -> "InputReport":
    """Combines per-range reports; line numbers become file line numbers."""
    merged = InputReport()
    offset = 0
    for local in reports:
        merged.used += local.used
        for kind, count in local.counts.items():
            merged.counts[kind] = merged.counts.get(kind, 0) + count
            examples = merged.problems.setdefault(kind, [])
            examples.extend(n + offset for n in local.problems[kind][: 5 - len(examples)])
        offset += local.lines
    merged.lines = offset
    return merged


PARALLEL_MIN_BYTES = 64 * 2**20  # smaller files are read by one process


def read_reviews(path: str, strict: bool = False, workers: int = 1):
    """One pass over the reviews: (user index, item index, time) arrays + the item id strings.

    Uncompressed files are split into byte ranges read by ``workers`` processes (ids keep the order of
    first appearance in the file); gzip files, and --strict runs, are read by one process.
    """
    stream, raw = _open(path)
    size = os.path.getsize(path)
    progress = Progress("reading reviews", unit="lines")
    if workers > 1 and not strict and not path.endswith(".gz") and size > PARALLEL_MIN_BYTES:
        raw.close()
        import multiprocessing

        tasks = [(path, a, b) for a, b in _ranges(path, workers * 4)]
        users_table: dict[bytes, int] = {}
        items_table: dict[bytes, int] = {}
        user_ids, item_ids, times, reports = [], [], [], []
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            # Ranges arrive in file order and are merged at once, so ids keep the order of first appearance
            # and only one range's key lists are held at a time.
            for i, (users, items, when, user_keys, item_keys, local) in enumerate(pool.imap(_read_range, tasks)):
                user_map = np.array([users_table.setdefault(k, len(users_table)) for k in user_keys], dtype=np.int32)
                item_map = np.array([items_table.setdefault(k, len(items_table)) for k in item_keys], dtype=np.int32)
                user_ids.append(user_map[users] if users.size else users)
                item_ids.append(item_map[items] if items.size else items)
                times.append(when)
                reports.append(local)
                progress.update(sum(r.lines for r in reports), (i + 1) / len(tasks), force=True)
        report = _merge_reports(reports)
        users, items, when = np.concatenate(user_ids), np.concatenate(item_ids), np.concatenate(times)
        item_names = list(items_table)
    else:
        def lines():
            with raw:
                yield from stream

        users, items, when, _, item_names, report = _parse_review_lines(
            lines(), 1, strict, path, progress=lambda n: progress.update(n, raw.tell() / max(size, 1))
        )
    progress.done(report.lines)
    if report.used == 0:
        raise UserError(f"{path}: no usable review lines ({report.summary(path)})")
    return users, items, when, item_names, report


def _first_path_leaf(literal: str) -> str | None:
    try:
        path = ast.literal_eval(literal)
    except (ValueError, SyntaxError):
        return None
    if isinstance(path, (list, tuple)) and path and isinstance(path[-1], str):
        return path[-1]
    return None


def _parse_meta_lines(lines, first_line: int, wanted: dict[bytes, int], strict: bool, path: str, progress=None):
    names: dict[int, str] = {}
    report = InputReport()
    number = first_line - 1
    for number, line in enumerate(lines, start=first_line):
        if progress is not None and number % 65536 == 0:
            progress(number)
        text = line.decode("utf-8", errors="replace").strip()
        if not text:
            continue
        match = _META_ASIN.search(text)
        if match is None:
            report.problem("no asin", number, strict, path)
            continue
        item = wanted.get(match.group(2).encode())
        if item is None:
            continue
        categories = _META_CATEGORIES.search(text)
        leaf = _first_path_leaf(categories.group(1)) if categories else None
        if leaf is None:
            try:
                record = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                report.problem("not a Python dict literal", number, strict, path)
                continue
            paths = record.get("categories") if isinstance(record, dict) else None
            leaf = paths[0][-1] if paths and isinstance(paths[0], (list, tuple)) and paths[0] else None
        if leaf is not None:
            names[item] = leaf
            report.used += 1
    report.lines = number - first_line + 1
    return names, report


_WANTED: dict[bytes, int] = {}


def _read_meta_range(task):
    path, begin, end = task
    return _parse_meta_lines(_range_lines(path, begin, end), 1, _WANTED, False, path)


def read_categories(path: str, wanted: dict[bytes, int], strict: bool = False, workers: int = 1):
    """Category name of each wanted item (by its new id), from the metadata's dict literals.

    Only lines whose asin is wanted are evaluated, and only their first category path.
    """
    global _WANTED
    stream, raw = _open(path)
    size = os.path.getsize(path)
    progress = Progress("reading metadata", unit="lines")
    if workers > 1 and not strict and not path.endswith(".gz") and size > PARALLEL_MIN_BYTES:
        raw.close()
        import multiprocessing

        _WANTED = wanted  # inherited by the forked workers
        try:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                parts = pool.map(_read_meta_range, [(path, a, b) for a, b in _ranges(path, workers * 4)])
        finally:
            _WANTED = {}
        names = {}
        for part_names, _ in parts:
            names.update(part_names)
        report = _merge_reports([r for _, r in parts])
    else:
        def lines():
            with raw:
                yield from stream

        names, report = _parse_meta_lines(
            lines(), 1, wanted, strict, path, progress=lambda n: progress.update(n, raw.tell() / max(size, 1))
        )
    progress.done(report.lines)
    return names, report


@dataclasses.dataclass
class Vocabulary:
    """Kept reviews with new ids, sorted by (user, time, item)."""

    user: np.ndarray  # [rows] new user id 1..U
    item: np.ndarray  # [rows] new item id 1..I
    offsets: np.ndarray  # [U + 1] row range of each user
    category_of_item: np.ndarray  # [I + 1] category id of each item (0 for padding)
    num_users: int
    num_items: int
    num_categories: int


def build_vocabulary(users, items, times, item_names, meta_path, config: AmazonConfig, log) -> Vocabulary:
    counts = np.bincount(users)
    keep = counts[users] >= config.min_reviews
    if not keep.any():
        raise UserError(
            f"no user has {config.min_reviews} or more reviews (the most any user has is {int(counts.max())}); "
            f"lower --min_reviews"
        )
    users, items, times = users[keep], items[keep], times[keep]
    # New ids from 1 in order of first appearance among the kept rows.
    def renumber(values):
        unique, first = np.unique(values, return_index=True)
        order = np.argsort(first, kind="stable")
        mapping = np.zeros(int(unique.max()) + 1, dtype=np.int32)
        mapping[unique[order]] = np.arange(1, unique.size + 1, dtype=np.int32)
        return mapping[values], unique[order]

    new_users, _ = renumber(users)
    new_items, old_items = renumber(items)
    order = np.lexsort((new_items, times, new_users))
    new_users, new_items = new_users[order], new_items[order]
    num_users, num_items = int(new_users.max()), int(new_items.max())
    offsets = np.searchsorted(new_users, np.arange(1, num_users + 2))
    log(f"kept {new_users.size:,} reviews of {num_users:,} users with >= {config.min_reviews} reviews, {num_items:,} items")

    wanted = {item_names[old]: new for new, old in enumerate(old_items.tolist(), start=1)}
    names, report = read_categories(meta_path, wanted, config.strict, config.workers)
    log(report.summary(meta_path))
    category_ids: dict[str, int] = {}
    category_of_item = np.zeros(num_items + 1, dtype=np.int32)
    for item in range(1, num_items + 1):
        name = names.get(item, NO_CATEGORY)
        category_of_item[item] = category_ids.setdefault(name, len(category_ids) + 1)
    missing = num_items - len(names)
    log(f"{len(category_ids):,} categories; {missing:,} item(s) without metadata got {NO_CATEGORY!r}")
    return Vocabulary(new_users, new_items, offsets, category_of_item, num_users, num_items, len(category_ids))


def _index_rows(vocab: Vocabulary, first_user: int, last_user: int, config: AmazonConfig, rng):
    """Compact rows for users [first_user, last_user): (user, end, target item, label), test and train."""
    starts = vocab.offsets[first_user - 1 : last_user - 1]
    stops = vocab.offsets[first_user:last_user]
    lengths = stops - starts
    users = np.arange(first_user, last_user)
    # Test: the last behaviour; history = everything before it.
    test_end = stops - 1
    # Train: targets at positions start + min_history .. stop - 2 (the last one is the test target).
    per_user = np.maximum(lengths - 1 - config.min_history, 0)
    train_user = np.repeat(users, per_user)
    first = np.repeat(starts + config.min_history, per_user)
    step = np.arange(per_user.sum()) - np.repeat(np.cumsum(per_user) - per_user, per_user)
    train_end = first + step  # the target's row index; history ends just before it
    rows = vocab.item.size

    def pairs(user, end):
        positive = vocab.item[end]
        negative = vocab.item[rng.integers(0, rows, size=end.size)]
        n = end.size
        return np.stack(
            [np.concatenate([user, user]), np.concatenate([end, end]), np.concatenate([positive, negative]),
             np.concatenate([np.ones(n, np.int64), np.zeros(n, np.int64)])],
            axis=1,
        ).astype(np.int64)

    return pairs(users, test_end), pairs(train_user, train_end)


def _materialize(vocab: Vocabulary, index: np.ndarray, config: AmazonConfig, rng) -> dict[str, np.ndarray]:
    """Index rows (user, end, target, label) -> the parquet columns (histories int32 [rows, L])."""
    user, end, target, label = (index[:, k] for k in range(4))
    start = vocab.offsets[user - 1].astype(np.int32)
    length = config.history_length
    positions = end.astype(np.int32)[:, None] - np.int32(length) + np.arange(length, dtype=np.int32)[None, :]
    valid = positions >= start[:, None]
    items = vocab.item[np.maximum(positions, 0)]
    items *= valid
    negatives = vocab.item[rng.integers(0, vocab.item.size, size=items.shape, dtype=np.int32)]
    negatives *= valid
    cat = vocab.category_of_item
    return {
        "label": label,
        "uid": user,
        "item": target,
        "cat": cat[target],
        "item_sequence": items,
        "cat_sequence": cat[items],
        "neg_item_sequence": negatives,
        "neg_cat_sequence": cat[negatives],
    }


def _arrow_table(columns: dict[str, np.ndarray]):
    import pyarrow as pa

    arrays = []
    for name in COLUMNS:
        values = np.ascontiguousarray(columns[name])
        if values.ndim == 1:
            arrays.append(pa.array(values.astype(np.int64)))
        else:  # histories: list<int32>, half the bytes of int64 (ids fit easily)
            offsets = np.arange(0, values.size + 1, values.shape[1], dtype=np.int32)
            arrays.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.reshape(-1).astype(np.int32, copy=False))))
    return pa.Table.from_arrays(arrays, names=list(COLUMNS))


def write_parquet(path: str, vocab: Vocabulary, index: np.ndarray, config: AmazonConfig, rng, rows_per_group=65536):
    """Materialises index rows a row group at a time, so memory stays at one group's histories."""
    import pyarrow.parquet as pq

    writer = None
    try:
        for start in range(0, max(1, index.shape[0]), rows_per_group):
            table = _arrow_table(_materialize(vocab, index[start : start + rows_per_group], config, rng))
            if writer is None:
                # Dictionary encoding and column statistics buy little on id lists and cost write speed.
                writer = pq.ParquetWriter(path, table.schema, use_dictionary=False, compression="snappy",
                                          write_statistics=False)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


_WORKER_VOCAB: Vocabulary | None = None


def _write_part(task) -> int:
    """Shuffles one spilled part and writes it as parquet; runs in a worker process."""
    spill, path, config, seed = task
    rng = np.random.default_rng(seed)
    index = np.fromfile(spill, dtype=np.int64).reshape(-1, 4)
    os.remove(spill)
    index = index[rng.permutation(index.shape[0])]
    write_parquet(path, _WORKER_VOCAB, index, config, rng)
    return int(index.shape[0])


def preprocess(reviews: str, meta: str, output: str, config: AmazonConfig, log: Callable[[str], None] = print) -> dict:
    """Runs the whole preprocessing into ``output`` (which must be empty or absent); returns counts."""
    users, items, times, item_names, report = read_reviews(reviews, config.strict, config.workers)
    log(report.summary(reviews))
    vocab = build_vocabulary(users, items, times, item_names, meta, config, log)
    del users, items, times, item_names
    rng = np.random.default_rng(config.seed)
    os.makedirs(os.path.join(output, "train"), exist_ok=True)
    os.makedirs(os.path.join(output, "test"), exist_ok=True)
    spill_dir = os.path.join(output, ".spill")
    os.makedirs(spill_dir, exist_ok=True)
    spills = [open(os.path.join(spill_dir, f"train_{p}.bin"), "wb") for p in range(config.train_parts)]
    test_index = []
    train_rows = 0
    progress = Progress("generating samples", unit="users")
    try:
        for first in range(1, vocab.num_users + 1, config.users_per_chunk):
            last = min(vocab.num_users + 1, first + config.users_per_chunk)
            test, train = _index_rows(vocab, first, last, config, rng)
            test_index.append(test)
            part = rng.integers(0, config.train_parts, size=train.shape[0])
            for p in range(config.train_parts):
                train[part == p].tofile(spills[p])
            train_rows += train.shape[0]
            progress.update(last - 1, (last - 1) / vocab.num_users)
    finally:
        for f in spills:
            f.close()
    progress.done(vocab.num_users)
    if train_rows == 0:
        raise UserError("the kept users have no training prefixes; lower --min_history")

    progress = Progress("writing train parts", unit="rows")
    global _WORKER_VOCAB
    _WORKER_VOCAB = vocab  # inherited by the forked workers, not pickled
    tasks = [(os.path.join(spill_dir, f"train_{p}.bin"), os.path.join(output, "train", f"part.{p}.parquet"), config,
              (config.seed, 1, p)) for p in range(config.train_parts)]
    workers = max(1, min(config.workers, config.train_parts))
    written = 0
    try:
        if workers > 1:
            import multiprocessing

            with multiprocessing.get_context("fork").Pool(workers) as pool:
                for rows in pool.imap_unordered(_write_part, tasks):
                    written += rows
                    progress.update(written, written / train_rows, force=True)
        else:
            for task in tasks:
                written += _write_part(task)
                progress.update(written, written / train_rows, force=True)
    finally:
        _WORKER_VOCAB = None
    os.rmdir(spill_dir)
    test = np.concatenate(test_index)
    for p, chunk in enumerate(np.array_split(test, config.test_parts)):
        write_parquet(os.path.join(output, "test", f"part.{p}.parquet"), vocab, chunk, config, rng)
    metadata = {
        "cardinalities": [
            {"name": "uid", "value": vocab.num_users},
            {"name": "item", "value": vocab.num_items},
            {"name": "cat", "value": vocab.num_categories},
        ]
    }
    with open(os.path.join(output, "metadata.json"), "w") as f:
        json.dump(metadata, f, indent=2)
    counts = {
        "reviews_read": report.lines,
        "reviews_used": report.used,
        "users": vocab.num_users,
        "items": vocab.num_items,
        "categories": vocab.num_categories,
        "train_rows": int(train_rows),
        "test_rows": int(test.shape[0]),
    }
    log(f"wrote {train_rows:,} train rows in {config.train_parts} part(s) and {test.shape[0]:,} test rows")
    return counts
