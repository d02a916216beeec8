"""`sim-tf gpu-check`: the first run on a GPU machine, in about ten minutes.

It prints what a user needs to trust the machine before a long job: the TensorFlow build (CUDA, cuDNN) and
the GPUs (name, compute capability); SIM's training throughput at the recipe's batch size for fp32, amp,
amp + XLA and lazy_adam, next to the recipe's published single-A100 figures (a reference for the order of
magnitude, not a comparison: other machine, other software); the input pipeline's samples/s on the
dataset; whether the loss scale stayed where it started; how many XLA compilations the amp + XLA run did
(one per step function and shape: more means shapes change between steps); the GPU's peak memory; and
host <-> device copies per step from a short profile. Each measurement is one `sim-tf` command in a
fresh process, the same commands `sim-tf benchmark` runs.

Without a GPU it says so in one line and runs nothing.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys

# The recipe's README, "Training performance: NVIDIA DGX A100 (8x A100 80GB)", 1 GPU, batch 131072.
RECIPE_A100 = {"fp32": 381_211, "fp32+xla": 462_013, "amp": 484_360, "amp+xla": 571_728}
# Environment that makes TensorFlow log its XLA compilations: device_compiler.h logs "Compilation of XLA
# executable time: ... (#called: N)" once per compiled executable (checked on CPU: three input shapes of
# one jit_compile function, three lines).
COMPILE_LOG_ENV = {"TF_CPP_MIN_LOG_LEVEL": "0", "TF_CPP_VMODULE": "device_compiler=1"}
COMPILE_LINE = re.compile(r"Compilation of XLA executable time")
PROFILED_STEPS = 5  # steps the profile run traces, after its warm-up


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    flags: tuple[str, ...]
    recipe: str | None = None  # key of RECIPE_A100 to print beside it
    count_compiles: bool = False
    profile: bool = False


def planned_runs() -> list[Run]:
    """What gpu-check measures, in order (every run adds --benchmark and the dataset's flags)."""
    return [
        Run("fp32", ("--noxla", "--noamp"), recipe="fp32"),
        Run("amp", ("--noxla", "--amp"), recipe="amp"),
        Run("amp+xla", ("--xla", "--amp"), recipe="amp+xla", count_compiles=True),
        Run("amp+xla lazy_adam", ("--xla", "--amp", "--optimizer=lazy_adam")),
        Run("amp+xla profile", ("--xla", "--amp"), profile=True),
    ]


def run_args(run: Run, dataset_dir: str, results_dir: str, batch: int, warmup: int, steps: int) -> list[str]:
    args = ["train", f"--dataset_dir={os.path.abspath(dataset_dir)}", "--model_type=sim",
            f"--global_batch_size={batch}", f"--results_dir={os.path.abspath(results_dir)}", "--benchmark",
            f"--benchmark_warmup_steps={warmup}", f"--benchmark_steps={steps}", *run.flags]
    if run.profile:
        start = warmup + 1
        args.append(f"--profile_steps={start},{start + PROFILED_STEPS - 1}")
    return args


def count_compiles(output: str) -> int:
    """XLA compilations logged in a run's output (COMPILE_LOG_ENV must have been set)."""
    return sum(1 for line in output.splitlines() if COMPILE_LINE.search(line))


def copies_per_step(kernel_counts: dict[str, int], steps: int) -> dict[str, float]:
    """Host -> device and device -> host copies per step from a profile's device events."""
    h2d = sum(n for name, n in kernel_counts.items() if re.search(r"Memcpy.?H.?to.?D|MemcpyH2D|HtoD", name))
    d2h = sum(n for name, n in kernel_counts.items() if re.search(r"Memcpy.?D.?to.?H|MemcpyD2H|DtoH", name))
    return {"host_to_device": h2d / max(steps, 1), "device_to_host": d2h / max(steps, 1)}


def no_gpu_line(build: dict, environ=None) -> str:
    environ = os.environ if environ is None else environ
    cuda = build.get("cuda_version") or "none"
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    where = f"CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else "CUDA_VISIBLE_DEVICES unset"
    return (f"gpu-check: no GPU visible to TensorFlow ({where}; TensorFlow built with CUDA {cuda}); nothing to "
            f"check on this machine")


def format_report(build: dict, devices: list[dict], results: dict[str, dict], input_rate: float | None) -> str:
    """The report: build and devices, then one line per run, then the checks a first GPU run must pass."""
    lines = [f"TensorFlow {build.get('tensorflow', '?')}, CUDA {build.get('cuda_version', '?')}, "
             f"cuDNN {build.get('cudnn_version', '?')}"]
    for index, device in enumerate(devices):
        capability = device.get("compute_capability")
        cc = f"{capability[0]}.{capability[1]}" if capability else "?"
        lines.append(f"GPU {index}: {device.get('device_name', '?')}, compute capability {cc}")
    lines.append("")
    lines.append(f"{'run':<20} {'samples/s':>12} {'step ms':>9} {'GPU peak':>10}   recipe's 1xA100 figure (reference)")
    for name, result in results.items():
        if "error" in result:
            lines.append(f"{name:<20} FAILED: {result['error']}")
            continue
        rate = result.get("throughput")
        step = result.get("latency_mean_ms")
        peak = result.get("gpu_peak_bytes")
        reference = RECIPE_A100.get(result.get("recipe") or "")
        lines.append(f"{name:<20} {rate:>12,.0f} {step if step is not None else float('nan'):>9.1f} "
                     f"{(peak or 0) / 2**30:>8.2f} GiB   " + (f"{reference:,}" if reference else ""))
    lines.append("")
    if input_rate is not None:
        lines.append(f"input pipeline: {input_rate:,.0f} samples/s on {os.cpu_count()} core(s) "
                     f"(the GPU steps above need at least their samples/s)")
    amp = results.get("amp", {})
    if "loss_scale_final" in amp:
        stayed = amp["loss_scale_final"] >= amp["loss_scale_initial"]
        lines.append(f"loss scale: {amp['loss_scale_initial']:g} -> {amp['loss_scale_final']:g} "
                     + ("(stayed put)" if stayed else "(lowered: some steps overflowed; see docs/gpu.md)"))
    xla = results.get("amp+xla", {})
    if "xla_compiles" in xla:
        lines.append(f"XLA compilations in the amp+xla run: {xla['xla_compiles']} (expected: a handful at start, "
                     f"none after the warm-up)")
    profile = results.get("amp+xla profile", {})
    if "copies_per_step" in profile:
        copies = profile["copies_per_step"]
        lines.append(f"host->device copies per step: {copies['host_to_device']:.1f}, device->host: "
                     f"{copies['device_to_host']:.1f} (a prefetched input needs ~1 batch; many more mean "
                     f"ops running on the host)")
    return "\n".join(lines)


def build_info() -> dict:
    import tensorflow as tf

    info = dict(tf.sysconfig.get_build_info())
    info["tensorflow"] = tf.__version__
    return info


def device_details() -> list[dict]:
    import tensorflow as tf

    return [tf.config.experimental.get_device_details(gpu) for gpu in tf.config.list_physical_devices("GPU")]


def run_one(run: Run, args: list[str], results_dir: str, timeout_s: float) -> dict:
    """One measurement in a fresh process; its summary fields, plus compiles or copies when asked."""
    from sim_tf.bench import suite

    result = suite.run_once(args, results_dir, timeout_s, extra_env=COMPILE_LOG_ENV if run.count_compiles else None)
    if "error" in result:
        return result
    summary = suite.read_summary(results_dir) or {}
    for key in ("gpu_peak_bytes", "loss_scale_initial", "loss_scale_final", "latency_mean_ms"):
        if summary.get(key) is not None:
            result[key] = summary[key]
    if run.count_compiles:
        with open(os.path.join(results_dir, "output.txt"), errors="replace") as f:
            result["xla_compiles"] = count_compiles(f.read())
    if run.profile:
        from sim_tf.bench import profile_summary

        try:
            times = profile_summary.op_times(profile_summary.find_trace(results_dir))
            result["copies_per_step"] = copies_per_step(dict(times.device_counts), PROFILED_STEPS)
        except Exception as e:  # a profile that cannot be read costs this line only
            result["copies_per_step_error"] = str(e)
    result["recipe"] = run.recipe
    return result


def input_rate(dataset_dir: str, batch: int) -> float | None:
    """The input pipeline's samples/s on the dataset (sim-tf benchmark-input, one pass)."""
    result = subprocess.run([sys.executable, "-m", "sim_tf", "benchmark-input", f"--dataset_dir={dataset_dir}",
                             f"--global_batch_size={batch}", "--repeats=1"], capture_output=True, text=True)
    match = re.search(r"([\d,]+) samples/s median", result.stdout)
    return float(match.group(1).replace(",", "")) if match else None
