"""Shared fixtures. Tests run on CPU; TensorFlow's log noise is turned down before it is imported."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """The `tiny` synthetic preset, written once per test session (prebatched, 4 train shards)."""
    from sim_tf.data import synthetic

    path = tmp_path_factory.mktemp("tiny")
    spec = synthetic.synthesize(synthetic.PRESETS["tiny"], str(path), num_files=4, log=None)
    return spec
