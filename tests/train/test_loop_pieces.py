"""The trainer's pieces, in-process: inner-loop chunking, steps per epoch, precision, the run log and
checkpoints of the training state."""

import json

import numpy as np
import pytest
import tensorflow as tf

from sim_tf.errors import UserError
from sim_tf.train.checkpoints import TrainingCheckpoints, variables_by_path
from sim_tf.train.config import TrainConfig
from sim_tf.train.measure import percentiles, weights_digest
from sim_tf.train.precision import resolve_precision
from sim_tf.train.run_log import Profiler, RunLog, read_log
from sim_tf.train.trainer import next_chunk, steps_per_epoch


def config(**overrides):
    return TrainConfig(dataset_dir="d", **overrides)


@pytest.mark.parametrize("overrides,step,expected", [
    ({"steps_per_loop": 1}, 0, 1),
    ({"steps_per_loop": 50, "log_every_steps": 100}, 0, 50),
    ({"steps_per_loop": 50, "log_every_steps": 100}, 80, 20),  # stops at the log boundary
    ({"steps_per_loop": 50, "log_every_steps": 100, "eval_every_steps": 30}, 0, 30),
    ({"steps_per_loop": 50, "log_every_steps": 100, "checkpoint_every_steps": 7}, 12, 2),
    ({"steps_per_loop": 50, "log_every_steps": 100, "profile_steps": (10, 13)}, 4, 6),  # profiler starts at 10
    ({"steps_per_loop": 50, "log_every_steps": 100, "profile_steps": (10, 13)}, 10, 3),  # and stops at 13
    ({"steps_per_loop": 50, "log_every_steps": 100, "profile_steps": (10, 13)}, 13, 50),
    # --benchmark: log/eval boundaries do not apply; warm-up and the end of the timed steps do
    ({"steps_per_loop": 8, "benchmark": True, "benchmark_warmup_steps": 5, "benchmark_steps": 10, "log_every_steps": 2}, 0, 5),
    ({"steps_per_loop": 8, "benchmark": True, "benchmark_warmup_steps": 5, "benchmark_steps": 10}, 5, 8),
    ({"steps_per_loop": 8, "benchmark": True, "benchmark_warmup_steps": 5, "benchmark_steps": 10}, 13, 2),
])
def test_next_chunk_stops_at_every_boundary(overrides, step, expected):
    assert next_chunk(config(**overrides), step) == expected


def test_steps_per_epoch_counts_the_partial_batch_unless_dropped():
    assert steps_per_epoch(config(global_batch_size=512), 16_384) == 32
    assert steps_per_epoch(config(global_batch_size=500), 16_384) == 33
    assert steps_per_epoch(config(global_batch_size=500, drop_remainder=True), 16_384) == 32
    assert steps_per_epoch(config(global_batch_size=500, repeat_count=2), 16_384) == 66


def test_precision_per_device():
    assert resolve_precision(False, "auto", num_gpus=4) == ("float32", False)
    assert resolve_precision(True, "auto", num_gpus=0) == ("mixed_bfloat16", False)
    assert resolve_precision(True, "auto", num_gpus=1) == ("mixed_float16", True)
    assert resolve_precision(True, "bfloat16", num_gpus=8) == ("mixed_bfloat16", False)
    assert resolve_precision(True, "float16", num_gpus=0) == ("mixed_float16", True)


def test_config_checks_that_need_the_dataset_and_the_strategy(tiny_dataset):
    config(long_seq_length=15, global_batch_size=512).validate_for(tiny_dataset, replicas=2)
    with pytest.raises(UserError, match="--long_seq_length 20 must be between 1 and 19"):
        config(long_seq_length=20).validate_for(tiny_dataset)
    with pytest.raises(UserError, match="--global_batch_size 511 is not divisible by the 2 replicas"):
        config(long_seq_length=15, global_batch_size=511).validate_for(tiny_dataset, replicas=2)


def test_percentiles_of_known_latencies():
    out = percentiles([0.001 * i for i in range(1, 101)])  # 1..100 ms
    assert out["latency_mean_ms"] == pytest.approx(50.5)
    assert out["latency_p50_ms"] == pytest.approx(50.5) and out["latency_p99_ms"] == pytest.approx(99.01)
    assert percentiles([]) == {}


def test_run_log_round_trip_and_a_torn_last_line(tmp_path):
    path = tmp_path / "log.json"
    said = []
    log = RunLog(str(path), echo=said.append)
    log.record("step", step=np.int64(8), train_loss=np.float32(0.5))
    log.say("hello")
    log.close()
    with open(path, "a") as f:
        f.write('{"type": "summ')  # a run killed mid-write
    assert said == ["hello"]
    with pytest.raises(UserError, match="line 2: not a JSON record"):
        read_log(str(path))
    (record,) = read_log(str(path), skip_bad_lines=True)
    assert record["type"] == "step" and record["step"] == 8 and record["train_loss"] == 0.5
    assert json.loads(path.read_text().splitlines()[0])["train_loss"] == 0.5


def test_profiler_is_off_outside_its_window_and_on_non_chief_workers():
    said = []
    off = Profiler("/nonexistent", None, enabled=True, say=said.append)
    off.at_step(0)
    non_chief = Profiler("/nonexistent", (0, 5), enabled=False, say=said.append)
    non_chief.at_step(1)
    assert not off.active and not non_chief.active and said == []


def test_training_checkpoints_restore_the_whole_state(tmp_path, build, make_features):
    model = build("din")
    optimizer = tf.keras.optimizers.Adam(0.1)
    optimizer.build(model.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64)
    keeper = TrainingCheckpoints(model, optimizer, {"global_step": step}, str(tmp_path), keep=2, is_chief=True)
    assert keeper.latest() is None
    step.assign(7)
    saved = {k: v.numpy().copy() for k, v in variables_by_path(model).items()}
    digest = weights_digest(model.variables)
    path = keeper.save(7)
    assert path.endswith("ckpt-7") and keeper.latest() == path
    for variable in model.variables:
        variable.assign(tf.zeros_like(variable))
    step.assign(0)
    assert weights_digest(model.variables) != digest
    keeper.restore(path)
    assert int(step.numpy()) == 7 and weights_digest(model.variables) == digest
    for key, value in variables_by_path(model).items():
        np.testing.assert_array_equal(value.numpy(), saved[key], err_msg=key)
    nowhere = TrainingCheckpoints(model, optimizer, {"global_step": step}, "", keep=1, is_chief=True)
    assert nowhere.save(8) is None and nowhere.latest() is None
