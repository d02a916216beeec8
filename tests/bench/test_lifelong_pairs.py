"""The lifelong preset's pair kinds (sim_tf.bench.lifelong_pairs): what each kind is, that asking for the
kinds leaves the data unchanged, and the AUC split of a predictions file."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet
import pytest
import yaml

from sim_tf.bench import lifelong_pairs
from sim_tf.data import synthetic
from sim_tf.data import tfrecord_writer as tw

SMALL = synthetic.LifelongConfig(users=40, items=3000, categories=30, max_history=1500, min_history=1200,
                                 recent_span=1000, samples_per_user=20, short_length=6, seed=3)


def test_kinds_leave_the_data_unchanged_and_mean_what_they_say():
    store, splits = synthetic.generate_lifelong(SMALL)
    store_k, splits_k, kinds = synthetic.generate_lifelong(SMALL, pair_kinds=True)
    np.testing.assert_array_equal(store.offsets, store_k.offsets)
    for split in ("train", "test"):
        for name, values in splits[split].items():
            np.testing.assert_array_equal(values, splits_k[split][name])
    cols, long_term = splits["train"], kinds["train"]
    assert long_term.dtype == bool and long_term.size == cols[tw.LABEL].size and 0.3 < long_term.mean() < 0.7
    cats = store.features["item_feat_1"]
    newest = cats[store.offsets[cols[tw.user_feature(0)]] + cols[tw.POSITION] - 1]
    same_as_newest = cols[tw.item_feature(1, tw.TARGET)] == newest
    positive = cols[tw.LABEL] == 1
    # A session pair's positive is an item of the newest behaviour's category, always; a long-term pair's
    # positive is one of the user's interests, which the newest (a one-off category) rarely is.
    assert same_as_newest[positive & ~long_term].all()
    assert same_as_newest[positive & long_term].mean() < 0.2


def test_split_by_kind_reads_each_kind_alone():
    labels = np.array([1, 0, 1, 0, 1, 0, 1, 0])
    long_term = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    # Long-term pairs perfectly ordered, session pairs perfectly inverted.
    probabilities = np.array([0.9, 0.1, 0.8, 0.2, 0.3, 0.7, 0.4, 0.6])
    result = lifelong_pairs.split_by_kind(labels, probabilities, long_term)
    assert result["auc_long_term"] == 1.0 and result["auc_session"] == 0.0
    assert result["long_term_samples"] == 4 and result["session_samples"] == 4


@pytest.fixture(scope="module")
def lifelong(tmp_path_factory):
    path = tmp_path_factory.mktemp("lifelong")
    return synthetic.synthesize_lifelong(SMALL, str(path), num_files=2, prebatch_size=8, log=None)


def test_main_splits_a_predictions_file_in_file_order(lifelong, tmp_path, capsys):
    _, splits, kinds = synthetic.generate_lifelong(SMALL, pair_kinds=True)
    cols = splits["test"]
    # A "model" that knows the long-term pairs' answers and guesses the session pairs'.
    rng = np.random.default_rng(0)
    probability = np.where(kinds["test"], cols[tw.LABEL] * 0.5 + 0.25, rng.random(cols[tw.LABEL].size))
    frame = {"user": cols[tw.user_feature(0)], "item": cols[tw.item_feature(0, tw.TARGET)],
             "label": cols[tw.LABEL], "probability": probability}
    good = tmp_path / "predictions.parquet"
    pyarrow.parquet.write_table(pa.table(frame), good)
    assert lifelong_pairs.main(["--dataset_dir", lifelong.base_directory, str(good)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["auc_long_term"] == 1.0 and 0.2 < result["auc_session"] < 0.8
    shuffled = tmp_path / "shuffled.csv"
    order = rng.permutation(probability.size)
    pyarrow.csv.write_csv(pa.table({k: v[order] for k, v in frame.items()}), shuffled)
    assert lifelong_pairs.main(["--dataset_dir", lifelong.base_directory, str(shuffled)]) == 2
    assert "not the test split" in capsys.readouterr().err
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[:100])
    assert lifelong_pairs.main(["--dataset_dir", lifelong.base_directory, str(truncated)]) == 2
    assert "not a readable" in capsys.readouterr().err


def test_main_names_a_dataset_that_is_not_lifelong(lifelong, tmp_path, capsys):
    """A valid feature spec whose generator is not the lifelong one (here: none recorded)."""
    spec = lifelong.to_dict()
    spec["metadata"].pop("generator")
    (tmp_path / "feature_spec.yaml").write_text(yaml.safe_dump(spec))
    assert lifelong_pairs.main(["--dataset_dir", str(tmp_path), "p.parquet"]) == 2
    assert "not written by `sim-tf synthesize --preset lifelong`" in capsys.readouterr().err
