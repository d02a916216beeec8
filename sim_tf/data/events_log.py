"""A synthetic interaction log for `sim-tf preprocess events`: what a data lake would hold.

Rows (user, item, category, time[, clicked]) with raw ids as strings that are not dense ranges (users
"u" + a scrambled number, items "i" + a number, categories "c" + a number), items drawn with Zipf-like
popularity, each item with one category, times in Unix seconds in no particular row order. Written as
parquet parts (or CSV) a file at a time, so memory is one file's rows.
"""

from __future__ import annotations

import os

import numpy as np


def write_events_log(output: str, events: int, users: int, items: int, categories: int, seed: int = 0,
                     files: int = 4, csv: bool = False, labels: bool = False) -> list[str]:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if min(events, users, items, categories, files) < 1:
        raise ValueError("events, users, items, categories and files must be >= 1")
    os.makedirs(output, exist_ok=True)
    rng = np.random.default_rng(seed)
    category_of = rng.integers(0, categories, items)
    weights = 1.0 / np.arange(1, items + 1) ** 0.8
    cumulative = np.cumsum(weights / weights.sum())
    scramble = rng.permutation(users) * 7919 + 104729  # raw user ids: neither dense nor ordered
    paths = []
    for f, rows in enumerate(np.array_split(np.arange(events), files)):
        n = rows.size
        user = rng.integers(0, users, n)
        item = np.minimum(np.searchsorted(cumulative, rng.random(n)), items - 1)
        when = 1_400_000_000 + rng.integers(0, 86_400 * 365, n)
        columns = {
            "user": pa.array(np.char.add("u", scramble[user].astype(str))),
            "item": pa.array(np.char.add("i", item.astype(str))),
            "category": pa.array(np.char.add("c", category_of[item].astype(str))),
            "time": pa.array(when.astype(np.int64)),
        }
        if labels:
            columns["clicked"] = pa.array((rng.random(n) < 0.3).astype(np.int64))
        table = pa.table(columns)
        path = os.path.join(output, f"events.{f}.{'csv' if csv else 'parquet'}")
        if csv:
            pacsv.write_csv(table, path)
        else:
            pq.write_table(table, path)
        paths.append(path)
    return paths
