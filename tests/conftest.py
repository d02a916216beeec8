"""Shared fixtures. Tests run on CPU; TensorFlow's log noise is turned down before it is imported."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """The `tiny` synthetic preset, written once per test session (prebatched, 4 train shards)."""
    from sim_tf.data import synthetic

    path = tmp_path_factory.mktemp("tiny")
    spec = synthetic.synthesize(synthetic.PRESETS["tiny"], str(path), num_files=4, log=None)
    return spec


# ---- tiny models and hand-made batches for the model, layer and task tests ----
USERS = [30, 7]  # two user features
ITEMS = [50, 9, 4]  # three item features: not hard-wired to item + category


def _model_config():
    from sim_tf.models import models

    return models.ModelConfig(embedding_dim=4, stage_one_mlp_dims=(8,), stage_two_mlp_dims=(8, 4),
                              aux_mlp_dims=(6, 3), top_k=3)


def _make_features(batch=6, long=8, short=5, lengths=None, seed=0, left_pad_long=0, left_pad_short=0):
    """Random features; histories hold `lengths` real behaviours at the right end of long+short."""
    import tensorflow as tf

    from sim_tf.data import inputs

    rng = np.random.default_rng(seed)
    total = long + short
    lengths = rng.integers(0, total + 1, batch) if lengths is None else np.asarray(lengths)
    valid = np.arange(total)[None, :] >= (total - lengths)[:, None]
    pos = [np.where(valid, rng.integers(1, n + 1, (batch, total)), 0) for n in ITEMS]
    neg = [np.where(valid, rng.integers(1, n + 1, (batch, total)), 0) for n in ITEMS]

    def pad(x, width):
        return np.concatenate([np.zeros((batch, width), x.dtype), x], axis=1)

    long_ids = [pad(p[:, :long], left_pad_long) for p in pos]
    # Extra short padding only makes sense where the long part is empty: behaviours never move between parts.
    short_ids = [pad(p[:, long:], left_pad_short) for p in pos]
    features = {
        inputs.USER: tuple(tf.constant(rng.integers(1, n + 1, batch), tf.int32) for n in USERS),
        inputs.TARGET: tuple(tf.constant(rng.integers(1, n + 1, batch), tf.int32) for n in ITEMS),
        inputs.LONG_HISTORY: tuple(tf.constant(x, tf.int32) for x in long_ids),
        inputs.SHORT_HISTORY: tuple(tf.constant(x, tf.int32) for x in short_ids),
        inputs.SHORT_NEG_HISTORY: tuple(tf.constant(pad(n[:, long:], left_pad_short), tf.int32) for n in neg),
        inputs.LONG_MASK: tf.constant(long_ids[0] > 0, tf.float32),
        inputs.SHORT_MASK: tf.constant(short_ids[0] > 0, tf.float32),
    }
    labels = tf.constant(rng.integers(0, 2, batch), tf.float32)
    return features, labels


def _build(model_type, config=None, policy=None):
    """Builds a model; with ``policy`` every layer is created under that global dtype policy."""
    from sim_tf.models import models
    from sim_tf.train import precision

    config = config or _model_config()
    cls = {"sim": models.SIM, "dien": models.DIEN, "din": models.DIN}[model_type]
    with precision.global_dtype_policy(policy):
        return cls([u + 1 for u in USERS], [i + 1 for i in ITEMS], config)


@pytest.fixture
def model_config():
    """The tiny ModelConfig that ``build`` uses."""
    return _model_config()


@pytest.fixture
def make_features():
    """make_features(batch=6, long=8, short=5, lengths=None, seed=0, ...) -> (features, labels)."""
    return _make_features


@pytest.fixture
def build():
    """build(model_type, config=the tiny config, policy=None) -> a built model over USERS / ITEMS tables."""
    return _build


# Modules whose tests start subprocesses or train end to end; everything else (layer maths, models, data,
# the task and loop pieces) runs first, so a broken core fails within seconds.
# The longest first among them (test_faults.py builds its broken inputs and runs ~60 commands), so with
# several workers (setup.cfg) no worker is left with a long file at the end while the others idle.
_SLOW_MODULES = ("test_faults.py", "test_cli.py", "test_docs.py", "test_suite.py", "test_export.py", "test_trainer.py",
                 "test_lifelong.py", "test_distribute.py", "test_launch.py")


def pytest_collection_modifyitems(items):
    def rank(item):  # stable sort: file order kept within each group
        name = item.path.name
        return (1, _SLOW_MODULES.index(name)) if name in _SLOW_MODULES else (0, 0)

    items.sort(key=rank)


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per core, at most 4. Every worker holds a TensorFlow runtime and its own
    session fixtures, and the end-to-end tests start processes of their own."""
    return max(1, min(os.cpu_count() or 1, 4))
