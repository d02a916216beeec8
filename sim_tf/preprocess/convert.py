"""BYO parquet (+ metadata.json) -> TFRecord shards + feature_spec.yaml, streaming.

Input folder (the recipe's BYO layout): ``metadata.json`` with ``{"cardinalities": [{"name", "value"},
...]}`` (user features first, then item features) and ``train/*.parquet``, ``test/*.parquet``.

Columns are taken by position, as the recipe does: label, the user features, the target item features,
one list column per item feature for the positive history, one per item feature for the negative
history. Or by name (``--columns by_name``): ``label``, each feature's name for the user and target
columns, ``{name}_sequence`` for the positive and ``neg_{name}_sequence`` for the negative history
(the names `sim-tf preprocess amazon` writes). Histories longer than L keep their last L behaviours,
shorter ones are left-padded with 0. Ids outside 0..cardinality stop the conversion with the column and
the value: a converted dataset never holds ids its tables cannot look up.

Prebatched output (``--prebatch_size`` > 1, the default 32) shuffles the rows of each 65,536-row block
before grouping them into records, with a seed from the file's name and the block's number.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import zlib
from typing import Callable

import numpy as np

from sim_tf.data import feature_spec as fs
from sim_tf.data import tfrecord_writer
from sim_tf.errors import UserError, brief
from sim_tf.progress import Progress

COLUMN_MODES = ("by_position", "by_name")


def read_metadata(folder: str, user_features: int) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    path = os.path.join(folder, "metadata.json")
    if not os.path.exists(path):
        raise UserError(f"{path!r} does not exist: a BYO parquet folder needs metadata.json with the cardinalities")
    try:
        with open(path) as f:
            raw = json.load(f)
        entries = [(str(e["name"]), int(e["value"])) for e in raw["cardinalities"]]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise UserError(
            f'{path}: expected {{"cardinalities": [{{"name": ..., "value": ...}}, ...]}} ({type(e).__name__}: {e})'
        ) from None
    for name, value in entries:
        if value <= 0:
            raise UserError(f"{path}: cardinality of {name!r} is {value}; it must be positive")
    if not 1 <= user_features < len(entries):
        raise UserError(
            f"--number_of_user_features {user_features} must leave at least one item feature among the "
            f"{len(entries)} features of {path}"
        )
    return entries[:user_features], entries[user_features:]


def parquet_files(folder: str, split: str) -> list[str]:
    files = sorted(glob.glob(os.path.join(folder, split, "*.parquet")), key=natural_key)
    if not files:
        raise UserError(f"no parquet files in {os.path.join(folder, split)!r}")
    return files


def natural_key(path: str):
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", os.path.basename(path))]


def column_names(schema_names: list[str], users, items, mode: str, path: str) -> list[str]:
    """The source column of each output feature, in output order."""
    wanted = 1 + len(users) + 3 * len(items)
    if mode == "by_position":
        if len(schema_names) < wanted:
            raise UserError(
                f"{path} has {len(schema_names)} columns; by position it needs {wanted}: label, "
                f"{len(users)} user, {len(items)} target item, {len(items)} positive and {len(items)} negative history columns"
            )
        return schema_names[:wanted]
    names = ["label"] + [n for n, _ in users] + [n for n, _ in items]
    names += [f"{n}_sequence" for n, _ in items] + [f"neg_{n}_sequence" for n, _ in items]
    missing = [n for n in names if n not in schema_names]
    if missing:
        raise UserError(f"{path} has no column(s) {missing} (by name; it has {schema_names})")
    return names


def pad_lists(column, length: int, name: str, path: str) -> np.ndarray:
    """A list<int> arrow column -> [rows, length] int64: keep the last `length`, left-pad with 0."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not pa.types.is_list(column.type) and not pa.types.is_large_list(column.type):
        raise UserError(f"{path}: history column {name!r} is {column.type}, expected a list of ids")
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if column.null_count:
        raise UserError(f"{path}: history column {name!r} has null rows")
    if not pa.types.is_integer(column.type.value_type):
        raise UserError(f"{path}: history column {name!r} is {column.type}, expected a list of integer ids")
    flat = pc.list_flatten(column)
    if flat.null_count:
        raise UserError(f"{path}: history column {name!r} has {flat.null_count} null id(s) inside its lists")
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
    values = as_int64(flat.to_numpy(zero_copy_only=False), name, path)
    if lengths.size and lengths.min() == lengths.max():
        # Lists of one length (what `preprocess` writes): a reshape, where the general gather below costs
        # ~40% of a conversion.
        same = values.reshape(lengths.size, int(lengths[0]))
        if same.shape[1] >= length:
            return np.ascontiguousarray(same[:, same.shape[1] - length:])
        out = np.zeros((lengths.size, length), dtype=np.int64)
        out[:, length - same.shape[1]:] = same
        return out
    ends = np.cumsum(lengths)
    out = np.zeros((lengths.size, length), dtype=np.int64)
    take = np.minimum(lengths, length)
    # Row r's kept values are values[ends[r] - take[r] : ends[r]], written right-aligned.
    rows = np.repeat(np.arange(lengths.size), take)
    within = np.arange(take.sum()) - np.repeat(np.cumsum(take) - take, take)
    source = np.repeat(ends - take, take) + within
    out[rows, length - np.repeat(take, take) + within] = values[source]
    return out


def scalar_column(column, name: str, path: str) -> np.ndarray:
    import pyarrow as pa

    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        raise UserError(f"{path}: column {name!r} holds lists, expected one id per row (check --columns / the order)")
    if column.null_count:
        raise UserError(f"{path}: column {name!r} has null rows")
    values = column.to_numpy(zero_copy_only=False)
    if values.dtype == bool:
        return values.astype(np.int64)
    if not np.issubdtype(values.dtype, np.number):
        raise UserError(f"{path}: column {name!r} has type {column.type}, expected integers")
    if np.issubdtype(values.dtype, np.floating) and not np.all(np.mod(values, 1) == 0):
        raise UserError(f"{path}: column {name!r} holds non-integer values")
    return as_int64(values, name, path)


def open_parquet(path: str):
    """pyarrow's ParquetFile, or one UserError naming a file that is not parquet (or is cut short)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise UserError(f"{path} is not a readable parquet file: {brief(e)}") from None


def record_batches(parquet, path: str, columns: list[str], batch_size: int = 65536):
    """The file's record batches; a page that does not decode ends in one UserError naming the file."""
    import pyarrow as pa

    try:
        yield from parquet.iter_batches(batch_size=batch_size, columns=columns)
    except (OSError, pa.ArrowException) as e:
        raise UserError(f"{path} is not a readable parquet file: {brief(e)}") from None


def as_int64(values: np.ndarray, name: str, path: str) -> np.ndarray:
    """Integer ids as int64; an unsigned or float id beyond int64's range is an error, never a wrap-around."""
    if values.size and (np.issubdtype(values.dtype, np.unsignedinteger) or np.issubdtype(values.dtype, np.floating)):
        largest = values.max()
        if largest > np.iinfo(np.int64).max:
            raise UserError(f"{path}: column {name!r} holds id {largest}, beyond what an id can be (int64)")
    return values.astype(np.int64)


def _check_range(values: np.ndarray, cardinality: int, name: str, path: str) -> None:
    if values.size and (values.min() < 0 or values.max() > cardinality):
        bad = values[(values < 0) | (values > cardinality)]
        raise UserError(
            f"{path}: column {name!r} holds id {int(bad[0])} outside 0..{cardinality} (its cardinality in "
            f"metadata.json); {bad.size} such value(s) in this batch"
        )


@dataclasses.dataclass(frozen=True)
class Layout:
    """What converting a file needs to know: the features, their cardinalities and the output shape."""

    users: list
    items: list
    feature_names: list
    cardinalities: list
    columns: str
    history_length: int
    prebatch_size: int


def convert_files(sources: list[str], output_dir: str, split: str, total: int, parts: int, layout: Layout,
                  prefix: str, show_progress: bool = True) -> tuple[list[str], int]:
    """Converts parquet ``sources`` (in order) into ``parts`` shards named with ``prefix``; returns (the
    files written, rows). Runs in this process or as one Dask task per file."""
    users, items = layout.users, layout.items
    writer = tfrecord_writer.ShardWriter(output_dir, split, total, parts, layout.prebatch_size, prefix)
    progress = Progress(f"converting {split}", unit="rows", enabled=show_progress)
    done = 0
    for path in sources:
        parquet = open_parquet(path)
        names = column_names(parquet.schema_arrow.names, users, items, layout.columns, path)
        for number, batch in enumerate(record_batches(parquet, path, names)):
            order = None
            if layout.prebatch_size > 1:
                # Samples that share a record always share a batch: shuffle each block of rows first, so a
                # record holds rows drawn from the whole block rather than neighbours (often one user's).
                # Seeded by the file's name and the block, so every engine writes the same bytes. Applied
                # to the numpy columns below (pyarrow's take on list columns costs ~3x more).
                seed = zlib.crc32(f"{os.path.basename(path)}:{number}".encode())
                order = np.random.default_rng(seed).permutation(batch.num_rows)
            out = {}
            for index, (target, source) in enumerate(zip(layout.feature_names, names)):
                column = batch.column(source)
                if index > len(users) + len(items):
                    values = pad_lists(column, layout.history_length, source, path)
                else:
                    values = scalar_column(column, source, path)
                if index == 0:
                    if values.size and (values.min() < 0 or values.max() > 1):
                        raise UserError(f"{path}: label column {source!r} holds values other than 0 and 1")
                else:
                    _check_range(values, layout.cardinalities[index], source, path)
                out[target] = values if order is None else values[order]
            writer.add(out)
            done += batch.num_rows
            progress.update(done, done / max(total, 1))
    return writer.close(), done


def convert(
    input_dir: str,
    output_dir: str,
    number_of_user_features: int,
    columns: str = "by_position",
    history_length: int = 100,
    train_parts: int = 8,
    test_parts: int = 1,
    prebatch_size: int = 1,
    log: Callable[[str], None] = print,
    engine=None,
) -> fs.FeatureSpec:
    """Converts a BYO parquet folder; writes into ``output_dir`` (use an empty or staging folder).

    With an ``engine`` (sim_tf.preprocess.events.Engine: a Dask cluster) every parquet file is converted
    by its own task into its own shards, about ``train_parts`` / ``test_parts`` in all, shared out by rows;
    without, the files are read in order into exactly that many shards."""
    import pyarrow.parquet as pq

    if columns not in COLUMN_MODES:
        raise UserError(f"--columns must be one of {list(COLUMN_MODES)}, got {columns!r}")
    if history_length < 1 or prebatch_size < 1:
        raise UserError("--history_length and --prebatch_size must be >= 1")
    users, items = read_metadata(input_dir, number_of_user_features)
    feature_names = tfrecord_writer.feature_names(len(users), len(items))
    cardinalities = [None] + [c for _, c in users] + [c for _, c in items] * 3
    layout = Layout(users, items, feature_names, cardinalities, columns, history_length, prebatch_size)
    samples = {}
    files = {}
    for split, parts in (("train", train_parts), ("test", test_parts)):
        sources = parquet_files(input_dir, split)
        row_counts = []
        for path in sources:
            try:
                row_counts.append(pq.ParquetFile(path).metadata.num_rows)
            except Exception as e:  # pyarrow raises several kinds for a broken file
                raise UserError(f"{path} is not a readable parquet file: {e}") from None
        total = sum(row_counts)
        progress = Progress(f"converting {split}", unit="rows")
        if engine is None:
            files[split], done = convert_files(sources, output_dir, split, total, parts, layout, "")
        else:
            # One task per source file, each writing its own shards (FILE-part_0000.tfrecord ...).
            import dask

            tasks = [dask.delayed(convert_files)([path], output_dir, split, rows,
                                                 max(1, round(parts * rows / max(total, 1))), layout, f"{index:05d}-", False)
                     for index, (path, rows) in enumerate(zip(sources, row_counts))]
            results = engine.run(tasks, f"converting {split}", unit="files")
            files[split] = [f for written, _ in results for f in written]
            done = sum(rows for _, rows in results)
        samples[split] = done
        if done == 0:
            raise UserError(f"the {split} parquet files in {os.path.join(input_dir, split)!r} hold no rows")
        progress.done(done)
    spec = tfrecord_writer.make_feature_spec(
        [c for _, c in users],
        [c for _, c in items],
        history_length,
        train_files=files["train"],
        test_files=files["test"],
        metadata={"samples": samples, "source": {"kind": "sim_tf.convert", "columns": columns,
                                                  "features": [n for n, _ in users + items]}}
        | ({"prebatch_size": prebatch_size} if prebatch_size > 1 else {}),
        base_directory=output_dir,
    )
    spec.to_yaml(os.path.join(output_dir, fs.DEFAULT_FEATURE_SPEC_NAME))
    log(f"converted {samples['train']:,} train and {samples['test']:,} test rows")
    return spec
