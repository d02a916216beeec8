"""Writing the recipe's BYO parquet layout: id columns as arrow tables, a row group at a time.

Shared by `preprocess amazon` and `preprocess events`, so both write the same column types with the same
parquet options.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np


def arrow_table(columns: dict[str, np.ndarray]):
    """Columns in the dict's order: 1-D arrays as int64, [rows, L] histories as list<int32> (half the
    bytes of int64; ids fit easily)."""
    import pyarrow as pa

    arrays = []
    for values in columns.values():
        if values.ndim == 1:
            arrays.append(pa.array(np.asarray(values, dtype=np.int64)))
        else:
            offsets = np.arange(values.shape[0] + 1, dtype=np.int32) * values.shape[1]
            flat = np.ascontiguousarray(values, dtype=np.int32).reshape(-1)  # no copy when already int32
            arrays.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)))
    return pa.Table.from_arrays(arrays, names=list(columns))


def write_row_groups(path: str, tables: Iterable) -> int:
    """Writes ``tables`` (arrow tables of one schema) to ``path`` as successive row groups, so memory is
    one table's; nothing is written when there are none. Returns the rows written."""
    import pyarrow.parquet as pq

    writer, rows = None, 0
    try:
        for table in tables:
            if writer is None:
                # Dictionary encoding and column statistics buy little on id lists and cost write speed.
                writer = pq.ParquetWriter(path, table.schema, use_dictionary=False, compression="snappy",
                                          write_statistics=False)
            writer.write_table(table)
            rows += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    return rows
