"""sim-tf benchmark: the case matrix, the statistics, and a real (tiny) run end to end."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from sim_tf.bench import suite as bench
from sim_tf.errors import UserError


def test_cases_cover_the_matrix_and_reject_unknown_names():
    all_cases = bench.cases(["sim", "din"], ["small"], ["train", "inference"], ["fp32", "amp+xla"])
    assert len(all_cases) == 8
    assert bench.Case("din", "small", "inference", "amp+xla") in all_cases
    with pytest.raises(UserError, match="unknown mode 'speed'"):
        bench.cases(["sim"], ["small"], ["speed"], ["fp32"])
    with pytest.raises(UserError, match="unknown config 'fp16'"):
        bench.cases(["sim"], ["small"], ["train"], ["fp16"])


def test_trainer_args_follow_the_mode_and_config():
    settings = bench.Settings(warmup_steps=2, steps=7, optimizer="lazy_adam", extra_flags=("--steps_per_loop=4",))
    train = bench.trainer_args(bench.Case("sim", "small", "train", "amp+xla"), settings, "/d", "/r")
    assert train[0] == "train" and "--benchmark" in train and "--benchmark_steps=7" in train
    assert "--amp" in train and "--xla" in train and "--optimizer=lazy_adam" in train
    assert "--long_seq_length=90" in train and train[-1] == "--steps_per_loop=4"
    assert f"--dataset_dir={os.path.abspath('/d')}" in train
    infer = bench.trainer_args(bench.Case("dien", "tiny", "inference", "fp32"), settings, "/d", "/r")
    assert infer[0] == "inference" and "--random_init" in infer and "--long_seq_length=15" in infer
    assert not any(a.startswith("--optimizer") for a in infer) and "--amp" not in infer
    auc = bench.trainer_args(bench.Case("din", "small", "auc", "fp32"), settings, "/d", "/r")
    assert "--epochs=1" in auc and "--benchmark" not in auc and "--seed=0" in auc
    # Repeats of a deterministic AUC run differ in seed, or they would all print the same number.
    assert "--seed=2" in bench.trainer_args(bench.Case("din", "small", "auc", "fp32"), settings, "/d", "/r", repeat=2)
    # --first_seed moves the whole range (a replication on seeds no earlier choice has seen).
    fresh = dataclasses.replace(settings, first_seed=5)
    case = bench.Case("din", "small", "auc", "fp32")
    seeds = [a for r in range(3) for a in bench.trainer_args(case, fresh, "/d", "/r", repeat=r) if a.startswith("--seed=")]
    assert seeds == ["--seed=5", "--seed=6", "--seed=7"]


def test_a_dataset_folder_can_stand_for_a_preset(tiny_dataset, tmp_path):
    folder = str(tiny_dataset.base_directory)
    assert bench.ensure_dataset(folder, str(tmp_path)) == folder
    case = bench.Case("dien", folder, "auc", "fp32")
    parts = os.path.normpath(folder).split(os.sep)
    assert case.name == f"dien-{parts[-2]}_{parts[-1]}-auc-fp32"
    args = bench.trainer_args(case, bench.Settings(), folder, "/r")
    # The folder's own split is the trainer's: no preset-derived --long_seq_length.
    assert f"--dataset_dir={os.path.abspath(folder)}" in args
    assert not any(a.startswith("--long_seq_length") for a in args)
    with pytest.raises(UserError, match="is not a dataset folder"):
        bench.ensure_dataset(str(tmp_path / "nothing-here"), str(tmp_path))
    with pytest.raises(UserError, match="unknown preset 'huge'.*path of a dataset folder"):
        bench.ensure_dataset("huge", str(tmp_path))


def test_aggregate_reports_median_spread_and_failures():
    runs = [
        {"throughput": 100.0, "latency_p50_ms": 10.0, "latency_p90_ms": 12.0, "latency_p99_ms": 15.0,
         "peak_rss_bytes": 2 * 2**30},
        {"throughput": 120.0, "latency_p50_ms": 9.0, "latency_p90_ms": 11.0, "latency_p99_ms": 20.0,
         "peak_rss_bytes": 3 * 2**30},
        {"throughput": 90.0, "latency_p50_ms": 11.0, "latency_p90_ms": 13.0, "latency_p99_ms": 14.0,
         "peak_rss_bytes": 1 * 2**30},
        {"error": "exit status 1: boom", "peak_rss_bytes": 0},
    ]
    agg = bench.aggregate(runs)
    assert agg["throughput"] == 100.0 and agg["throughput_min"] == 90.0 and agg["throughput_max"] == 120.0
    assert agg["latency_p50_ms"] == 10.0 and agg["latency_p99_ms"] == 15.0
    assert agg["peak_rss_bytes"] == 3 * 2**30
    assert agg["runs"] == 4 and agg["failed"] == 1
    assert agg["spread_percent"] == pytest.approx(30.0)
    table = bench.format_table([{"case": {"model": "sim", "preset": "small", "mode": "train", "config": "fp32"},
                                 "result": agg}])
    assert "100" in table and "90 - 120" in table and "3.00 GiB" in table and "4 (1 failed)" in table
    failed = bench.aggregate([{"error": "exit status 1: boom", "peak_rss_bytes": 0}])
    assert failed["error"] == "exit status 1: boom"
    assert "FAILED: exit status 1: boom" in bench.format_table(
        [{"case": {"model": "sim", "preset": "small", "mode": "train", "config": "fp32"}, "result": failed}])


def test_benchmark_command_end_to_end_on_tiny(tmp_path):
    out = tmp_path / "b.json"
    args = [sys.executable, "-m", "sim_tf", "benchmark", "--models=din", "--presets=tiny", "--modes=train,inference",
            "--configs=fp32", "--repeats=2", "--steps=2", "--warmup_steps=1", f"--data_dir={tmp_path / 'data'}",
            f"--work_dir={tmp_path / 'runs'}", f"--json_output={out}"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["machine"]["cpus"] == os.cpu_count()
    assert [r["case"]["mode"] for r in report["results"]] == ["train", "inference"]
    for entry in report["results"]:
        assert len(entry["runs"]) == 2 and entry["result"]["failed"] == 0
        assert entry["result"]["throughput_min"] <= entry["result"]["throughput"] <= entry["result"]["throughput_max"]
        assert all(run["peak_rss_bytes"] > 100 * 2**20 and run["command"].startswith("sim-tf ") for run in entry["runs"])
    assert report["results"][0]["runs"][0]["benchmark_steps"] == 2
    assert report["results"][1]["runs"][0]["measured_batches"] == 2
    assert "samples/s (median)" in result.stdout and "din   | tiny" in result.stdout
    # Round-robin: the first run of every case, then the second, so drift does not favour one case.
    order = [line.split(":")[0] for line in result.stdout.splitlines() if line.startswith("[")]
    assert order == ["[1/2] din-tiny-train-fp32 run 1/2", "[2/2] din-tiny-inference-fp32 run 1/2",
                     "[1/2] din-tiny-train-fp32 run 2/2", "[2/2] din-tiny-inference-fp32 run 2/2"], order

    # A run that fails is reported by case, and the command fails with the reason.
    bad = subprocess.run(args[:-3] + [f"--work_dir={tmp_path / 'runs2'}", f"--json_output={tmp_path / 'c.json'}",
                                      f"--data_dir={tmp_path / 'data'}", "--modes=train", "--repeats=1", "--",
                                      "--lr=-1"], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 1
    assert "1 case(s) had failed runs: din-tiny-train-fp32" in bad.stderr
    assert "--lr must be a finite number > 0" in bad.stdout


def test_sim_tf_path_runs_another_checkout(tmp_path):
    # A fake checkout whose `sim-tf` only prints where it was imported from: the run must use it even
    # though the benchmark's working directory holds this checkout.
    fake = tmp_path / "other" / "sim_tf"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "__main__.py").write_text("import sim_tf, sys; print('imported', sim_tf.__file__); sys.exit(3)\n")
    result = bench.run_once(["train"], str(tmp_path / "run"), 60, sim_tf_path=str(tmp_path / "other"))
    assert result["exit_code"] == 3
    assert str(fake / "__init__.py") in (tmp_path / "run" / "output.txt").read_text()


def test_step_time_reports_forward_backward_and_step(tiny_dataset):
    result = subprocess.run(
        [sys.executable, "-m", "sim_tf.bench.step_time", f"--dataset_dir={tiny_dataset.base_directory}",
         "--model_type=dien", "--global_batch_size=64", "--long_seq_length=15", "--repeats=2"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    times = json.loads(result.stdout.strip().splitlines()[-1])
    assert times["model"] == "dien"
    assert 0 < times["forward_ms"] and 0 < times["forward_backward_ms"] and 0 < times["train_step_ms"]
