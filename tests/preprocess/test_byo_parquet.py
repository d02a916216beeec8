"""The BYO parquet writer against pyarrow's: same schema and values read back, whatever the group sizes."""

import errno
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sim_tf.preprocess import byo_parquet
from sim_tf.preprocess.byo_parquet import write_row_groups


def _groups(length: int, sizes: list[int], seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    groups = []
    for rows in sizes:
        uid = rng.integers(-2**62, 2**62, rows)
        if rows:
            uid[0] = np.iinfo(np.int64).min  # the extremes survive the PLAIN bytes
            uid[-1] = np.iinfo(np.int64).max
        groups.append({"label": rng.integers(0, 2, rows), "uid": uid,
                       "item_sequence": rng.integers(0, 2**31 - 1, (rows, length)).astype(np.int32),
                       "cat": rng.integers(-3, 3, rows).astype(np.int32),  # 1-D columns become int64
                       "cat_sequence": rng.integers(-9, 9, (rows, length)).astype(np.int64)})
    return groups


def _pyarrow_file(path: str, groups: list[dict]) -> None:
    writer = None
    for group in groups:
        arrays = []
        for values in group.values():
            if values.ndim == 1:
                arrays.append(pa.array(values.astype(np.int64)))
            else:
                offsets = pa.array(np.arange(len(values) + 1, dtype=np.int32) * values.shape[1])
                arrays.append(pa.ListArray.from_arrays(offsets, pa.array(values.astype(np.int32).reshape(-1))))
        table = pa.Table.from_arrays(arrays, names=list(group))
        writer = writer or pq.ParquetWriter(path, table.schema, compression="snappy")
        writer.write_table(table)
    writer.close()


@pytest.mark.parametrize("length,sizes", [
    (100, [3, byo_parquet.PAGE_BYTES // 400 * 2 + 7, 1]),  # several pages in a group, a 1-row group
    (1, [5, 8]),  # lists of one element: no run of continuing repetition levels
    (3000, [700]),  # more than one varint byte in the level runs
])
def test_reads_back_as_pyarrow_writes_it(tmp_path, length, sizes):
    groups = _groups(length, sizes)
    ours, theirs = str(tmp_path / "ours.parquet"), str(tmp_path / "theirs.parquet")
    assert write_row_groups(ours, groups) == sum(sizes)
    _pyarrow_file(theirs, groups)
    table = pq.read_table(ours)
    assert table.schema == pq.read_table(theirs).schema
    assert table.equals(pq.read_table(theirs))
    assert pq.read_schema(ours).field("item_sequence").type == pa.list_(pa.int32())
    file = pq.ParquetFile(ours)
    assert [file.metadata.row_group(i).num_rows for i in range(file.num_row_groups)] == sizes
    # one row group at a time, one column at a time: the column chunks' offsets are right
    for i, rows in enumerate(sizes):
        column = file.read_row_group(i, columns=["cat_sequence"]).column(0).combine_chunks()
        expected = groups[i]["cat_sequence"]
        assert np.array_equal(column.values.to_numpy().reshape(rows, length), expected)
    frame = pq.read_table(ours).to_pandas()
    assert np.array_equal(np.stack(frame["item_sequence"].to_numpy()),
                          np.concatenate([g["item_sequence"] for g in groups]))


def test_an_empty_group_writes_the_schema_and_no_groups_write_nothing(tmp_path):
    path = str(tmp_path / "empty.parquet")
    assert write_row_groups(path, _groups(10, [0])) == 0
    table = pq.read_table(path)
    assert table.num_rows == 0
    assert table.column_names == ["label", "uid", "item_sequence", "cat", "cat_sequence"]
    assert table.schema.field("item_sequence").type == pa.list_(pa.int32())
    none = str(tmp_path / "none.parquet")
    assert write_row_groups(none, iter([])) == 0
    assert not os.path.exists(none)


def test_a_failure_leaves_no_file(tmp_path):
    path = str(tmp_path / "broken.parquet")

    def groups():
        yield from _groups(10, [4])
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        write_row_groups(path, groups())
    assert not os.path.exists(path)
    different = _groups(10, [4]) + _groups(11, [4])  # L changes between groups
    with pytest.raises(ValueError, match="differ from the first group"):
        write_row_groups(path, different)
    assert not os.path.exists(path)


def test_a_full_disk_names_the_file_and_leaves_nothing(tmp_path):
    """A file size limit (what a full disk looks like to the writer) in a child process: the OSError
    names the file, and the half-written file is gone."""
    import subprocess
    import sys

    path = str(tmp_path / "full.parquet")
    script = ("import resource, os, numpy as np\n"
              "from sim_tf.preprocess.byo_parquet import write_row_groups\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))\n"
              "rng = np.random.default_rng(0)\n"
              "group = {'uid': np.arange(5000), 'item_sequence': rng.integers(0, 2**31 - 1, (5000, 50)).astype(np.int32)}\n"
              "try:\n"
              "    write_row_groups(os.environ['OUT'], [group])\n"
              "except OSError as e:\n"
              "    print(e.errno, e.filename, os.path.exists(os.environ['OUT']))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OUT": path})
    assert result.stdout.split() == [str(errno.EFBIG), path, "False"], result.stdout + result.stderr


def test_thrift_compact_encoding_of_known_values():
    # field 1 i32 = 1 (delta 1, type 5; zigzag 2); field 20 i64 = -1 (long form: type 6, zigzag(20)=40;
    # zigzag(-1) = 1); a list of 16 i32 (long size form); stop.
    encoded = byo_parquet._struct([(1, "i32", 1), (20, "i64", -1), (21, ("list", "i32"), [0] * 16)])
    assert encoded == bytes([0x15, 0x02, 0x06, 40, 0x01, 0x19, 0xF5, 16]) + bytes(16) + b"\x00"
    assert byo_parquet._varint(300) == bytes([0xAC, 0x02])
    # levels of 2 rows of lists of 3: repetition 0,1,1 per row as runs; definition 3 for all 6
    assert byo_parquet._levels(2, 3) == (b"\x08\x00\x00\x00" + b"\x02\x00\x04\x01" * 2
                                         + b"\x02\x00\x00\x00" + b"\x0c\x03")
