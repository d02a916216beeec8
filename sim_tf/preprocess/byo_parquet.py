"""Writing the recipe's BYO parquet layout, a row group at a time.

Shared by `preprocess amazon` and `preprocess events`, so both write the same column types with the same
parquet options. The layout has two column shapes only: 1-D ids (int64) and [rows, L] histories
(list<int32>, every list L long). For those this module writes the parquet bytes itself: pyarrow's writer
spends ~7 ns per list element building and encoding repetition and definition levels element by element
(~190 ms for a 65,536-row group of four L = 100 histories), while for lists of one length every page's
levels are the same few bytes, computed once. What remains per page is one copy and snappy: ~60 ms for
that group, the same snappy-compressed PLAIN pages (v1) pyarrow would write, without statistics or
dictionaries (pyarrow's writer was called without them too). Files read back through pyarrow with the
schema pyarrow's own writer gives (tests/preprocess/test_byo_parquet.py).

Format reference: the Parquet format's parquet.thrift (file and page metadata, Thrift compact protocol)
and Encodings.md (the RLE / bit-packing hybrid of the levels).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import os
from typing import Iterable

import numpy as np

from sim_tf.data.tfrecord_writer import encode_varint as _varint

MAGIC = b"PAR1"
PAGE_BYTES = 1 << 20  # bytes of values per data page (pyarrow's default page size)

# parquet.thrift enums
_INT32, _INT64 = 1, 2
_OPTIONAL, _REPEATED = 1, 2
_PLAIN, _RLE = 0, 3
_SNAPPY = 1
_LIST_CONVERTED = 3
_DATA_PAGE = 0

# Thrift compact protocol type codes
_T_I16, _T_I32, _T_I64, _T_BINARY, _T_LIST, _T_STRUCT = 4, 5, 6, 8, 9, 12


def _zigzag(n: int) -> int:
    return n << 1 if n >= 0 else ((-n) << 1) - 1


def _struct(fields: list) -> bytes:
    """A Thrift compact-protocol struct from (field id, kind, value) in ascending id order; None values
    are left out. kind: "i16", "i32", "i64", "binary", "struct" (value: bytes of a _struct), or
    ("list", element kind) with element kinds "i32", "binary" and "struct"."""
    types = {"i16": _T_I16, "i32": _T_I32, "i64": _T_I64, "binary": _T_BINARY, "struct": _T_STRUCT}
    out, last = bytearray(), 0
    for field, kind, value in fields:
        if value is None:
            continue
        code = _T_LIST if isinstance(kind, tuple) else types[kind]
        delta = field - last
        out += bytes([(delta << 4) | code]) if 0 < delta <= 15 else bytes([code]) + _varint(_zigzag(field))
        last = field
        if isinstance(kind, tuple):
            element = kind[1]
            size = len(value)
            out += bytes([(size << 4) | types[element]]) if size < 15 else bytes([0xF0 | types[element]]) + _varint(size)
            for item in value:
                out += _value(element, item)
        else:
            out += _value(kind, value)
    out.append(0)  # stop
    return bytes(out)


def _value(kind: str, value) -> bytes:
    if kind in ("i16", "i32", "i64"):
        return _varint(_zigzag(int(value)))
    if kind == "binary":
        value = value.encode() if isinstance(value, str) else value
        return _varint(len(value)) + value
    return value  # "struct": already encoded


def _rle_run(count: int, value: int) -> bytes:
    """One RLE run of the levels' hybrid encoding (levels here are at most 3: one value byte)."""
    return _varint(count << 1) + bytes([value])


def _with_length(encoded: bytes) -> bytes:
    return len(encoded).to_bytes(4, "little") + encoded


@functools.lru_cache(maxsize=64)
def _levels(rows: int, length: int) -> bytes:
    """The level prefix of a data page (v1) of ``rows`` rows: repetition then definition levels.

    length 0: an optional int64 column without nulls (max definition level 1, no repetition). Otherwise
    an optional list of optional int32 elements, every list ``length`` long and nothing null: each
    row's repetition levels are 0 then length - 1 ones, and every definition level is the maximum, 3."""
    if length == 0:
        return _with_length(_rle_run(rows, 1))
    row = _rle_run(1, 0) + (_rle_run(length - 1, 1) if length > 1 else b"")
    return _with_length(row * rows) + _with_length(_rle_run(rows * length, 3))


class _Column:
    def __init__(self, name: str, length: int):
        self.name, self.length = name, length  # length 0: 1-D int64; else list<int32> of that length
        self.path = [name] if length == 0 else [name, "list", "element"]
        self.values_per_row = max(length, 1)  # parquet counts a list's elements as values
        row_bytes = 8 if length == 0 else 4 * length
        self.rows_per_page = max(1, PAGE_BYTES // row_bytes)

    def schema(self) -> list[bytes]:
        if self.length == 0:
            return [_struct([(1, "i32", _INT64), (3, "i32", _OPTIONAL), (4, "binary", self.name)])]
        list_type = _struct([(3, "struct", _struct([]))])  # LogicalType union: LIST (an empty ListType)
        return [_struct([(3, "i32", _OPTIONAL), (4, "binary", self.name), (5, "i32", 1),
                         (6, "i32", _LIST_CONVERTED), (10, "struct", list_type)]),
                _struct([(3, "i32", _REPEATED), (4, "binary", "list"), (5, "i32", 1)]),
                _struct([(1, "i32", _INT32), (3, "i32", _OPTIONAL), (4, "binary", "element")])]


def _arrow_schema(columns: list[_Column]) -> str:
    """The ARROW:schema footer entry pyarrow writes (its IPC schema, base64), so arrow readers restore the
    same types and field names."""
    import pyarrow as pa

    fields = [pa.field(c.name, pa.int64() if c.length == 0 else pa.list_(pa.int32())) for c in columns]
    return base64.b64encode(pa.schema(fields).serialize().to_pybytes()).decode()


class Writer:
    """Row groups of {name: 1-D or [rows, L] integer array} to one parquet file; the first group fixes the
    columns (names, order, L)."""

    def __init__(self, path: str):
        self.path = path
        self.file = None
        self.columns: list[_Column] | None = None
        self.row_groups: list[bytes] = []
        self.rows = 0
        self.offset = 0
        self._body = np.empty(0, np.uint8)

    def write(self, group: dict[str, np.ndarray]) -> None:
        arrays = list(group.values())
        shapes = [(a.shape[1] if a.ndim == 2 else 0) for a in arrays]
        if self.columns is None:
            self.file = open(self.path, "wb")
            self.columns = [_Column(name, length) for name, length in zip(group, shapes)]
            self._write(MAGIC)
            self.offset = len(MAGIC)
        elif list(group) != [c.name for c in self.columns] or shapes != [c.length for c in self.columns]:
            raise ValueError(f"{self.path}: a row group's columns differ from the first group's")
        rows = len(arrays[0])
        if any(len(a) != rows for a in arrays):
            raise ValueError(f"{self.path}: a row group's columns differ in length")
        if rows == 0:
            return
        start, chunks, uncompressed_total, compressed_total = self.offset, [], 0, 0
        for column, values in zip(self.columns, arrays):
            chunk_start = self.offset
            values = np.ascontiguousarray(values, dtype=np.int64 if column.length == 0 else np.int32)
            uncompressed = 0
            for first in range(0, rows, column.rows_per_page):
                page = values[first:first + column.rows_per_page]
                uncompressed += self._page(column, page)
            size = self.offset - chunk_start
            uncompressed_total += uncompressed
            compressed_total += size
            count = rows * column.values_per_row
            meta = _struct([(1, "i32", _INT64 if column.length == 0 else _INT32), (2, ("list", "i32"), [_PLAIN, _RLE]),
                            (3, ("list", "binary"), column.path), (4, "i32", _SNAPPY), (5, "i64", count),
                            (6, "i64", uncompressed), (7, "i64", size), (9, "i64", chunk_start)])
            chunks.append(_struct([(2, "i64", chunk_start), (3, "struct", meta)]))
        self.row_groups.append(_struct([(1, ("list", "struct"), chunks), (2, "i64", uncompressed_total),
                                        (3, "i64", rows), (5, "i64", start), (6, "i64", compressed_total),
                                        (7, "i16", len(self.row_groups))]))
        self.rows += rows

    def _page(self, column: _Column, values: np.ndarray) -> int:
        """Writes one data page (header, then the snappy-compressed levels and PLAIN values); returns its
        uncompressed size with the header, as the column chunk's metadata counts it."""
        import pyarrow as pa

        rows = len(values)
        levels = _levels(rows, column.length)
        size = len(levels) + values.nbytes
        if self._body.size < size:
            self._body = np.empty(size, np.uint8)
        body = self._body[:size]
        body[:len(levels)] = np.frombuffer(levels, np.uint8)
        body[len(levels):] = values.reshape(-1).view(np.uint8)
        compressed = pa.compress(body, codec="snappy", asbytes=True)
        count = rows * column.values_per_row
        header = _struct([(1, "i32", _DATA_PAGE), (2, "i32", size), (3, "i32", len(compressed)),
                          (5, "struct", _struct([(1, "i32", count), (2, "i32", _PLAIN), (3, "i32", _RLE),
                                                 (4, "i32", _RLE)]))])
        self._write(header)
        self._write(compressed)
        self.offset += len(header) + len(compressed)
        return len(header) + size

    @contextlib.contextmanager
    def _naming_the_file(self):
        """A full disk or a file size limit (in a write or the closing flush) raised naming the file, as
        pyarrow's writer did."""
        try:
            yield
        except OSError as e:
            if e.filename is None:
                raise OSError(e.errno, e.strerror, self.path) from e
            raise

    def _write(self, data: bytes) -> None:
        with self._naming_the_file():
            self.file.write(data)

    def abort(self) -> None:
        """Removes a file that will not be finished (a valid footer would hide that rows are missing)."""
        if self.file is not None:
            file, self.file = self.file, None
            try:
                file.close()
            except OSError:
                pass  # the same fault as the one being raised
        if self.columns is not None and os.path.exists(self.path):
            os.remove(self.path)

    def close(self) -> None:
        if self.file is None:
            return
        schema = [_struct([(4, "binary", "schema"), (5, "i32", len(self.columns))])]
        for column in self.columns:
            schema += column.schema()
        key_value = _struct([(1, "binary", "ARROW:schema"), (2, "binary", _arrow_schema(self.columns))])
        footer = _struct([(1, "i32", 1), (2, ("list", "struct"), schema), (3, "i64", self.rows),
                          (4, ("list", "struct"), self.row_groups), (5, ("list", "struct"), [key_value]),
                          (6, "binary", "sim-tf byo_parquet")])
        self._write(footer + len(footer).to_bytes(4, "little") + MAGIC)
        file, self.file = self.file, None
        with self._naming_the_file():
            file.close()


def write_row_groups(path: str, groups: Iterable[dict[str, np.ndarray]]) -> int:
    """Writes ``groups`` ({name: array}, one schema) to ``path`` as successive row groups, so memory is one
    group's; nothing is written when there are none (a group of 0 rows writes the schema only). Each group
    is written before the next is drawn, so groups may reuse their arrays. A failure removes the file.
    Returns the rows written."""
    writer = Writer(path)
    try:
        for group in groups:
            writer.write(group)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return writer.rows
