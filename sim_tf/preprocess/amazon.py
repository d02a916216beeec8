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

import dataclasses
import json
import os
from typing import Callable

import numpy as np

from sim_tf.errors import UserError
from sim_tf.faults import fork_pool
from sim_tf.preprocess.amazon_reader import read_categories, read_reviews
from sim_tf.preprocess.byo_parquet import write_row_groups
from sim_tf.progress import Progress

NO_CATEGORY = "no category"
COLUMNS = ("label", "uid", "item", "cat", "item_sequence", "cat_sequence", "neg_item_sequence", "neg_cat_sequence")

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
class Vocabulary:
    """Kept reviews with new ids, sorted by (user, time, item)."""

    user: np.ndarray  # [rows] new user id 1..U
    item: np.ndarray  # [rows] new item id 1..I
    offsets: np.ndarray  # [U + 1] row range of each user
    category_of_item: np.ndarray  # [I + 1] category id of each item (0 for padding)
    num_users: int
    num_items: int
    num_categories: int
    time: np.ndarray | None = None  # [rows] review time, same order


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
    new_users, new_items, times = new_users[order], new_items[order], times[order]
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
    return Vocabulary(new_users, new_items, offsets, category_of_item, num_users, num_items, len(category_ids),
                      times.astype(np.int64))


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


def write_parquet(path: str, vocab: Vocabulary, index: np.ndarray, config: AmazonConfig, rng, rows_per_group=65536):
    """Materialises index rows a row group at a time, so memory stays at one group's histories (an empty
    index still writes the file, with the schema and no rows)."""
    def groups():
        for start in range(0, max(1, index.shape[0]), rows_per_group):
            columns = _materialize(vocab, index[start : start + rows_per_group], config, rng)
            yield {name: columns[name] for name in COLUMNS}

    write_row_groups(path, groups())


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


def preprocess_store(reviews: str, meta: str, output: str, config: AmazonConfig, num_files: int = 8,
                     prebatch_size: int = 32, log: Callable[[str], None] = print) -> dict:
    """The same samples as :func:`preprocess` (every training prefix, paired with a negative; the last review
    is the test target), written as a store-backed TFRecord dataset: every kept review once in the
    behaviour store (item, category, time), each sample by reference (user, position). Histories are as
    long as the user's reviews, so ``history_length`` here is only the recent part (S)."""
    from sim_tf.data import tfrecord_writer as tw
    from sim_tf.data.behavior_store import BehaviorStore

    users, items, times, item_names, report = read_reviews(reviews, config.strict, config.workers)
    log(report.summary(reviews))
    vocab = build_vocabulary(users, items, times, item_names, meta, config, log)
    del users, items, times, item_names
    store = BehaviorStore(np.concatenate([[0], vocab.offsets]).astype(np.int64),
                          {tw.item_base(0): vocab.item.astype(np.int32),
                           tw.item_base(1): vocab.category_of_item[vocab.item].astype(np.int32)}, vocab.time)
    rng = np.random.default_rng(config.seed)
    tests, trains = [], []
    for first in range(1, vocab.num_users + 1, config.users_per_chunk):
        test, train = _index_rows(vocab, first, min(vocab.num_users + 1, first + config.users_per_chunk), config, rng)
        tests.append(test)
        trains.append(train)
    splits = {}
    for name, chunks in (("train", trains), ("test", tests)):
        index = np.concatenate(chunks)
        index = index[rng.permutation(index.shape[0])]
        user, end, target, label = (index[:, k] for k in range(4))
        splits[name] = {tw.LABEL: label, tw.user_feature(0): user, tw.item_feature(0, tw.TARGET): target,
                        tw.item_feature(1, tw.TARGET): vocab.category_of_item[target].astype(np.int64),
                        tw.POSITION: end - vocab.offsets[user - 1]}
    if splits["train"][tw.LABEL].size == 0:
        raise UserError("the kept users have no training prefixes; lower --min_history")
    metadata = {"samples": {k: int(v[tw.LABEL].size) for k, v in splits.items()}, "source": "amazon books 2014"}
    tw.write_dataset(output, splits, [vocab.num_users], [vocab.num_items, vocab.num_categories],
                     config.history_length, num_files={"train": num_files, "test": max(1, num_files // 4)},
                     prebatch_size=prebatch_size, metadata=metadata, log=log, store=store)
    return {"reviews_read": report.lines, "reviews_used": report.used, "users": vocab.num_users,
            "items": vocab.num_items, "categories": vocab.num_categories,
            "train_rows": int(splits["train"][tw.LABEL].size), "test_rows": int(splits["test"][tw.LABEL].size)}


def write_events(reviews: str, meta: str, output: str, config: AmazonConfig, rows_per_file: int = 4_000_000,
                 log: Callable[[str], None] = print) -> dict:
    """The 2014 files as an interaction log for `sim-tf preprocess events`: every usable review as a row
    (user = reviewerID, item = asin, cat = the item's category as :func:`preprocess` names it, time =
    unixReviewTime), in file order, as parquet files of ``rows_per_file`` rows. No filtering: the
    events pipeline's ``--min_events`` plays ``--min_reviews``' part."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    users, items, times, user_names, item_names, report = read_reviews(reviews, config.strict, config.workers,
                                                                      with_user_names=True)
    log(report.summary(reviews))
    names, meta_report = read_categories(meta, {name: i for i, name in enumerate(item_names)}, config.strict,
                                         config.workers)
    log(meta_report.summary(meta))
    categories = np.array([names.get(i, NO_CATEGORY) for i in range(len(item_names))], dtype=object)
    user_text = np.array([n.decode() for n in user_names], dtype=object)
    item_text = np.array([n.decode() for n in item_names], dtype=object)
    os.makedirs(output, exist_ok=True)
    files = 0
    for files, start in enumerate(range(0, users.size, rows_per_file), start=1):
        chunk = slice(start, start + rows_per_file)
        table = pa.table({"user": pa.array(user_text[users[chunk]], pa.string()),
                          "item": pa.array(item_text[items[chunk]], pa.string()),
                          "cat": pa.array(categories[items[chunk]], pa.string()),
                          "time": pa.array(times[chunk], pa.int64())})
        pq.write_table(table, os.path.join(output, f"events.{files - 1}.parquet"))
    log(f"wrote {users.size:,} events of {len(user_names):,} users and {len(item_names):,} items in {files} file(s)")
    return {"reviews_read": report.lines, "reviews_used": report.used, "users": len(user_names),
            "items": len(item_names), "files": files}


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
            with fork_pool(workers) as pool:
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
