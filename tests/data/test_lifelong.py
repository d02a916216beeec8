"""Store-backed (lifelong) datasets end to end: the writer, the pipeline against the padded format, the
planted signal's age, training with either search unit, and serving parity."""

import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf

from sim_tf.data import behavior_store as bs
from sim_tf.data import dataset as data
from sim_tf.data import feature_spec as fs
from sim_tf.data import inputs, synthetic
from sim_tf.data import tfrecord_writer as tw
from sim_tf.errors import UserError

SMALL = synthetic.LifelongConfig(users=40, items=3000, categories=30, max_history=1500, min_history=1200,
                                 recent_span=1000, samples_per_user=20, short_length=6, seed=3)
LONG = 200  # --max_long_history used by these tests


@pytest.fixture(scope="module")
def lifelong(tmp_path_factory):
    path = tmp_path_factory.mktemp("lifelong")
    return synthetic.synthesize_lifelong(SMALL, str(path), num_files=2, prebatch_size=8, log=None)


def padded_twin(spec: fs.FeatureSpec, folder: str) -> fs.FeatureSpec:
    """The same samples written in the padded format, histories assembled by numpy from the store."""
    store = bs.BehaviorStore.load(spec.store.file)
    short, length = spec.history_length, LONG + spec.history_length
    splits = {}
    for mapping in ("train", "test"):
        ds = tf.data.TFRecordDataset(spec.files(mapping)).map(
            lambda r: tf.io.parse_single_example(r, {n: tf.io.VarLenFeature(tf.int64) for n in spec.record_features()}))
        columns = {n: [] for n in spec.record_features()}
        for parsed in ds:
            for n in columns:
                columns[n].append(tf.sparse.to_dense(parsed[n]).numpy())
        columns = {n: np.concatenate(v) for n, v in columns.items()}
        users, ends = columns.pop(tw.user_feature(0)), columns.pop(tw.POSITION)
        for i, array in enumerate(spec.store.arrays):
            rows = []
            for u, e in zip(users, ends):
                lo = store.offsets[u]
                kept = store.features[array][lo + max(0, e - length): lo + e]
                rows.append(np.concatenate([np.zeros(length - kept.size, np.int64), kept]))
            columns[tw.item_feature(i, tw.HISTORY)] = np.stack(rows)
            columns[tw.item_feature(i, tw.NEGATIVE_HISTORY)] = np.stack(rows)  # unused: inference only
        columns[tw.user_feature(0)] = users
        splits[mapping] = columns
    del short
    return tw.write_dataset(folder, splits, [SMALL.users], [SMALL.items, SMALL.categories], length,
                            prebatch_size=8)


def test_soft_search_on_the_store_equals_soft_search_on_the_same_histories_padded(lifelong, tmp_path):
    from sim_tf.models import models

    padded = padded_twin(lifelong, str(tmp_path / "padded"))
    store_ds = data.make_dataset(lifelong, "test", 64, options=data.InputOptions(
        shuffle=False, gsu="soft", max_long_history=LONG, negative_history=False))
    padded_ds = data.make_dataset(padded, "test", 64, options=data.InputOptions(
        shuffle=False, long_seq_length=LONG, negative_history=False))
    model = models.build_model("sim", models.ModelConfig(embedding_dim=4, top_k=20), lifelong)
    batches = 0
    for (a, la), (b, lb) in zip(store_ds, padded_ds):
        np.testing.assert_array_equal(la, lb)
        for key in (inputs.USER, inputs.TARGET, inputs.LONG_HISTORY, inputs.SHORT_HISTORY):
            for x, y in zip(a[key], b[key]):
                np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(a[inputs.LONG_MASK], b[inputs.LONG_MASK])
        np.testing.assert_array_equal(a[inputs.SHORT_MASK], b[inputs.SHORT_MASK])
        np.testing.assert_array_equal(model(a)["prediction"], model(b)["prediction"])
        batches += 1
    assert batches == -(-lifelong.metadata["samples"]["test"] // 64)


def test_the_planted_signal_is_older_than_the_last_thousand_behaviours():
    store, splits = synthetic.generate_lifelong(SMALL)
    cols = splits["train"]
    cats = store.features["item_feat_1"]
    recent_hits, old_hits = {0: [], 1: []}, {0: [], 1: []}
    for label, u, e, c in zip(cols[tw.LABEL], cols[tw.user_feature(0)], cols[tw.POSITION],
                              cols[tw.item_feature(1, tw.TARGET)]):
        lo = store.offsets[u]
        recent = cats[lo + e - SMALL.recent_span: lo + e]
        old = cats[lo: lo + e - SMALL.recent_span]
        recent_hits[label].append(np.mean(recent == c))
        old_hits[label].append(np.mean(old == c))
    # Older behaviours share the positive target's category far more often than the negative's ...
    assert np.mean(old_hits[1]) > 3 * np.mean(old_hits[0])
    # ... while the last 1,000 hold positives' and negatives' categories alike (session pairs aside, whose
    # targets come from the last few behaviours: a small, equal share on both sides).
    assert abs(np.mean(recent_hits[1]) - np.mean(recent_hits[0])) < 0.25 * np.mean(recent_hits[0])


@pytest.mark.parametrize("gsu", ["soft", "hard", "eta", "sdim", "twin"])
def test_a_long_history_model_trains_and_serves_what_it_was_trained_on(lifelong, tmp_path, gsu):
    from sim_tf.serve import export, predict
    from sim_tf.train import train_lib
    from sim_tf.train.config import TrainConfig
    from sim_tf.models.config import default_head_batch_norm
    from sim_tf.models.models import ModelConfig

    # Each unit with its default head (batch-normalised for all but soft), as `sim-tf train --gsu` builds it.
    model_config = ModelConfig(embedding_dim=4, top_k=16, gsu=gsu, head_batch_norm=default_head_batch_norm("sim", gsu))
    config = TrainConfig(dataset_dir=lifelong.base_directory, global_batch_size=256, epochs=1,
                         model=model_config, max_long_history=LONG,
                         results_dir=str(tmp_path / "run"), seed=1)
    trainer = train_lib.create_trainer(config, echo=None)
    summary = train_lib.run_mode(trainer)
    assert np.isfinite(summary["train_loss"]) and 0.0 <= summary["test_auc"] <= 1.0
    model = trainer.model
    features, _ = next(iter(data.make_dataset(lifelong, "test", 128, options=trainer.task.input_options("test", 0))))
    expected = model(features, training=False)["prediction"].numpy()
    out = str(tmp_path / "saved")
    export.export(model, lifelong, config.long_history_positions, out,
                  extra={"gsu": gsu, "max_long_history": LONG})
    rows = os.path.join(tmp_path, "pred.csv")
    predict.predict(out, lifelong.base_directory, rows, batch_size=128)
    got = np.loadtxt(rows, delimiter=",", skiprows=1, usecols=3)[:128]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_bad_flags_and_specs_for_store_datasets_are_named(lifelong, tiny_dataset, tmp_path):
    from sim_tf.models.models import ModelConfig
    from sim_tf.train.config import TrainConfig

    with pytest.raises(UserError, match="--top_k 300 is larger than --max_long_history 200"):
        TrainConfig(dataset_dir="x", model=ModelConfig(top_k=300, gsu="hard"), max_long_history=200).validate_for(lifelong)
    with pytest.raises(UserError, match="--gsu hard needs a behaviour-store dataset"):
        TrainConfig(dataset_dir="x", model=ModelConfig(gsu="hard")).validate_for(tiny_dataset)
    raw = lifelong.to_dict()
    raw["behavior_store"]["category"] = "nope"
    with pytest.raises(fs.FeatureSpecError, match="behavior_store.category is 'nope'"):
        fs.FeatureSpec.from_dict(raw, lifelong.base_directory)
    raw = lifelong.to_dict()
    raw["behavior_store"]["file"] = "missing.npz"
    with pytest.raises(fs.FeatureSpecError, match="behaviour store .*missing.npz' does not exist"):
        fs.FeatureSpec.from_dict(raw, lifelong.base_directory)


def test_a_store_that_no_longer_matches_its_samples_stops_training_with_one_message(lifelong, tmp_path):
    """Samples drawn at positions the (rewritten) store no longer holds: a DataError naming the user and
    the position, before any step is trained on a broken history; broken stores are named at load."""
    import shutil

    from sim_tf.data.inputs import DataError
    from sim_tf.models.models import ModelConfig
    from sim_tf.train import train_lib
    from sim_tf.train.config import TrainConfig

    folder = tmp_path / "data"
    shutil.copytree(lifelong.base_directory, folder)
    store = bs.BehaviorStore.load(str(folder / tw.STORE_FILE))
    keep = store.offsets[:-1] + np.minimum(np.diff(store.offsets), 100)  # every user's first 100 behaviours
    rows = np.concatenate([np.arange(a, b) for a, b in zip(store.offsets[:-1], keep)])
    short = bs.BehaviorStore(np.concatenate([[0], np.cumsum(keep - store.offsets[:-1])]),
                             {k: v[rows] for k, v in store.features.items()}, store.timestamps[rows])
    short.save(str(folder / tw.STORE_FILE))
    config = TrainConfig(dataset_dir=str(folder), global_batch_size=256, epochs=1, max_long_history=LONG,
                         model=ModelConfig(embedding_dim=4, top_k=16), results_dir=str(tmp_path / "run"))
    bs._LOADED.clear()
    with pytest.raises(DataError, match=r"a sample references user \d+ at history position \d+ but the behaviour "
                                        r"store holds 100 behaviours for that user"):
        train_lib.run_mode(train_lib.create_trainer(config, echo=None))
    assert not os.path.exists(tmp_path / "run" / "checkpoints")

    backwards = bs.BehaviorStore(short.offsets, short.features, short.timestamps[::-1].copy())
    backwards.save(str(folder / tw.STORE_FILE))
    bs._LOADED.clear()
    with pytest.raises(DataError, match="timestamps go back in time"):
        train_lib.run_mode(train_lib.create_trainer(dataclasses.replace(config, results_dir=str(tmp_path / "r2")), echo=None))
    ids = dict(short.features)
    ids["item_feat_1"] = ids["item_feat_1"].copy()
    ids["item_feat_1"][3] = SMALL.categories + 5
    bs.BehaviorStore(short.offsets, ids, short.timestamps).save(str(folder / tw.STORE_FILE))
    bs._LOADED.clear()
    with pytest.raises(DataError, match=f"array 'item_feat_1' holds id {SMALL.categories + 5} outside 1..{SMALL.categories}"):
        train_lib.run_mode(train_lib.create_trainer(dataclasses.replace(config, results_dir=str(tmp_path / "r3")), echo=None))


@pytest.mark.parametrize("gsu", ["hard", "eta"])
def test_two_replicas_mixed_precision_and_a_checkpoint_on_a_store_dataset(lifelong, tmp_path, gsu):
    """`sim-tf train` with MirroredStrategy over two CPU replicas and --amp on store-backed data (a
    subprocess: the CPU must be split before TensorFlow starts); `sim-tf evaluate` of the saved checkpoint
    reproduces the run's own test AUC (for ETA: its fixed hyperplanes are saved and restored too; both units
    batch-normalise their heads by default, so the running statistics are too)."""
    import json
    import subprocess
    import sys

    def run(command, results, *extra):
        args = [sys.executable, "-m", "sim_tf", command, f"--dataset_dir={lifelong.base_directory}",
                f"--results_dir={results}", f"--gsu={gsu}", f"--max_long_history={LONG}", "--top_k=16",
                "--embedding_dim=4", "--global_batch_size=256", "--seed=2", "--strategy=mirrored",
                "--cpu_replicas=2", "--amp", *extra]
        done = subprocess.run(args, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
        assert done.returncode == 0, done.stdout + done.stderr
        with open(os.path.join(results, "log.json")) as f:
            return [json.loads(line) for line in f if '"summary"' in line][-1]

    trained = run("train", tmp_path / "run", "--epochs=1", f"--save_checkpoint_path={tmp_path / 'ckpt'}")
    # hard and ETA normalise their heads unless told otherwise; evaluate resolves the same default.
    with open(tmp_path / "run" / "config.json") as f:
        assert json.load(f)["model"]["head_batch_norm"] is True
    evaluated = run("evaluate", tmp_path / "eval", f"--load_checkpoint_path={tmp_path / 'ckpt'}")
    assert evaluated["test_auc"] == pytest.approx(trained["test_auc"], abs=1e-6)
