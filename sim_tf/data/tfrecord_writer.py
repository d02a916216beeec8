"""Writes a dataset (FeatureSpec + TFRecord shards) from numpy arrays.

Building ``tf.train.Example`` protos in Python runs at ~5k samples/s on these machines, which would make
every synthetic or converted dataset slow to produce. Instead the Example wire format is assembled with
numpy: every feature is an ``Int64List`` of varints, so a whole chunk of records is encoded at once and
only the final framing (one ``TFRecordWriter.write`` per record) stays in Python. The bytes are a valid
serialized ``tf.train.Example``; ``tf.io.parse_example`` reads them like any other.
"""

from __future__ import annotations

import os
import time
from typing import Mapping, Sequence

import numpy as np

from sim_tf.data import feature_spec as fs

_MAX_VARINT_BYTES = 10


def _varint_width(values: np.ndarray) -> int:
    """Bytes needed to write the largest of ``values`` as a varint (negatives need 10)."""
    if values.size == 0:
        return 1
    largest = int(values.astype(np.int64, copy=False).view(np.uint64).max())
    return max(1, -(-largest.bit_length() // 7))


def _fixed_width_varints(values: np.ndarray, width: int) -> np.ndarray:
    """Encodes int64 ``values`` [N, D] as varints of exactly ``width`` bytes each: uint8 [N, D * width].

    Protobuf parsers accept over-long varints (continuation bits on leading zero groups), so giving
    every value of a feature the same width makes every record of a chunk the same shape, and the
    whole chunk encodes as dense arrays.
    """
    v = values.astype(np.int64, copy=False).view(np.uint64)
    out = np.empty(v.shape + (width,), dtype=np.uint8)
    for k in range(width):
        group = (v >> np.uint64(7 * k)) & np.uint64(0x7F)
        out[..., k] = group if k == width - 1 else group | np.uint64(0x80)
    return out.reshape(v.shape[0], -1)


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(tag: int, length: int) -> bytes:
    return bytes([tag]) + _encode_varint(length)


def encode_examples(columns: Mapping[str, np.ndarray]) -> list[bytes]:
    """Serializes one ``tf.train.Example`` per row; every column is int64 [N] or [N, D].

    Wire layout: Example{1: Features{1: map entry {1: key, 2: Feature{3: Int64List{1: packed varints}}}}}.
    Because every value of a column has one width, each record has the same length and the same headers.
    """
    names = sorted(columns)
    n = len(columns[names[0]])
    parts: list[np.ndarray] = []
    for name in names:
        values = np.asarray(columns[name])
        if values.shape[0] != n:
            raise ValueError(f"column {name!r} has {values.shape[0]} rows, expected {n}")
        values = values.reshape(n, -1)
        payload = _fixed_width_varints(values, _varint_width(values))
        int64_list = _field(0x0A, payload.shape[1])
        feature = _field(0x1A, len(int64_list) + payload.shape[1]) + int64_list
        key = name.encode()
        entry_prefix = _field(0x0A, len(key)) + key + _field(0x12, len(feature) + payload.shape[1]) + feature
        header = _field(0x0A, len(entry_prefix) + payload.shape[1]) + entry_prefix
        parts.append(np.broadcast_to(np.frombuffer(header, dtype=np.uint8), (n, len(header))))
        parts.append(payload)
    body_length = sum(p.shape[1] for p in parts)
    head = np.frombuffer(_field(0x0A, body_length), dtype=np.uint8)
    records = np.concatenate([np.broadcast_to(head, (n, head.size))] + parts, axis=1)
    flat = records.tobytes()
    width = records.shape[1]
    return [flat[i * width : (i + 1) * width] for i in range(n)]


def write_tfrecords(
    path: str,
    columns: Mapping[str, np.ndarray],
    prebatch_size: int = 1,
    chunk_rows: int = 8192,
) -> int:
    """Writes rows of ``columns`` to one TFRecord file; returns the number of records written.

    With ``prebatch_size`` P > 1 each record holds P consecutive samples (scalars P values, histories
    P*L values sample-major); the rows must be a multiple of P (the caller routes a partial tail to
    ``remainder.tfrecord``).
    """
    import tensorflow as tf

    names = list(columns)
    n = len(columns[names[0]])
    if n % prebatch_size:
        raise ValueError(f"{n} rows are not a multiple of prebatch_size {prebatch_size}")
    records = n // prebatch_size
    step = max(1, chunk_rows // prebatch_size)
    with tf.io.TFRecordWriter(path) as writer:
        for start in range(0, records, step):
            stop = min(records, start + step)
            chunk = {
                name: np.asarray(columns[name][start * prebatch_size : stop * prebatch_size]).reshape(stop - start, -1)
                for name in names
            }
            for record in encode_examples(chunk):
                writer.write(record)
    return records


def write_dataset(
    output_dir: str,
    splits: Mapping[str, Mapping[str, np.ndarray]],
    user_cardinalities: Sequence[int],
    item_cardinalities: Sequence[int],
    history_length: int,
    num_files: Mapping[str, int] | int = 1,
    prebatch_size: int = 1,
    metadata: dict | None = None,
    log=None,
) -> fs.FeatureSpec:
    """Writes ``splits`` (mapping -> feature name -> array) as TFRecord shards plus feature_spec.yaml.

    Feature names follow the recipe's converter (``label``, ``user_feat_0``, ``item_feat_0_trgt``,
    ``item_feat_0_pos``, ``item_feat_0_neg`` ...). Rows are split into ``num_files`` contiguous shards
    (file order is row order); with prebatching, a final partial batch goes to ``remainder.tfrecord``.
    Returns the validated FeatureSpec.
    """
    import tensorflow as tf

    tf.io.gfile.makedirs(output_dir)
    files: dict[str, list[str]] = {}
    for mapping, columns in splits.items():
        count = num_files if isinstance(num_files, int) else num_files.get(mapping, 1)
        n = len(next(iter(columns.values())))
        for name, values in columns.items():
            if len(values) != n:
                raise ValueError(f"split {mapping!r}: column {name!r} has {len(values)} rows, expected {n}")
        full = (n // prebatch_size) * prebatch_size
        records = full // prebatch_size
        count = max(1, min(count, records)) if records else 1
        bounds = np.linspace(0, records, count + 1).astype(np.int64) * prebatch_size
        names: list[str] = []
        started = time.perf_counter()
        for shard in range(count):
            rel = f"{mapping}/part_{shard:04d}.tfrecord"
            tf.io.gfile.makedirs(os.path.join(output_dir, mapping))
            lo, hi = bounds[shard], bounds[shard + 1]
            write_tfrecords(
                os.path.join(output_dir, rel), {k: v[lo:hi] for k, v in columns.items()}, prebatch_size=prebatch_size
            )
            names.append(rel)
        if full < n:
            rel = f"{mapping}/remainder.tfrecord"
            write_tfrecords(os.path.join(output_dir, rel), {k: v[full:] for k, v in columns.items()}, prebatch_size=n - full)
            names.append(rel)
        files[mapping] = names
        if log is not None:
            elapsed = time.perf_counter() - started
            log(f"wrote {n} {mapping} samples in {len(names)} file(s), {n / max(elapsed, 1e-9):,.0f} samples/s")
    meta = dict(metadata or {})
    if prebatch_size > 1:
        meta["prebatch_size"] = int(prebatch_size)
    spec = fs.make_feature_spec(
        user_cardinalities,
        item_cardinalities,
        history_length,
        train_files=files.get("train", []),
        test_files=files.get("test", []),
        metadata=meta,
        base_directory=output_dir,
        check_files=True,
    )
    spec.to_yaml(os.path.join(output_dir, fs.DEFAULT_FEATURE_SPEC_NAME))
    return spec
