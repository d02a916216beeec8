import numpy as np
import tensorflow as tf

from sim_tf.data import feature_spec as fs
from sim_tf.data import tfrecord_writer


def test_encoded_bytes_parse_as_examples_with_python_protobuf():
    rng = np.random.default_rng(3)
    columns = {
        "label": rng.integers(0, 2, 17),
        "ids": rng.integers(0, 2**40, 17),
        "negative": -rng.integers(1, 1000, 17),
        "hist": rng.integers(0, 300, (17, 9)),
        "k" * 300: np.zeros((17, 2), np.int64),  # a key longer than 127 bytes needs a 2-byte length
    }
    records = tfrecord_writer.encode_examples(columns)
    assert len(records) == 17
    for i, record in enumerate(records):
        example = tf.train.Example.FromString(record)
        for name, values in columns.items():
            assert list(example.features.feature[name].int64_list.value) == list(np.reshape(values[i], -1))


def test_encoded_bytes_parse_with_tensorflow():
    rng = np.random.default_rng(4)
    columns = {"a": rng.integers(0, 5_000_000, (64, 30)), "b": rng.integers(0, 3, 64)}
    records = tfrecord_writer.encode_examples(columns)
    parsed = tf.io.parse_example(
        tf.constant(records),
        {"a": tf.io.FixedLenFeature([30], tf.int64), "b": tf.io.FixedLenFeature([1], tf.int64)},
    )
    np.testing.assert_array_equal(parsed["a"].numpy(), columns["a"])
    np.testing.assert_array_equal(parsed["b"].numpy()[:, 0], columns["b"])


def _columns(n, L, rng):
    cols = {
        "label": rng.integers(0, 2, n),
        "user_feat_0": rng.integers(1, 8, n),
        "item_feat_0_trgt": rng.integers(1, 40, n),
        "item_feat_0_pos": rng.integers(0, 40, (n, L)),
        "item_feat_0_neg": rng.integers(0, 40, (n, L)),
    }
    return cols


def test_write_dataset_prebatched_puts_partial_batch_in_remainder(tmp_path):
    rng = np.random.default_rng(5)
    splits = {"train": _columns(70, 6, rng), "test": _columns(16, 6, rng)}
    spec = tfrecord_writer.write_dataset(str(tmp_path), splits, [7], [39], 6, num_files=2, prebatch_size=8)
    assert [f.rsplit("/", 1)[-1] for f in spec.files("train")] == ["part_0000.tfrecord", "part_0001.tfrecord",
                                                                    "remainder.tfrecord"]
    assert spec.metadata["prebatch_size"] == 8
    loaded = fs.FeatureSpec.from_yaml(str(tmp_path / "feature_spec.yaml"))
    assert loaded == spec
    labels = []
    for path in spec.files("train"):
        for record in tf.data.TFRecordDataset(path):
            example = tf.train.Example.FromString(record.numpy())
            labels.extend(example.features.feature["label"].int64_list.value)
            pos = example.features.feature["item_feat_0_pos"].int64_list.value
            assert len(pos) == 6 * len(example.features.feature["label"].int64_list.value)
    np.testing.assert_array_equal(labels, splits["train"]["label"])
