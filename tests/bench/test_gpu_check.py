"""sim-tf gpu-check and the profile summary's host/device split, on CPU with made-up GPU results."""

import subprocess
import sys

import pytest

from sim_tf.bench import gpu_check, profile_summary


def test_without_a_gpu_it_says_so_in_one_line():
    result = subprocess.run([sys.executable, "-m", "sim_tf", "gpu-check", "--work_dir=/nonexistent/never"],
                            capture_output=True, text=True, timeout=300, env={"CUDA_VISIBLE_DEVICES": "",
                                                                             "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no GPU visible to TensorFlow")
    assert "CUDA_VISIBLE_DEVICES=''" in lines[0]


def test_runs_cover_the_precisions_and_a_profile():
    runs = gpu_check.planned_runs()
    assert [r.name for r in runs] == ["fp32", "amp", "amp+xla", "amp+xla lazy_adam", "amp+xla profile"]
    args = gpu_check.run_args(runs[-1], "/d", "/r", 131072, 10, 40)
    assert "--global_batch_size=131072" in args and "--profile_steps=11,15" in args and "--xla" in args
    assert "--noxla" in gpu_check.run_args(runs[0], "/d", "/r", 131072, 10, 40)
    assert [r.name for r in runs if r.count_compiles] == ["amp+xla"]


def test_report_names_every_check():
    build = {"tensorflow": "2.21.0", "cuda_version": "12.5", "cudnn_version": "9"}
    devices = [{"device_name": "NVIDIA A100-SXM4-80GB", "compute_capability": (8, 0)}]
    results = {
        "fp32": {"throughput": 400_000.0, "latency_mean_ms": 327.7, "gpu_peak_bytes": 20 * 2**30, "recipe": "fp32"},
        "amp": {"throughput": 520_000.0, "latency_mean_ms": 252.1, "gpu_peak_bytes": 12 * 2**30, "recipe": "amp",
                "loss_scale_initial": 32768.0, "loss_scale_final": 16384.0},
        "amp+xla": {"throughput": 600_000.0, "latency_mean_ms": 218.5, "recipe": "amp+xla", "xla_compiles": 3},
        "amp+xla lazy_adam": {"error": "exit status 1: boom"},
        "amp+xla profile": {"throughput": 1.0, "copies_per_step": {"host_to_device": 1.0, "device_to_host": 2.0}},
    }
    report = gpu_check.format_report(build, devices, results, 2_500_000.0)
    assert "CUDA 12.5, cuDNN 9" in report and "compute capability 8.0" in report
    assert "400,000" in report and "381,211" in report and "571,728" in report
    assert "FAILED: exit status 1: boom" in report
    assert "loss scale: 32768 -> 16384 (lowered" in report
    assert "XLA compilations in the amp+xla run: 3" in report
    assert "host->device copies per step: 1.0, device->host: 2.0" in report
    assert "input pipeline: 2,500,000 samples/s" in report


def test_compiles_and_copies_are_counted_from_their_sources():
    log = ("I0000 device_compiler.h:208] Compiled cluster using XLA!  This line is logged at most once\n"
           "I0000 device_compiler.h:538] Compilation of XLA executable time: 117 ms (cumulative: 117 ms, #called: 1)\n"
           "noise\nI0000 device_compiler.h:538] Compilation of XLA executable time: 48.6 ms (#called: 2)\n")
    assert gpu_check.count_compiles(log) == 2
    counts = {"MemcpyHtoD": 10, "MemcpyDtoH": 5, "volta_sgemm": 100}
    assert gpu_check.copies_per_step(counts, 5) == {"host_to_device": 2.0, "device_to_host": 1.0}


def test_profile_summary_keeps_device_kernels_apart_from_host_ops(tmp_path):
    xplane_pb2 = pytest.importorskip("tensorflow.tsl.profiler.protobuf.xplane_pb2")
    space = xplane_pb2.XSpace()

    def plane(name, events):
        p = space.planes.add()
        p.name = name
        line = p.lines.add()
        for key, (event_name, ms) in enumerate(events, 1):
            p.event_metadata[key].id = key
            p.event_metadata[key].name = event_name
            e = line.events.add()
            e.metadata_id = key
            e.duration_ps = int(ms * 1e9)

    plane("/host:CPU", [("model/dense/MatMul:MatMul", 3.0), ("model/gather:GatherV2", 1.0)])
    plane("/device:GPU:0", [("volta_sgemm_128x64", 2.5), ("MemcpyHtoD", 0.5)])
    path = tmp_path / "plugins" / "profile" / "run" / "host.xplane.pb"
    path.parent.mkdir(parents=True)
    path.write_bytes(space.SerializeToString())
    times = profile_summary.op_times(profile_summary.find_trace(str(tmp_path)))
    assert times.total_ms == pytest.approx(4.0) and times.device_ms == pytest.approx(3.0)
    assert times.device_counts["MemcpyHtoD"] == 1 and "volta_sgemm_128x64" not in times.by_name
    text = profile_summary.format_top(times)
    assert "device kernel time in all: 3.0 ms" in text and "op time in all: 4.0 ms" in text


def test_tensorflow_logs_one_line_per_xla_compilation():
    # The log line gpu-check counts, from TensorFlow itself: one jit_compile function, three input shapes.
    code = ("import tensorflow as tf\n"
            "f = tf.function(lambda x: tf.reduce_sum(x * x), jit_compile=True)\n"
            "for n in (3, 3, 5, 7, 7):\n"
            "    f(tf.ones([n]))\n")
    import os

    env = dict(os.environ, **gpu_check.COMPILE_LOG_ENV)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert gpu_check.count_compiles(result.stderr + result.stdout) == 3
