"""Writes a dataset (FeatureSpec + TFRecord shards) from numpy arrays.

Building ``tf.train.Example`` protos in Python runs at a few thousand samples/s, which would make
every synthetic or converted dataset slow to produce. Instead the Example wire format is assembled with
numpy: every feature is an ``Int64List`` of varints, so a whole chunk of records is encoded at once and
only the final framing (one ``TFRecordWriter.write`` per record) stays in Python. The bytes are a valid
serialized ``tf.train.Example``; ``tf.io.parse_example`` reads them like any other.
"""

from __future__ import annotations

import os
import time
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from sim_tf.data import feature_spec as fs

LABEL = "label"
POSITION = "history_end"  # store-backed datasets: the sample's position in its user's history
STORE_FILE = "behaviors.npz"


def user_feature(index: int) -> str:
    return f"user_feat_{index}"


TARGET, HISTORY, NEGATIVE_HISTORY = "trgt", "pos", "neg"  # the roles of an item feature


def item_base(index: int) -> str:
    """The name item feature ``index``'s three features share before their role suffix."""
    return f"item_feat_{index}"


def item_feature(index: int, role: str) -> str:
    """The item feature ``index`` in ``role`` (TARGET, HISTORY or NEGATIVE_HISTORY)."""
    return f"{item_base(index)}_{role}"


def feature_names(num_user_features: int, num_item_features: int) -> list[str]:
    """Every feature of a dataset, named as the recipe's converter names them, in record order:
    label, user features, target item features, positive then negative history features."""
    return ([LABEL] + [user_feature(i) for i in range(num_user_features)]
            + [item_feature(i, role) for role in (TARGET, HISTORY, NEGATIVE_HISTORY) for i in range(num_item_features)])


def shard_file(split: str, index: int, prefix: str = "") -> str:
    return f"{split}/{prefix}part_{index:04d}.tfrecord"


def remainder_file(split: str, prefix: str = "") -> str:
    return f"{split}/{prefix}remainder.tfrecord"


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
    if width <= 4:  # every value below 2**28: 32-bit shifts stream half the bytes
        v = v.astype(np.uint32)
    out = np.empty(v.shape + (width,), dtype=np.uint8)
    for k in range(width):
        group = (v >> v.dtype.type(7 * k)).astype(np.uint8)  # bits 7k .. 7k + 7; the top one is set below
        if k == width - 1:
            np.bitwise_and(group, 0x7F, out=out[..., k])
        else:
            np.bitwise_or(group, 0x80, out=out[..., k])  # continuation bit
    return out.reshape(v.shape[0], -1)


def encode_varint(value: int) -> bytes:
    """A non-negative integer as a base-128 varint, low groups first: how protobuf (Examples here) and
    Thrift's compact protocol (parquet metadata, sim_tf.preprocess.byo_parquet) write integers."""
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
    return bytes([tag]) + encode_varint(length)


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


class ShardWriter:
    """Streams the samples of one split into ``parts`` TFRecord files of about equal size, P samples per
    record: ``SPLIT/part_0000.tfrecord`` ... in row order, and a final partial record (fewer than P
    samples) in ``SPLIT/remainder.tfrecord``, the recipe's layout. :meth:`close` returns the files written,
    relative to ``folder``."""

    def __init__(self, folder: str, split: str, total_rows: int, parts: int, prebatch: int, prefix: str = ""):
        import tensorflow as tf

        self.tf = tf
        self.folder = folder
        self.split = split
        self.prebatch = prebatch
        self.prefix = prefix  # file names SPLIT/PREFIXpart_0000.tfrecord: writers of one split side by side
        records = total_rows // prebatch
        self.parts = max(1, min(parts, records)) if records else 1
        self.bounds = (np.linspace(0, records, self.parts + 1).astype(np.int64) * prebatch)[1:]
        self.part = 0
        self.written = 0
        self.files: list[str] = []
        self.pending: dict[str, list[np.ndarray]] = {}
        self.pending_rows = 0
        self.writer = None
        tf.io.gfile.makedirs(os.path.join(folder, split))

    def _open(self):
        rel = shard_file(self.split, self.part, self.prefix)
        self.files.append(rel)
        self.writer = self.tf.io.TFRecordWriter(os.path.join(self.folder, rel))

    def add(self, columns: dict[str, np.ndarray]):
        for name, values in columns.items():
            self.pending.setdefault(name, []).append(values)
        self.pending_rows += len(next(iter(columns.values())))
        self._drain()

    def _drain(self):
        """Writes every whole record that fits the current parts; keeps the rest pending."""
        if not self.pending_rows:
            return
        merged = {k: v[0] if len(v) == 1 else np.concatenate(v) for k, v in self.pending.items()}
        n, offset = self.pending_rows, 0
        while self.part < self.parts:
            end = int(self.bounds[self.part])
            take = min(end - self.written, ((n - offset) // self.prebatch) * self.prebatch)
            if take <= 0:
                break
            if self.writer is None:
                self._open()
            chunk = {k: v[offset : offset + take].reshape(take // self.prebatch, -1) for k, v in merged.items()}
            for record in encode_examples(chunk):
                self.writer.write(record)
            offset += take
            self.written += take
            if self.written == end:
                self.writer.close()
                self.writer = None
                self.part += 1
        self.pending = {k: [v[offset:]] for k, v in merged.items()}
        self.pending_rows = n - offset

    def close(self) -> list[str]:
        self._drain()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.pending_rows:  # fewer than one record's worth: the recipe's remainder.tfrecord
            rest = {k: np.concatenate(v).reshape(1, -1) for k, v in self.pending.items()}
            rel = remainder_file(self.split, self.prefix)
            with self.tf.io.TFRecordWriter(os.path.join(self.folder, rel)) as writer:
                writer.write(encode_examples(rest)[0])
            self.files.append(rel)
            self.written += self.pending_rows
            self.pending, self.pending_rows = {}, 0
        return self.files


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
    chunk_rows: int = 65536,
    store=None,
) -> fs.FeatureSpec:
    """Writes ``splits`` (mapping -> feature name -> array) as TFRecord shards plus feature_spec.yaml.

    Feature names are :func:`feature_names`'. Rows are split into ``num_files`` contiguous shards
    (file order is row order) by :class:`ShardWriter`.

    With a ``store`` (sim_tf.data.behavior_store.BehaviorStore whose arrays are named :func:`item_base`),
    the dataset is store-backed: the store is written once to :data:`STORE_FILE`, the splits hold no
    history columns but :data:`POSITION`, every sample's reference is checked against the store, and
    ``history_length`` is the recent history assembled from it.
    Returns the validated FeatureSpec.
    """
    import tensorflow as tf

    tf.io.gfile.makedirs(output_dir)
    if store is not None:
        store.validate()
        for mapping, columns in splits.items():
            store.check_references(columns[user_feature(0)], columns[POSITION], where=f"split {mapping!r}")
        store.save(os.path.join(output_dir, STORE_FILE))
    files: dict[str, list[str]] = {}
    for mapping, columns in splits.items():
        count = num_files if isinstance(num_files, int) else num_files.get(mapping, 1)
        n = len(next(iter(columns.values())))
        for name, values in columns.items():
            if len(values) != n:
                raise ValueError(f"split {mapping!r}: column {name!r} has {len(values)} rows, expected {n}")
        started = time.perf_counter()
        writer = ShardWriter(output_dir, mapping, n, count, prebatch_size)
        for start in range(0, n, chunk_rows):
            writer.add({k: np.asarray(v[start:start + chunk_rows]) for k, v in columns.items()})
        files[mapping] = writer.close()
        if log is not None:
            elapsed = time.perf_counter() - started
            log(f"wrote {n} {mapping} samples in {len(files[mapping])} file(s), {n / max(elapsed, 1e-9):,.0f} samples/s")
    meta = dict(metadata or {})
    if prebatch_size > 1:
        meta["prebatch_size"] = int(prebatch_size)
    spec = make_feature_spec(
        user_cardinalities,
        item_cardinalities,
        history_length,
        train_files=files.get("train", []),
        test_files=files.get("test", []),
        metadata=meta,
        base_directory=output_dir,
        check_files=True,
        store=store is not None,
    )
    spec.to_yaml(os.path.join(output_dir, fs.DEFAULT_FEATURE_SPEC_NAME))
    return spec


def make_feature_spec(
    user_cardinalities: Iterable[int],
    item_cardinalities: Iterable[int],
    history_length: int,
    train_files: Iterable[str],
    test_files: Iterable[str],
    user_names: Iterable[str] | None = None,
    item_names: Iterable[str] | None = None,
    metadata: dict[str, Any] | None = None,
    base_directory: str = ".",
    check_files: bool = True,
    store: bool = False,
    category: int = 1,
) -> fs.FeatureSpec:
    """Builds a spec in the recipe converter's naming (``user_feat_0``, ``item_feat_0_trgt`` ...); with
    ``store``, a store-backed one (:data:`STORE_FILE`, samples referencing the first user feature, hard
    search on item feature ``category``)."""
    user_cardinalities = list(user_cardinalities)
    item_cardinalities = list(item_cardinalities)
    user_names = list(user_names) if user_names is not None else [user_feature(i) for i in range(len(user_cardinalities))]
    item_names = list(item_names) if item_names is not None else [item_base(i) for i in range(len(item_cardinalities))]
    feature_spec: dict[str, dict[str, Any]] = {LABEL: {"dtype": "bool"}}
    for name, card in zip(user_names, user_cardinalities):
        feature_spec[name] = {"dtype": "int64", "cardinality": int(card)}
    channel_spec: dict[str, list[str]] = {
        fs.LABEL_CHANNEL: [LABEL],
        fs.USER_FEATURES_CHANNEL: list(user_names),
        fs.TARGET_ITEM_FEATURES_CHANNEL: [],
        fs.POSITIVE_HISTORY_CHANNEL: [],
        fs.NEGATIVE_HISTORY_CHANNEL: [],
    }
    for name, card in zip(item_names, item_cardinalities):
        for channel, suffix in (
            (fs.TARGET_ITEM_FEATURES_CHANNEL, TARGET),
            (fs.POSITIVE_HISTORY_CHANNEL, HISTORY),
            (fs.NEGATIVE_HISTORY_CHANNEL, NEGATIVE_HISTORY),
        ):
            feature = f"{name}_{suffix}"
            props: dict[str, Any] = {"dtype": "int64", "cardinality": int(card)}
            if channel != fs.TARGET_ITEM_FEATURES_CHANNEL:
                props["dimensions"] = [int(history_length)]
            feature_spec[feature] = props
            channel_spec[channel].append(feature)
    order = [n for c in fs.CHANNELS for n in channel_spec[c]]
    sections = {}
    if store:
        feature_spec[POSITION] = {"dtype": "int64"}
        order = [n for n in order if n not in channel_spec[fs.POSITIVE_HISTORY_CHANNEL]
                 and n not in channel_spec[fs.NEGATIVE_HISTORY_CHANNEL]] + [POSITION]
        sections["behavior_store"] = {"file": STORE_FILE, "user": user_names[0], "position": POSITION,
                                      "arrays": list(item_names), "category": item_names[min(category, len(item_names) - 1)]}
    source_spec = {
        "train": [{"type": "tfrecord", "features": list(order), "files": list(train_files)}],
        "test": [{"type": "tfrecord", "features": list(order), "files": list(test_files)}],
    }
    return fs.FeatureSpec.from_dict(
        {"feature_spec": feature_spec, "source_spec": source_spec, "channel_spec": channel_spec, "metadata": metadata or {},
         **sections},
        base_directory=base_directory,
        check_files=check_files,
    )
