import json
import os
import subprocess
import sys

import pytest

from sim_tf import distribute
from sim_tf.distribute import ClusterInfo, choose_strategy
from sim_tf.errors import UserError

ONE = ClusterInfo()
TWO = ClusterInfo(num_workers=2, task_index=1)


@pytest.mark.parametrize(
    "requested,gpus,cluster,cpu_replicas,kind,collective",
    [
        ("auto", 0, ONE, 1, "default", "none"),
        ("auto", 1, ONE, 1, "one_device", "none"),  # prefetches to the GPU; the default strategy does not
        ("auto", 8, ONE, 1, "mirrored", "nccl"),
        ("auto", 0, ONE, 2, "mirrored", "reduce_to_one_device"),
        ("auto", 0, TWO, 1, "multi_worker", "ring"),
        ("auto", 4, TWO, 1, "multi_worker", "nccl"),
        ("mirrored", 0, ONE, 1, "mirrored", "reduce_to_one_device"),
        ("mirrored", 1, ONE, 1, "mirrored", "reduce_to_one_device"),
        ("mirrored", 2, ONE, 1, "mirrored", "nccl"),
        ("one_device", 2, ONE, 1, "one_device", "none"),
        ("multi_worker", 0, ONE, 1, "multi_worker", "ring"),
    ],
)
def test_strategy_selection(requested, gpus, cluster, cpu_replicas, kind, collective):
    choice = choose_strategy(requested, gpus, cluster, cpu_replicas)
    assert (choice.kind, choice.collective) == (kind, collective)


def test_nccl_is_never_chosen_without_gpus():
    for requested in distribute.STRATEGIES:
        for cluster, replicas in ((ONE, 1), (ONE, 2), (TWO, 1)):
            try:
                choice = choose_strategy(requested, 0, cluster, replicas)
            except UserError:
                continue
            assert choice.collective != "nccl"


@pytest.mark.parametrize(
    "args,message",
    [
        (("default", 0, TWO, 1), "TF_CONFIG names 2 workers but --strategy=default"),
        (("default", 0, ONE, 2), "--cpu_replicas=2 needs --strategy=mirrored"),
        (("auto", 2, ONE, 2), "cannot be combined with GPUs"),
    ],
)
def test_impossible_combinations_are_user_errors(args, message):
    with pytest.raises(UserError, match=message):
        choose_strategy(*args)


@pytest.mark.parametrize("overrides,message", [
    ({"strategy": "ps"}, "--strategy must be one of"),
    ({"cpu_replicas": 0}, "--cpu_replicas must be >= 1"),
    ({"lr": 0.0}, "--lr must be a finite number > 0"),
    ({"weight_decay": -0.1}, "--weight_decay must be a finite number >= 0"),
    ({"optimizer": "rmsprop"}, "--optimizer must be one of"),
    ({"global_batch_size": 0}, "--global_batch_size must be >= 1"),
    ({"long_seq_length": 0}, "--long_seq_length must be >= 1"),
])
def test_the_typed_config_is_the_one_validator(overrides, message):
    from sim_tf.train.config import TrainConfig

    with pytest.raises(UserError, match=message):
        TrainConfig(dataset_dir="d", **overrides)


def test_tf_config_parsing():
    assert distribute.read_tf_config({}) == ONE
    config = {"cluster": {"worker": ["a:1", "b:2", "c:3"]}, "task": {"type": "worker", "index": 2}}
    info = distribute.read_tf_config({"TF_CONFIG": json.dumps(config)})
    assert info == ClusterInfo(3, "worker", 2) and not info.is_chief
    config = {"cluster": {"chief": ["a:1"], "worker": ["b:2"]}, "task": {"type": "chief", "index": 0}}
    info = distribute.read_tf_config({"TF_CONFIG": json.dumps(config)})
    assert info.num_workers == 2 and info.is_chief


@pytest.mark.parametrize(
    "value,message",
    [
        ("{not json", "TF_CONFIG is not valid JSON"),
        ('{"task": {}}', "TF_CONFIG must be"),
        ('{"cluster": {"ps": ["a:1"]}}', "lists no chief or worker"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "evaluator", "index": 0}}', "task type 'evaluator'"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}', "task index 3 is out of range"),
    ],
)
def test_bad_tf_config(value, message):
    with pytest.raises(UserError, match=message):
        distribute.read_tf_config({"TF_CONFIG": value})


def test_intra_op_threads_default_to_one_only_on_small_cpu_only_hosts():
    assert distribute.auto_intra_op_threads(num_gpus=0, cores=1, training=True) == 1
    assert distribute.auto_intra_op_threads(num_gpus=0, cores=2, training=True) == 1
    assert distribute.auto_intra_op_threads(num_gpus=0, cores=16, training=True) == 0  # TensorFlow's default
    assert distribute.auto_intra_op_threads(num_gpus=1, cores=2, training=True) == 0
    assert distribute.auto_intra_op_threads(num_gpus=0, cores=2, training=False) == 0  # prediction (DIN)
    assert distribute.auto_intra_op_threads(num_gpus=0, cores=2, training=False, recurrent=True) == 1  # SIM, DIEN
    assert distribute.auto_intra_op_threads(num_gpus=0, cores=8, training=False, recurrent=True) == 0
    assert distribute.auto_intra_op_threads(num_gpus=0, cores=2, training=True, xla=True) == 0
    assert 1 <= distribute.usable_cores() <= (os.cpu_count() or 1)


def test_microbatches_default_to_one_per_core_only_with_one_thread_per_op():
    assert distribute.auto_microbatches(num_gpus=0, cores=2, training=True, intra_op_threads=1) == 2
    assert distribute.auto_microbatches(num_gpus=0, cores=1, training=True, intra_op_threads=1) == 1
    assert distribute.auto_microbatches(num_gpus=0, cores=2, training=True, intra_op_threads=0) == 1  # TF's threads
    assert distribute.auto_microbatches(num_gpus=0, cores=2, training=True, intra_op_threads=2) == 1
    assert distribute.auto_microbatches(num_gpus=1, cores=2, training=True, intra_op_threads=1) == 1  # GPU
    assert distribute.auto_microbatches(num_gpus=0, cores=2, training=False, intra_op_threads=1) == 1  # prediction
    assert distribute.auto_microbatches(num_gpus=0, cores=2, training=False, intra_op_threads=1, recurrent=True) == 2
    assert distribute.auto_microbatches(num_gpus=1, cores=2, training=False, intra_op_threads=1, recurrent=True) == 1
    assert distribute.auto_microbatches(num_gpus=0, cores=2, training=True, intra_op_threads=1, xla=True) == 1


@pytest.mark.parametrize("cores,flag,training,expected", [(2, 0, True, 1), (8, 0, True, 0), (2, 0, False, 0),
                                                         (2, 3, True, 3)])
def test_configure_devices_applies_the_thread_choice(cores, flag, training, expected):
    # A fresh process: TensorFlow's thread pools can only be sized before its runtime starts.
    code = (
        "import sys\n"
        "from sim_tf import distribute\n"
        f"distribute.usable_cores = lambda: {cores}\n"
        f"distribute.configure_devices(intra_op_threads={flag}, training={training})\n"
        "import tensorflow as tf\n"
        "tf.constant(1.0) + 1.0\n"
        "print('threads', tf.config.threading.get_intra_op_parallelism_threads())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"threads {expected}" in result.stdout


@pytest.mark.parametrize(
    "gpus,cores,flags,expected",
    [
        # CPU hosts: the CPU's choices (no XLA, one step per call, sparse-matmul row sums, ordered input).
        (0, 2, {}, dict(xla=False, steps_per_loop=1, drop_remainder=False, pad_last_eval_batch=False,
                        row_sum="sparse_matmul", num_parallel_reads=4, deterministic_input=True)),
        (0, 64, {}, dict(num_parallel_reads=32, deterministic_input=True)),
        (0, 2, {"xla": True}, dict(xla=True, drop_remainder=True, pad_last_eval_batch=True)),
        # GPU hosts: XLA with fixed shapes, 50 steps per call, segment sums, input order free.
        (1, 16, {}, dict(xla=True, steps_per_loop=50, drop_remainder=True, pad_last_eval_batch=True,
                         row_sum="segment_sum", num_parallel_reads=16, deterministic_input=False)),
        (8, 96, {"xla": False}, dict(xla=False, drop_remainder=False, pad_last_eval_batch=False, num_parallel_reads=32)),
        (8, 96, {"deterministic": True}, dict(deterministic_input=True, row_sum="segment_sum")),
        (8, 96, {"steps_per_loop": 3, "num_parallel_reads": 7}, dict(steps_per_loop=3, num_parallel_reads=7)),
        (0, 2, {"drop_remainder": True}, dict(drop_remainder=True, xla=False)),
        (0, 2, {"gpu_memory_growth": True}, dict(gpu_memory_growth=True)),
        (4, 8, {}, dict(gpu_memory_growth=False, compact_sparse_exchange=True)),
        (0, 2, {}, dict(compact_sparse_exchange=False)),
    ],
)
def test_device_plan_follows_the_devices_and_the_flags(gpus, cores, flags, expected):
    plan = distribute.plan_devices(gpus, cores, **flags)
    assert {k: getattr(plan, k) for k in expected} == expected


def test_gpu_defaults_are_in_the_recipe_flag_file():
    # The recipe's command on GPUs runs with XLA and 50 steps per loop without saying so; the flag file
    # leaves both automatic rather than forcing a CPU value.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    lines = open(os.path.join(root, "configs", "recipe_defaults.cfg")).read().splitlines()
    assert "--steps_per_loop=0" in lines and not any(line.startswith("--xla") or line.startswith("--noxla") for line in lines)
    assert distribute.plan_devices(8, 64, steps_per_loop=0).steps_per_loop == distribute.GPU_STEPS_PER_LOOP


def test_head_batch_norm_keeps_one_running_statistic_across_replicas():
    """Two CPU replicas see batches with different means; the BatchNorm's running mean is updated once
    with the mean of the two, and both replicas hold that value (so a checkpoint, which saves the first,
    saves what every replica predicted with)."""
    code = (
        "import numpy as np, tensorflow as tf\n"
        "cpu = tf.config.list_physical_devices('CPU')[0]\n"
        "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)\n"
        "from sim_tf.layers.core import BatchNorm\n"
        "strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])\n"
        "with strategy.scope():\n"
        "    norm = BatchNorm(momentum=0.5)\n"
        "    norm.build((None, 2))\n"
        "batches = [tf.constant([[1.0, 2.0], [3.0, 2.0]]), tf.constant([[11.0, 0.0], [13.0, 0.0]])]\n"
        "values = strategy.experimental_distribute_values_from_function(lambda c: batches[c.replica_id_in_sync_group])\n"
        "tf.function(lambda v: strategy.run(lambda x: norm(x, training=True), args=(v,)))(values)\n"
        "for local in strategy.experimental_local_results(norm.moving_mean.value):\n"
        "    print('running', *np.round(local.numpy(), 4))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    # Replica means [2, 2] and [12, 0]; 0.5 * 0 + 0.5 * their mean [7, 1], on both replicas.
    assert [line for line in result.stdout.splitlines() if line.startswith("running")] == ["running 3.5 0.5"] * 2
