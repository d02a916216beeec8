import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sim_tf.data import dataset as data
from sim_tf.data import feature_spec as fs
from sim_tf.errors import UserError
from sim_tf.preprocess import convert

L = 4


def write_byo(folder, rows_per_split=(23, 7), names=("label", "uid", "item", "cat", "item_sequence", "cat_sequence",
                                                      "neg_item_sequence", "neg_cat_sequence"), bad=None):
    """Sample i: user i % 5 + 1, item i + 1, history of length i % 7 with items 1..n (longer than L for n > 4)."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "metadata.json"), "w") as f:
        json.dump({"cardinalities": [{"name": "uid", "value": 5}, {"name": "item", "value": 40},
                                     {"name": "cat", "value": 3}]}, f)
    for split, n in zip(("train", "test"), rows_per_split):
        os.makedirs(os.path.join(folder, split), exist_ok=True)
        hist = [list(range(1, i % 7 + 1)) for i in range(n)]
        columns = [
            [i % 2 for i in range(n)],
            [i % 5 + 1 for i in range(n)],
            [i + 1 for i in range(n)],
            [i % 3 + 1 for i in range(n)],
            hist,
            [[x % 3 + 1 for x in h] for h in hist],
            [[x + 1 for x in h] for h in hist],
            [[1] * len(h) for h in hist],
        ]
        if bad:
            bad(columns)
        table = pa.table({name: col for name, col in zip(names, columns)})
        half = n // 2
        pq.write_table(table.slice(0, half), os.path.join(folder, split, "part.0.parquet"))
        pq.write_table(table.slice(half), os.path.join(folder, split, "part.1.parquet"))


def expected_history(i):
    h = list(range(1, i % 7 + 1))[-L:]
    return [0] * (L - len(h)) + h


@pytest.mark.parametrize("mode,prebatch", [("by_position", 1), ("by_name", 4)])
def test_convert_by_position_and_by_name_then_read(tmp_path, mode, prebatch):
    names = ("label", "uid", "item", "cat", "item_sequence", "cat_sequence", "neg_item_sequence", "neg_cat_sequence")
    if mode == "by_position":
        names = tuple(f"col{i}" for i in range(8))  # names do not matter by position
    write_byo(tmp_path / "byo", names=names)
    out = str(tmp_path / "tf")
    spec = convert.convert(str(tmp_path / "byo"), out, 1, columns=mode, history_length=L, train_parts=3,
                           prebatch_size=prebatch, log=lambda s: None)
    assert spec.metadata["samples"] == {"train": 23, "test": 7}
    assert spec.user_cardinalities == [5] and [g.cardinality for g in spec.item_groups] == [40, 3]
    loaded = fs.FeatureSpec.from_yaml(os.path.join(out, "feature_spec.yaml"))
    if prebatch > 1:
        assert loaded.files("train")[-1].endswith("remainder.tfrecord")  # 23 = 5 records of 4 + 3
    ds = data.make_dataset(loaded, "test", 7, options=data.InputOptions(long_seq_length=2))
    (features, label), = list(ds)
    for row in range(7):
        item = int(features["target_item_features"][0][row])
        i = item - 1
        history = np.concatenate([features["long_history"][0][row], features["short_history"][0][row]])
        assert history.tolist() == expected_history(i)
        assert int(features["user_features"][0][row]) == i % 5 + 1 and float(label[row]) == i % 2
        neg = features["short_neg_history"][0][row].numpy().tolist()
        assert neg == [x + 1 if x else 0 for x in expected_history(i)][2:]
    train_items = [int(u) for f, _ in data.make_dataset(loaded, "train", 5, options=data.InputOptions(
        long_seq_length=2, shuffle=False)) for u in f["target_item_features"][0]]
    if prebatch == 1:
        assert train_items == list(range(1, 24))  # every row once, in order
    else:
        # Every row once; rows are shuffled within each source file's block before they share records.
        assert sorted(train_items) == list(range(1, 24)) and train_items != list(range(1, 24))
        assert sorted(train_items[:11]) == list(range(1, 12))  # part.0's rows stay before part.1's


def test_files_converted_in_parallel_on_dask_hold_the_same_rows(tmp_path):
    pytest.importorskip("distributed")
    from sim_tf.preprocess.events import Engine

    write_byo(tmp_path / "byo", names=("label", "uid", "item", "cat", "item_sequence", "cat_sequence",
                                       "neg_item_sequence", "neg_cat_sequence"))
    out = str(tmp_path / "tf")
    with Engine(workers=0, log=lambda s: None) as engine:  # the task path, in this process
        spec = convert.convert(str(tmp_path / "byo"), out, 1, columns="by_name", history_length=L, train_parts=4,
                               prebatch_size=4, log=lambda s: None, engine=engine)
    assert spec.metadata["samples"] == {"train": 23, "test": 7}
    # Two source files per split, each its own shards (and remainder): 11 rows = 2 x 4 + 3, 12 = 3 x 4.
    assert [os.path.basename(f) for f in spec.files("train")] == [
        "00000-part_0000.tfrecord", "00000-part_0001.tfrecord", "00000-remainder.tfrecord",
        "00001-part_0000.tfrecord", "00001-part_0001.tfrecord"]
    loaded = fs.FeatureSpec.from_yaml(os.path.join(out, "feature_spec.yaml"))
    train_items = [int(u) for f, _ in data.make_dataset(loaded, "train", 5, options=data.InputOptions(
        long_seq_length=2, shuffle=False)) for u in f["target_item_features"][0]]
    # Every row once, file by file (rows shuffled inside each file's block), exactly as in one process.
    assert sorted(train_items[:11]) == list(range(1, 12)) and sorted(train_items[11:]) == list(range(12, 24))


def test_out_of_range_ids_and_bad_columns_are_reported(tmp_path):
    def too_big(columns):
        columns[4][3] = [1, 41]

    write_byo(tmp_path / "a", bad=too_big)
    with pytest.raises(UserError, match=r"column 'item_sequence' holds id 41 outside 0..40"):
        convert.convert(str(tmp_path / "a"), str(tmp_path / "oa"), 1, history_length=L, log=lambda s: None)

    def swapped(columns):
        columns[3], columns[4] = columns[4], columns[3]

    write_byo(tmp_path / "b", bad=swapped)
    with pytest.raises(UserError, match="column 'cat' holds lists"):
        convert.convert(str(tmp_path / "b"), str(tmp_path / "ob"), 1, history_length=L, log=lambda s: None)
    write_byo(tmp_path / "c", names=("label", "uid", "item", "cat", "hist", "cat_sequence", "neg_item_sequence",
                                      "neg_cat_sequence"))
    with pytest.raises(UserError, match=r"has no column\(s\) \['item_sequence'\]"):
        convert.convert(str(tmp_path / "c"), str(tmp_path / "oc"), 1, columns="by_name", log=lambda s: None)
    with pytest.raises(UserError, match="--number_of_user_features 3 must leave at least one item feature"):
        convert.convert(str(tmp_path / "c"), str(tmp_path / "od"), 3, log=lambda s: None)
    with pytest.raises(UserError, match="metadata.json' does not exist"):
        convert.convert(str(tmp_path / "nothing"), str(tmp_path / "oe"), 1, log=lambda s: None)


def test_amazon_preprocess_output_converts_and_trains(tmp_path):
    """raw synthetic files -> preprocess -> convert -> one training epoch, through the CLI."""
    import subprocess
    import sys

    def sim_tf(*args):
        result = subprocess.run([sys.executable, "-m", "sim_tf", *args], capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        return result.stdout

    raw, parquet, tfrecord = tmp_path / "raw", tmp_path / "parquet", tmp_path / "tfrecord"
    sim_tf("synthesize", "--format", "amazon-raw", "--output", str(raw), "--users", "400", "--items", "3000",
           "--categories", "50")
    out = sim_tf("preprocess", "amazon", "--reviews", str(raw / "reviews_Books.json"), "--meta",
                 str(raw / "meta_Books.json"), "--output", str(parquet), "--train_parts", "2")
    assert "reviews/s" in out
    sim_tf("convert", "--input", str(parquet), "--output", str(tfrecord), "--number_of_user_features", "1",
           "--columns", "by_name", "--prebatch_size", "16")
    out = sim_tf("train", "--dataset_dir", str(tfrecord), "--model_type", "din", "--global_batch_size", "512",
                 "--epochs", "1", "--results_dir", str(tmp_path / "results"), "--embedding_dim", "8")
    assert "test AUC" in out


@pytest.mark.parametrize("rows", [
    [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]],  # one length, longer than L: the last L kept
    [[1, 2, 3], [4, 5, 6]],  # exactly L
    [[1, 2], [3, 4]],  # one length, shorter than L: left-padded
    [[], []],  # all empty
    [[1, 2, 3, 4, 5], [6], [], [7, 8, 9]],  # lengths differ
])
def test_pad_lists_keeps_the_last_values_right_aligned(rows):
    L = 3
    expected = np.zeros((len(rows), L), np.int64)
    for r, values in enumerate(rows):
        kept = values[-L:]
        expected[r, L - len(kept):] = kept
    column = pa.array(rows, pa.list_(pa.int32()))
    assert np.array_equal(convert.pad_lists(column, L, "h", "f.parquet"), expected)
    # a slice of a longer array (offsets that do not start at 0), as a record batch can be
    longer = pa.array([[99] * 6] + rows, pa.list_(pa.int32())).slice(1)
    assert np.array_equal(convert.pad_lists(longer, L, "h", "f.parquet"), expected)
