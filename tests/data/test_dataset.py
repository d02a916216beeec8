import collections
import os

import numpy as np
import pytest
import tensorflow as tf

from sim_tf.data import dataset as data
from sim_tf.data import feature_spec as fs
from sim_tf.data import inputs
from sim_tf.data import tfrecord_writer

L = 6
FEATURES = ["label", "user_feat_0", "item_feat_0_trgt", "item_feat_1_trgt", "item_feat_0_pos", "item_feat_1_pos",
            "item_feat_0_neg", "item_feat_1_neg"]


def _sample(i):
    """Sample i: user i, target 100+i, history of length i % 5 (+1) with items 10*i+t."""
    n = i % 5 + 1
    items = [0] * (L - n) + [10 * i + t for t in range(n)]
    cats = [0] * (L - n) + [1 + t % 3 for t in range(n)]
    return {
        "label": [i % 2],
        "user_feat_0": [i],
        "item_feat_0_trgt": [100 + i],
        "item_feat_1_trgt": [i % 3 + 1],
        "item_feat_0_pos": items,
        "item_feat_1_pos": cats,
        "item_feat_0_neg": [x + 1 if x else 0 for x in items],
        "item_feat_1_neg": cats,
    }


def _example(samples):
    feature = {}
    for name in FEATURES:
        values = [v for s in samples for v in s[name]]
        feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _hand_made(folder, n=40, files=4, prebatch=1, cardinality=1000):
    """Writes n samples with the protobuf API (not our writer): `files` shards, optional prebatching."""
    folder = str(folder)
    ids = list(range(1, n + 1))
    rel = {"train": [], "test": []}
    for mapping in rel:
        shards = np.array_split(ids, files)
        full = (n // prebatch) * prebatch
        for k, shard in enumerate(shards):
            shard = [i for i in shard if i <= full]
            name = f"{mapping}_{k}.tfrecord"
            with tf.io.TFRecordWriter(os.path.join(folder, name)) as w:
                for start in range(0, len(shard), prebatch):
                    w.write(_example([_sample(i) for i in shard[start : start + prebatch]]))
            rel[mapping].append(name)
        if full < n:
            with tf.io.TFRecordWriter(os.path.join(folder, f"{mapping}_remainder.tfrecord")) as w:
                w.write(_example([_sample(i) for i in ids[full:]]))
            rel[mapping].append(f"{mapping}_remainder.tfrecord")
    spec = tfrecord_writer.make_feature_spec([n + 1], [cardinality, 3], L, rel["train"], rel["test"], base_directory=folder)
    spec.to_yaml(os.path.join(folder, "feature_spec.yaml"))
    return fs.FeatureSpec.from_yaml(os.path.join(folder, "feature_spec.yaml"))


def _users(ds):
    return [int(u) for features, _ in ds for u in features["user_features"][0].numpy()]


@pytest.mark.parametrize("prebatch", [1, 4])
def test_reader_outputs_shapes_masks_and_split(tmp_path, prebatch):
    spec = _hand_made(tmp_path, n=42, prebatch=prebatch)
    ds = data.make_dataset(spec, "test", 8, options=data.InputOptions(long_seq_length=4))
    batches = list(ds)
    assert sum(int(label.shape[0]) for _, label in batches) == 42
    features, label = batches[0]
    assert label.dtype == tf.float32 and label.shape == (8,)
    assert [t.shape for t in features["user_features"]] == [(8,)]
    assert [t.shape for t in features["target_item_features"]] == [(8,), (8,)]
    assert [t.shape for t in features["long_history"]] == [(8, 4), (8, 4)]
    assert [t.shape for t in features["short_history"]] == [(8, 2), (8, 2)]
    assert [t.shape for t in features["short_neg_history"]] == [(8, 2), (8, 2)]
    assert features["long_history"][0].dtype == tf.int32
    assert features["long_history_mask"].dtype == tf.float32
    for features, label in batches:
        for row, user in enumerate(features["user_features"][0].numpy()):
            expected = _sample(int(user))
            history = np.concatenate([features["long_history"][0][row], features["short_history"][0][row]])
            np.testing.assert_array_equal(history, expected["item_feat_0_pos"])
            np.testing.assert_array_equal(features["short_neg_history"][0][row], expected["item_feat_0_neg"][4:])
            np.testing.assert_array_equal(features["short_neg_history"][1][row], expected["item_feat_1_neg"][4:])
            mask = np.concatenate([features["long_history_mask"][row], features["short_history_mask"][row]])
            np.testing.assert_array_equal(mask, (np.array(expected["item_feat_0_pos"]) > 0).astype(np.float32))
            assert features["target_item_features"][0][row] == 100 + user
            assert label[row] == user % 2


@pytest.mark.parametrize("prebatch", [1, 4])
def test_prediction_input_skips_the_negative_history_only(tmp_path, prebatch):
    spec = _hand_made(tmp_path, n=42, prebatch=prebatch)
    full = list(data.make_dataset(spec, "test", 8, options=data.InputOptions(long_seq_length=4)))
    lean = list(data.make_dataset(spec, "test", 8, options=data.InputOptions(long_seq_length=4, negative_history=False)))
    assert len(full) == len(lean)
    for (f_full, y_full), (f_lean, y_lean) in zip(full, lean):
        assert f_lean["short_neg_history"] == ()
        np.testing.assert_array_equal(y_full.numpy(), y_lean.numpy())
        for key in f_full:
            if key != "short_neg_history":
                tf.nest.map_structure(lambda a, b: np.testing.assert_array_equal(a.numpy(), b.numpy()),
                                      f_full[key], f_lean[key])


def test_test_mapping_keeps_file_order_and_drop_remainder(tmp_path):
    spec = _hand_made(tmp_path, n=42, prebatch=4)
    assert _users(data.make_dataset(spec, "test", 8, options=data.InputOptions(long_seq_length=4))) == list(range(1, 43))
    ds = data.make_dataset(spec, "test", 8, options=data.InputOptions(long_seq_length=4, drop_remainder=True))
    assert [int(label.shape[0]) for _, label in ds] == [8] * 5


@pytest.mark.parametrize("files,pipelines", [(4, 2), (4, 4), (2, 3), (1, 2)])
@pytest.mark.parametrize("prebatch", [1, 4])
def test_sharding_reads_every_sample_exactly_once(tmp_path, files, pipelines, prebatch):
    spec = _hand_made(tmp_path, n=50, files=files, prebatch=prebatch)
    seen = []
    for pipeline in range(pipelines):
        context = tf.distribute.InputContext(pipelines, pipeline, num_replicas_in_sync=pipelines)
        seen += _users(data.make_dataset(spec, "train", 4 * pipelines, context,
                                         data.InputOptions(long_seq_length=4, seed=7)))
    assert sorted(seen) == list(range(1, 51))


def test_per_replica_batch_and_divisibility(tmp_path):
    spec = _hand_made(tmp_path, n=40)
    context = tf.distribute.InputContext(1, 0, num_replicas_in_sync=2)
    ds = data.make_dataset(spec, "test", 8, context, data.InputOptions(long_seq_length=4))
    assert int(next(iter(ds))[1].shape[0]) == 4
    with pytest.raises(ValueError, match="not divisible by `num_replicas_in_sync` 2"):
        data.make_dataset(spec, "test", 7, context, data.InputOptions(long_seq_length=4))


def test_shuffling_differs_across_epochs_and_repeats_for_a_seed(tmp_path):
    spec = _hand_made(tmp_path, n=60, files=3)
    options = data.InputOptions(long_seq_length=4, seed=11, shuffle_buffer=64)
    ds = data.make_dataset(spec, "train", 10, options=options)
    first, second = _users(ds), _users(ds)
    assert sorted(first) == sorted(second) == list(range(1, 61))
    assert first != second
    again = data.make_dataset(spec, "train", 10, options=options)
    assert _users(again) == first and _users(again) == second
    assert _users(data.make_dataset(spec, "test", 10, options=options)) == list(range(1, 61))


def test_out_of_range_ids_are_reported_with_feature_and_value(tmp_path):
    spec = _hand_made(tmp_path, n=20, cardinality=110)  # targets run up to 120
    ds = data.make_dataset(spec, "test", 20, options=data.InputOptions(long_seq_length=4))
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        list(ds)
    error = inputs.explain_data_error(info.value)
    assert isinstance(error, inputs.DataError)
    assert str(error) == (
        "feature item_feat_0_trgt has ids outside 0..110; smallest and largest in the batch: 101 120 - fix the "
        "data, or set out_of_range_ids: oov in the FeatureSpec metadata to map such ids to an out-of-vocabulary row"
    )


def test_out_of_range_ids_map_to_oov_row_on_request(tmp_path):
    spec = _hand_made(tmp_path, n=20, cardinality=110)
    ds = data.make_dataset(spec, "test", 20, options=data.InputOptions(long_seq_length=4, out_of_range="oov"))
    (features, _), = list(ds)
    targets = features["target_item_features"][0].numpy()
    users = features["user_features"][0].numpy()
    np.testing.assert_array_equal(targets, np.where(100 + users > 110, 111, 100 + users))
    assert inputs.embedding_rows(110, "oov") == 112 and inputs.embedding_rows(110, "error") == 111


def test_spec_and_records_disagree(tmp_path):
    spec = _hand_made(tmp_path, n=8)
    raw = spec.to_dict()
    raw["feature_spec"]["item_feat_0_pos"]["dimensions"] = [7]
    raw["feature_spec"]["item_feat_0_neg"]["dimensions"] = [7]
    raw["feature_spec"]["item_feat_1_pos"]["dimensions"] = [7]
    raw["feature_spec"]["item_feat_1_neg"]["dimensions"] = [7]
    bad = fs.FeatureSpec.from_dict(raw, base_directory=str(tmp_path))
    with pytest.raises(inputs.DataError, match="feature 'item_feat_0_pos' holds 6 values for 1 sample"):
        data.make_dataset(bad, "train", 4, options=data.InputOptions(long_seq_length=4))
    with pytest.raises(ValueError, match="long_seq_length 6 must be between 1 and"):
        data.make_dataset(spec, "train", 4, options=data.InputOptions(long_seq_length=6))


def test_empty_and_corrupt_files(tmp_path):
    spec = _hand_made(tmp_path, n=8)
    open(spec.files("train")[0], "wb").close()
    with pytest.raises(inputs.DataError, match="holds no records"):
        data.make_dataset(spec, "train", 4, options=data.InputOptions(long_seq_length=4))
    with open(spec.files("train")[0], "wb") as f:
        f.write(b"this is not a tfrecord file at all")
    with pytest.raises(inputs.DataError, match="not a readable TFRecord file"):
        data.make_dataset(spec, "train", 4, options=data.InputOptions(long_seq_length=4))


def test_sample_count_from_metadata_and_by_scanning(tmp_path):
    spec = _hand_made(tmp_path, n=42, prebatch=4)
    assert data.sample_count(spec, "train") == 42
    spec.metadata["samples"] = {"train": 5}
    assert data.sample_count(spec, "train") == 5


def test_synthetic_tiny_reads(tiny_dataset):
    ds = data.make_dataset(tiny_dataset, "train", 256, options=data.InputOptions(long_seq_length=15, seed=1))
    counts = collections.Counter(int(label.shape[0]) for _, label in ds)
    assert sum(k * v for k, v in counts.items()) == 16384


def test_cache_serves_later_epochs_without_the_files(tmp_path):
    os.makedirs(tmp_path / "data")
    spec = _hand_made(tmp_path / "data", n=60, files=3)
    record_cache = {}
    # (prebatch_size given: detecting it would read a file)
    epoch = lambda seed: data.InputOptions(long_seq_length=4, seed=seed, shuffle_buffer=64, cache=True, prebatch_size=1)
    first = _users(data.make_dataset(spec, "train", 10, options=epoch(0), record_cache=record_cache))
    # A one-pass run where caching is allowed reads the files in the same order, without caching them.
    fixed = data.InputOptions(long_seq_length=4, seed=0, shuffle_buffer=64, fixed_file_order=True)
    assert _users(data.make_dataset(spec, "train", 10, options=fixed)) == first
    os.rename(tmp_path / "data", tmp_path / "moved")
    second = _users(data.make_dataset(spec, "train", 10, options=epoch(1), record_cache=record_cache))
    assert sorted(second) == sorted(first) == list(range(1, 61)) and second != first
    with pytest.raises(tf.errors.NotFoundError):  # nothing else could have served the second epoch
        _users(data.make_dataset(spec, "train", 10, options=epoch(1), record_cache={}))
