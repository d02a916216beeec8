"""Export -> load in a fresh process with TensorFlow only -> identical predictions; batch prediction."""

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from sim_tf.data import dataset as data
from sim_tf.data import inputs
from sim_tf.models import models
from sim_tf.train.metrics import roc_auc
from sim_tf.train.checkpoints import variables_by_path

FLAGS = ["--long_seq_length=15", "--top_k=8", "--embedding_dim=8"]


def sim_tf(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "sim_tf", *args], capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"sim-tf {' '.join(args)}: {result.returncode}\n{result.stdout}\n{result.stderr[-4000:]}")
    return result


def raw_test_batch(spec, n=300):
    """The first n test samples as raw int64 arrays, keyed by feature name."""
    ds = data.make_dataset(spec, "test", n, options=data.InputOptions(long_seq_length=15))
    features, label = next(iter(ds))
    raw = {}
    for name, ids in zip(spec.user_features, features[inputs.USER]):
        raw[name] = ids.numpy().astype(np.int64)
    for name, ids in zip(spec.target_item_features, features[inputs.TARGET]):
        raw[name] = ids.numpy().astype(np.int64)
    for name, long, short in zip(spec.positive_history_features, features[inputs.LONG_HISTORY], features[inputs.SHORT_HISTORY]):
        raw[name] = np.concatenate([long.numpy(), short.numpy()], axis=1).astype(np.int64)
    return raw, features, label.numpy()


@pytest.fixture(scope="module")
def exported(tiny_dataset, tmp_path_factory):
    """A randomly initialised checkpoint of each model, exported with `sim-tf export`."""
    out = {}
    root = tmp_path_factory.mktemp("export")
    for model_type in models.MODEL_TYPES:
        tf.keras.utils.set_random_seed(7)
        model = models.build_model(model_type, models.ModelConfig(embedding_dim=8, top_k=8), tiny_dataset)
        ckpt = tf.train.Checkpoint(model=variables_by_path(model)).save(str(root / model_type / "ckpt"))
        target = root / f"{model_type}_saved"
        sim_tf("export", f"--dataset_dir={tiny_dataset.base_directory}", f"--model_type={model_type}",
               f"--load_checkpoint_path={ckpt}", f"--output={target}", *FLAGS)
        out[model_type] = (model, str(target))
    return out


LOADER = """
import json, sys
import numpy as np
import tensorflow as tf
inputs = dict(np.load(sys.argv[2]))
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
np.save(sys.argv[3], serve(**{k: tf.constant(v) for k, v in inputs.items()})["probability"].numpy())
"""


@pytest.mark.parametrize("model_type", models.MODEL_TYPES)
def test_exported_model_predicts_like_the_trainer_in_a_fresh_process(exported, tiny_dataset, tmp_path, model_type):
    model, saved = exported[model_type]
    raw, features, _ = raw_test_batch(tiny_dataset)
    expected = model(features, training=False)["prediction"].numpy()
    np.savez(tmp_path / "inputs.npz", **raw)
    # A process that imports only TensorFlow and numpy (no sim_tf).
    subprocess.run([sys.executable, "-c", LOADER, saved, str(tmp_path / "inputs.npz"), str(tmp_path / "out.npy")],
                   check=True, timeout=300, env={**os.environ, "PYTHONPATH": ""}, cwd=tmp_path)
    got = np.load(tmp_path / "out.npy")
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    description = json.load(open(os.path.join(saved, "sim_tf_export.json")))
    assert description["inputs"]["item_feat_0_pos"]["shape"] == ["batch", 20]


def test_out_of_range_ids_at_serving_are_an_error_naming_the_feature(exported, tiny_dataset):
    _, saved = exported["din"]
    serve = tf.saved_model.load(saved).signatures["serving_default"]
    raw, _, _ = raw_test_batch(tiny_dataset, n=4)
    raw["item_feat_0_trgt"][1] = 999_999
    with pytest.raises(tf.errors.InvalidArgumentError, match="feature item_feat_0_trgt has ids outside 0..2000"):
        serve(**{k: tf.constant(v) for k, v in raw.items()})


def test_predict_on_tfrecord_and_parquet(exported, tiny_dataset, tmp_path):
    model, saved = exported["sim"]
    out = sim_tf("predict", "--model", saved, "--input", tiny_dataset.base_directory, "--output",
                 str(tmp_path / "p.parquet")).stdout
    assert "wrote 2,048 predictions" in out
    table = pq.read_table(tmp_path / "p.parquet").to_pydict()
    assert sorted(table) == ["item", "label", "probability", "user"] and len(table["probability"]) == 2048
    ds = data.make_dataset(tiny_dataset, "test", 2048, options=data.InputOptions(long_seq_length=15))
    features, label = next(iter(ds))
    expected = model(features, training=False)["prediction"].numpy()
    np.testing.assert_allclose(table["probability"], expected, rtol=1e-5, atol=1e-6)
    assert roc_auc(table["label"], table["probability"]) == pytest.approx(roc_auc(label.numpy(), expected), abs=1e-6)

    # The same rows as a BYO parquet folder (columns by position), predicted to CSV.
    raw, _, labels = raw_test_batch(tiny_dataset, n=2048)
    byo = tmp_path / "byo"
    os.makedirs(byo / "test")
    columns = {"label": labels.astype(np.int64), "uid": raw["user_feat_0"], "item": raw["item_feat_0_trgt"],
               "cat": raw["item_feat_1_trgt"], "item_seq": list(raw["item_feat_0_pos"]),
               "cat_seq": list(raw["item_feat_1_pos"]), "neg_item_seq": list(raw["item_feat_0_pos"]),
               "neg_cat_seq": list(raw["item_feat_1_pos"])}
    pq.write_table(pa.table(columns), byo / "test" / "part.0.parquet")
    with open(byo / "metadata.json", "w") as f:
        json.dump({"cardinalities": [{"name": "uid", "value": 200}, {"name": "item", "value": 2000},
                                     {"name": "cat", "value": 100}]}, f)
    sim_tf("predict", "--model", saved, "--input", str(byo), "--output", str(tmp_path / "p.csv"))
    lines = open(tmp_path / "p.csv").read().splitlines()
    assert lines[0] == "user,item,label,probability" and len(lines) == 2049
    csv_probability = np.array([float(line.split(",")[3]) for line in lines[1:]])
    np.testing.assert_allclose(csv_probability, table["probability"], rtol=1e-5)


def test_predict_and_export_errors(exported, tiny_dataset, tmp_path):
    result = sim_tf("predict", "--model", str(tmp_path), "--input", tiny_dataset.base_directory, "--output",
                    str(tmp_path / "x.parquet"), check=False)
    assert result.returncode == 1 and "is not a SavedModel folder" in result.stderr
    result = sim_tf("predict", "--model", exported["din"][1], "--input", tiny_dataset.base_directory, "--output",
                    str(tmp_path / "x.json"), check=False)
    assert "must end in .parquet or .csv" in result.stderr and not os.path.exists(tmp_path / "x.json")
    result = sim_tf("export", f"--dataset_dir={tiny_dataset.base_directory}", "--model_type=din",
                    f"--load_checkpoint_path={tmp_path}", f"--output={tmp_path / 'e'}", *FLAGS, check=False)
    assert "holds no checkpoint" in result.stderr


@pytest.mark.parametrize("model_type", ["sim", "din"])
def test_serving_and_training_pipelines_give_identical_predictions_for_the_same_records(tiny_dataset, model_type):
    """The same test records, read raw (as `sim-tf predict` reads them) through the serving function, and
    through the training input pipeline into the model: both build the inputs with one function."""
    from sim_tf.serve import export as serve_export
    from sim_tf.serve import predict as serve_predict

    tf.keras.utils.set_random_seed(3)
    model = models.build_model(model_type, models.ModelConfig(embedding_dim=8, top_k=8), tiny_dataset)
    module = serve_export.ServingModule(model, tiny_dataset, 15, tiny_dataset.out_of_range_ids)
    names = tiny_dataset.user_features + tiny_dataset.target_item_features + tiny_dataset.positive_history_features
    raw, label_name = next(serve_predict.tfrecord_batches(tiny_dataset.base_directory, "test", 2048, names))
    served = module.serve({n: tf.constant(raw[n], tf.int64) for n in names})["probability"].numpy()
    features, labels = next(iter(data.make_dataset(tiny_dataset, "test", 2048, options=data.InputOptions(
        long_seq_length=15, negative_history=False))))
    trained = tf.function(lambda f: model(f, training=False)["prediction"])(features).numpy()
    np.testing.assert_array_equal(labels.numpy(), raw[label_name].astype(np.float32))
    # The contract: what the model is given is identical, bit for bit, on both paths.
    built = inputs.model_inputs({n: tf.constant(raw[n], tf.int64) for n in names}, tiny_dataset, 15,
                                tiny_dataset.out_of_range_ids)
    tf.nest.map_structure(lambda a, b: np.testing.assert_array_equal(a.numpy(), b.numpy()), built, features)
    # The predictions come from two separately compiled graphs, whose fused kernels may round the last bit
    # differently (SIM: 10 of 2,048 samples 1 ulp apart).
    assert served.shape == trained.shape == (2048,)
    np.testing.assert_allclose(served, trained, rtol=1e-6, atol=0)
