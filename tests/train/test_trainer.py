"""The trainer end to end through its command line, on the tiny synthetic dataset (CPU only).

Each run is a subprocess: the strategy tests need to split the CPU before TensorFlow starts, and a
user's runs are separate processes too.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from sim_tf import distribute
from sim_tf.bench import profile_summary
from sim_tf.errors import UserError


def base_flags(dataset, results, **overrides):
    flags = {
        "dataset_dir": dataset.base_directory,
        "results_dir": str(results),
        "long_seq_length": 15,
        "top_k": 8,
        "embedding_dim": 8,
        "global_batch_size": 512,
        "epochs": 1,
        "log_every_steps": 8,
        "seed": 1,
        "lr": 0.01,
    }
    flags.update(overrides)
    out = []
    for key, value in flags.items():
        if value is True:
            out.append(f"--{key}")
        elif value is not False and value is not None:
            out.append(f"--{key}={value}")
    return out


def run(args, form="sim-tf", check=True, timeout=600):
    if form == "sim-tf":
        command = [sys.executable, "-m", "sim_tf", *args]
    else:
        command = [sys.executable, "-m", "sim_tf.main", *args]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def read_log(results, name="log.json"):
    with open(os.path.join(results, name)) as f:
        return [json.loads(line) for line in f]


def summary(records):
    (record,) = [r for r in records if r["type"] == "summary"]
    return record


def checkpoint_weights(path):
    latest = tf.train.latest_checkpoint(path)
    reader = tf.train.load_checkpoint(latest)
    return {name: reader.get_tensor(name) for name, _ in tf.train.list_variables(latest) if "model/" in name}


@pytest.mark.parametrize("model_type", ["sim", "dien", "din"])
def test_train_then_evaluate_and_infer_from_checkpoint(tiny_dataset, tmp_path, model_type):
    results, ckpt = tmp_path / "results", tmp_path / "ckpt"
    flags = base_flags(tiny_dataset, results, model_type=model_type, save_checkpoint_path=ckpt)
    if model_type == "sim":  # the recipe's own form of the command
        out = run(["--mode=train", *flags], form="main")
    else:
        out = run(["train", *flags])
    assert "test AUC" in out.stdout
    records = read_log(results)
    final = summary(records)
    eval_record = [r for r in records if r["type"] == "eval"][-1]
    assert (final["test_auc"], final["test_gauc"], final["test_loss"]) == (
        eval_record["test_auc"], eval_record["test_gauc"], eval_record["test_loss"])
    assert eval_record["samples"] == 2048
    # Throughput is batch / mean step time over the timed steps (all but the first, tracing, call).
    assert final["throughput"] == pytest.approx(512 * 1000 / final["latency_mean_ms"], rel=1e-9)
    assert final["time_to_train"] > final["first_loop_seconds"] + 31 * final["latency_mean_ms"] / 1000 * 0.99
    for key in ("train_loss", "test_loss", "latency_mean_ms", "latency_p90_ms", "latency_p95_ms", "latency_p99_ms"):
        assert np.isfinite(final[key]), key
    steps = [r for r in records if r["type"] == "step"]
    assert [r["step"] for r in steps] == [8, 16, 24, 32]
    config = json.load(open(results / "config.json"))
    assert config["model_type"] == model_type and config["seed"] == 1
    assert config["resolved"]["strategy"]["kind"] == "default"
    # Training on this CPU-only machine: one thread per op if it has at most 2 cores (see distribute.py).
    threads = distribute.auto_intra_op_threads(0, distribute.usable_cores(), True)
    assert config["resolved"]["intra_op_threads"] == threads
    assert config["resolved"]["microbatches"] == distribute.auto_microbatches(0, distribute.usable_cores(), True, threads)
    assert any(name.startswith("events") for name in os.listdir(results / "tensorboard" / "validation"))
    assert eval_record["roc"][0][0] == 0.0 and eval_record["roc"][1][-1] == 1.0
    if model_type == "sim":
        from tensorboard.backend.event_processing import event_accumulator

        events = event_accumulator.EventAccumulator(str(results / "tensorboard" / "validation"))
        events.Reload()
        assert {"auc", "gauc", "loss", "roc_curve", "pr_curve"} <= set(events.Tags()["tensors"])
        out = run(["report", str(results)])
        assert out.stdout == f"wrote {results / 'report.png'}\n"
        with open(results / "report.png", "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(results / "report.png") > 10_000

    evaluated = tmp_path / "evaluated"
    run(["evaluate", *base_flags(tiny_dataset, evaluated, model_type=model_type, load_checkpoint_path=ckpt)])
    again = summary(read_log(evaluated))
    assert again["test_auc"] == pytest.approx(final["test_auc"], abs=1e-6)

    inferred = tmp_path / "inferred"
    run(["inference", *base_flags(tiny_dataset, inferred, model_type=model_type, load_checkpoint_path=ckpt)])
    infer = summary(read_log(inferred))
    assert infer["samples"] == 2048  # the whole *test* split
    assert infer["test_auc"] == pytest.approx(final["test_auc"], abs=1e-6)
    assert infer["measured_batches"] == 3  # 4 batches of 512; the first, which traces, is not timed
    assert infer["throughput"] == pytest.approx(512 * 1000 / infer["latency_mean_ms"], rel=1e-9)

    # Serving the float32-trained checkpoint with --amp (bfloat16 compute, float32 variables) ranks the test
    # split the same to within the 0.002 AUC, which is what makes amp inference a fair speed-up.
    served = tmp_path / "inferred_amp"
    run(["inference", *base_flags(tiny_dataset, served, model_type=model_type, load_checkpoint_path=ckpt, amp=True)])
    amp = summary(read_log(served))
    assert amp["samples"] == 2048
    assert amp["test_auc"] == pytest.approx(final["test_auc"], abs=2e-3)
    # bfloat16 did compute: the run resolved the mixed policy and its log loss moved. (Not the AUC: a model
    # near chance on this tiny data can keep its ranking, and so its AUC, bit for bit under bfloat16.)
    assert json.load(open(served / "config.json"))["resolved"]["precision"] == "mixed_bfloat16"
    assert amp["test_loss"] != final["test_loss"]


def test_head_batch_norm_on_two_replicas_evaluates_the_same_from_its_checkpoint(tiny_dataset, tmp_path):
    """--head_batch_norm under MirroredStrategy: the running statistics the job evaluated with are the ones
    its checkpoint holds (one value for both replicas), and a job without the flag cannot load it."""
    results, ckpt = tmp_path / "results", tmp_path / "ckpt"
    run(["train", *base_flags(tiny_dataset, results, head_batch_norm=True, cpu_replicas=2, save_checkpoint_path=ckpt)])
    final = summary(read_log(results))
    weights = checkpoint_weights(ckpt)
    running = [name for name in weights if "input_norm" in name and "moving_mean" in name]
    assert len(running) == 2  # stage one and stage two
    assert all(np.abs(weights[name]).max() > 0 for name in running)
    assert json.load(open(results / "config.json"))["model"]["head_batch_norm"] is True
    evaluated = tmp_path / "evaluated"
    run(["evaluate", *base_flags(tiny_dataset, evaluated, head_batch_norm=True, load_checkpoint_path=ckpt)])
    assert summary(read_log(evaluated))["test_auc"] == pytest.approx(final["test_auc"], abs=1e-6)
    plain = run(["evaluate", *base_flags(tiny_dataset, tmp_path / "plain", load_checkpoint_path=ckpt)], check=False)
    assert plain.returncode != 0 and "Traceback" not in plain.stderr
    assert "/input_norm/" in plain.stderr and "--head_batch_norm" in plain.stderr


def test_sim_learns_the_planted_signal(tiny_dataset, tmp_path):
    """Three tiny epochs (192 steps) take SIM well above chance (AUC 0.5 +- 0.013 on 2,048 samples)."""
    run(["train", *base_flags(tiny_dataset, tmp_path, epochs=3, global_batch_size=256, log_every_steps=64)])
    records = read_log(tmp_path)
    aucs = [r["test_auc"] for r in records if r["type"] == "eval"]
    assert len(aucs) == 3 and aucs[-1] > 0.62, aucs
    losses = [r["train_loss"] for r in records if r["type"] == "step"]
    assert losses[-1] < losses[0], losses


def test_mirrored_on_two_cpus_follows_the_default_loss_trajectory(tiny_dataset, tmp_path):
    losses = {}
    for name, extra in (("default", {}), ("mirrored", {"cpu_replicas": 2})):
        results = tmp_path / name
        run(["train", *base_flags(tiny_dataset, results, log_every_steps=1, deterministic=True, **extra)])
        records = read_log(results)
        losses[name] = [r["train_loss"] for r in records if r["type"] == "step"]
        if name == "mirrored":
            assert json.load(open(results / "config.json"))["resolved"]["replicas"] == 2
    assert len(losses["default"]) == len(losses["mirrored"]) == 32
    # Same samples per step and the same maths; only the order of floating-point sums differs.
    np.testing.assert_allclose(losses["mirrored"], losses["default"], rtol=2e-3)


def test_deterministic_runs_are_bit_identical_and_resume_equals_uninterrupted(tiny_dataset, tmp_path):
    common = dict(deterministic=True, optimizer="lazy_adam", model_type="dien")
    weights = []
    for name in ("a", "b"):
        run(["train", *base_flags(tiny_dataset, tmp_path / name, epochs=2, save_checkpoint_path=tmp_path / f"{name}_ckpt",
                                  **common)])
        weights.append(checkpoint_weights(tmp_path / f"{name}_ckpt"))
    # Two epochs keep the records in memory for the second (the one-epoch run below reads them once and
    # keeps nothing), and read them in the same order: the resumed run checks that.
    assert [r["cached_records"] for r in read_log(tmp_path / "a") if r["type"] == "start"] == [True]
    assert weights[0].keys() == weights[1].keys() and len(weights[0]) > 10
    for key in weights[0]:
        np.testing.assert_array_equal(weights[0][key], weights[1][key], err_msg=key)

    # Stop after epoch 1, then resume from the checkpoint to finish epoch 2.
    ckpt = tmp_path / "resumed_ckpt"
    run(["train", *base_flags(tiny_dataset, tmp_path / "r1", epochs=1, save_checkpoint_path=ckpt, **common)])
    out = run(["train", *base_flags(tiny_dataset, tmp_path / "r2", epochs=2, save_checkpoint_path=ckpt, **common)])
    assert "restored" in out.stdout
    assert [r["cached_records"] for r in read_log(tmp_path / "r1") if r["type"] == "start"] == [False]
    resumed = checkpoint_weights(ckpt)
    for key in weights[0]:
        np.testing.assert_array_equal(resumed[key], weights[0][key], err_msg=key)
    steps = [r["step"] for r in read_log(tmp_path / "r2") if r["type"] == "step"]
    assert steps[0] > 32 and steps[-1] == 64  # epoch 2 only: 32 steps of 512 over 16,384 samples


def test_amp_xla_and_loss_scaling_smoke(tiny_dataset, tmp_path):
    # bfloat16 on CPU (what --amp means here), with XLA
    run(["train", *base_flags(tiny_dataset, tmp_path / "bf16", amp=True, xla=True)])
    final = summary(read_log(tmp_path / "bf16"))
    evals = [r for r in read_log(tmp_path / "bf16") if r["type"] == "eval"]
    assert np.isfinite(final["train_loss"]) and evals[-1]["samples"] == 2048
    assert final["test_auc"] == evals[-1]["test_auc"] and final["test_loss"] == pytest.approx(evals[-1]["test_loss"])
    assert json.load(open(tmp_path / "bf16" / "config.json"))["resolved"]["precision"] == "mixed_bfloat16"
    # float16 with dynamic loss scaling on two replicas (the GPU path's maths), XLA on forward+backward
    run(["train", *base_flags(tiny_dataset, tmp_path / "fp16", amp=True, amp_dtype="float16", xla=True,
                              cpu_replicas=2, benchmark=True, benchmark_warmup_steps=1, benchmark_steps=3)])
    final = summary(read_log(tmp_path / "fp16"))
    assert final["benchmark_steps"] == 3 and final["warmup_steps"] == 1
    assert final["throughput"] == pytest.approx(512 * 1000 / final["latency_mean_ms"], rel=1e-9)


def test_benchmark_mode_with_more_warmup_than_an_epoch(tiny_dataset, tmp_path):
    out = run(["train", *base_flags(tiny_dataset, tmp_path, benchmark=True, benchmark_warmup_steps=40,
                                    benchmark_steps=6, steps_per_loop=4, model_type="din")])
    final = summary(read_log(tmp_path))
    assert final["benchmark_steps"] == 6 and final["warmup_steps"] == 40  # 46 steps > 32 per epoch
    assert final["throughput"] == pytest.approx(512 * 1000 / final["latency_mean_ms"], rel=1e-9)
    assert final["latency_p50_ms"] <= final["latency_p90_ms"] <= final["latency_p99_ms"]
    assert not [r for r in read_log(tmp_path) if r["type"] in ("eval", "checkpoint", "start")]  # no I/O in the loop
    assert "throughput" in out.stdout


def test_inference_with_random_weights_and_profile(tiny_dataset, tmp_path):
    run(["inference", *base_flags(tiny_dataset, tmp_path, random_init=True, benchmark=True, benchmark_warmup_steps=1,
                                  profile_steps="3,5")])
    inferred = summary(read_log(tmp_path))
    assert inferred["measured_batches"] == 200 and inferred["samples"] == 201 * 512  # --benchmark_steps default
    assert inferred["throughput"] == pytest.approx(512 * 1000 / inferred["latency_mean_ms"], rel=1e-9)
    # --profile_steps traces prediction batches in inference mode, as it traces steps in training.
    predicted = profile_summary.op_times(profile_summary.find_trace(str(tmp_path / "tensorboard")))
    assert predicted.total_ms > 0 and not any("Apply" in kind or "Grad" in kind for kind in predicted.by_type)
    run(["evaluate", *base_flags(tiny_dataset, tmp_path / "evaluated", random_init=True, profile_steps="0,2")])
    assert profile_summary.op_times(profile_summary.find_trace(str(tmp_path / "evaluated" / "tensorboard"))).total_ms > 0
    profiled = tmp_path / "profiled"
    run(["train", *base_flags(tiny_dataset, profiled, model_type="din", profile_steps="2,4")])
    traces = [f for _, _, files in os.walk(profiled / "tensorboard" / "plugins" / "profile") for f in files]
    assert any(f.endswith(".xplane.pb") for f in traces), traces
    # `sim-tf profile` reads the trace's op times without the profile plugin.
    times = profile_summary.op_times(profile_summary.find_trace(str(profiled / "tensorboard")))
    assert times.total_ms > 0 and any("MatMul" in kind for kind in times.by_type)
    assert "top 5 op types:" in profile_summary.format_top(times, 5)
    with pytest.raises(UserError, match="no profiler trace"):
        profile_summary.find_trace(str(tmp_path / "nothing"))


@pytest.mark.parametrize(
    "extra,message",
    [
        ({"lr": -1}, "--lr must be a finite number > 0"),
        ({"model_type": "dcn"}, "flag --model_type=dcn"),
        ({"long_seq_length": 20}, "--long_seq_length 20 must be between 1 and 19"),
        ({"cpu_replicas": 3}, "--global_batch_size 512 is not divisible by the 3 replicas"),
        ({"stage_two_mlp_dims": "200,x"}, "--stage_two_mlp_dims must be a comma-separated list of integers"),
        ({"profile_steps": "5"}, "--profile_steps must be START,END"),
        ({"dataset_dir": "/nonexistent"}, "does not exist"),
        ({"strategy": "multi_worker", "cpu_replicas": 2}, "--cpu_replicas is for single-process mirrored runs"),
    ],
)
def test_bad_flags_fail_before_any_work(tiny_dataset, tmp_path, extra, message):
    result = run(["train", *base_flags(tiny_dataset, tmp_path, **extra)], check=False)
    assert result.returncode in (1, 2), result.stderr
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_evaluate_without_a_checkpoint_is_a_clear_error(tiny_dataset, tmp_path):
    result = run(["evaluate", *base_flags(tiny_dataset, tmp_path)], check=False)
    assert result.returncode == 1
    assert "--mode evaluate needs a trained model: pass --load_checkpoint_path" in result.stderr
    result = run(["evaluate", *base_flags(tiny_dataset, tmp_path, load_checkpoint_path=tmp_path / "none")], check=False)
    assert "is neither a checkpoint folder nor a checkpoint" in result.stderr
    result = run(["train", "--mode=evaluate", *base_flags(tiny_dataset, tmp_path)], check=False)
    assert "`sim-tf train` runs --mode train" in result.stderr


def test_flag_files_in_configs_parse_and_run(tiny_dataset, tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    configs = os.path.join(root, "configs")
    # The recipe's defaults (SIM, batch 131072, --amp, ...) with the batch and length overridden for tiny data.
    run(["train", f"--flagfile={os.path.join(configs, 'recipe_defaults.cfg')}", f"--dataset_dir={tiny_dataset.base_directory}",
         f"--results_dir={tmp_path / 'recipe'}", "--global_batch_size=512", "--long_seq_length=15", "--top_k=8",
         "--benchmark", "--benchmark_warmup_steps=1", "--benchmark_steps=2"])
    config = json.load(open(tmp_path / "recipe" / "config.json"))
    assert config["amp"] and config["drop_remainder"] and config["epochs"] == 3 and config["model"]["embedding_dim"] == 16
    run(["train", f"--flagfile={os.path.join(configs, 'tiny.cfg')}", f"--dataset_dir={tiny_dataset.base_directory}",
         f"--results_dir={tmp_path / 'tiny'}", "--model_type=din"])
    tiny = read_log(tmp_path / "tiny")
    (evaluation,) = [r for r in tiny if r["type"] == "eval"]
    assert evaluation["samples"] == 2048 and summary(tiny)["test_auc"] == evaluation["test_auc"]
