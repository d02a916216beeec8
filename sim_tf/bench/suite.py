"""The benchmark suite behind `sim-tf benchmark`: every performance number in README comes from here.

A *case* is (model, preset, mode, config). Each case runs ``repeats`` times, each time in a fresh process
(so compilation caches, allocator state and peak memory are per run), through the same commands a user
runs: ``sim-tf train --benchmark``, ``sim-tf inference --benchmark --random_init``, or, for mode ``auc``,
one real epoch of ``sim-tf train`` followed by its test evaluation (repeat r with
``--seed=first_seed + r``). Repeats run round-robin over the cases. The result of a case is the median
and the spread (min, max) of its runs, with every run kept in the JSON.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import statistics
import subprocess
import sys
import time
from typing import Callable, Sequence

from sim_tf.data.feature_spec import DEFAULT_FEATURE_SPEC_NAME
from sim_tf.errors import UserError
from sim_tf.train.run_log import read_log

MODES = ("train", "inference", "auc")
# Named precision/compilation settings -> trainer flags.
CONFIGS = {
    "fp32": [],
    "fp32+xla": ["--xla"],
    "amp": ["--amp"],
    "amp+xla": ["--amp", "--xla"],
}


@dataclasses.dataclass(frozen=True)
class Case:
    model: str
    preset: str
    mode: str
    config: str
    # Behaviour-store datasets only: the search unit and the long history's span (--max_long_history).
    gsu: str = ""
    long_history: int = 0

    @property
    def history(self) -> str:
        return f"{self.gsu} {self.long_history:,}" if self.gsu else ""

    @property
    def name(self) -> str:
        history = f"-{self.gsu}{self.long_history}" if self.gsu else ""
        return f"{self.model}-{dataset_label(self.preset)}{history}-{self.mode}-{self.config}"


def is_folder_preset(preset: str) -> bool:
    """A --presets entry naming a dataset folder (it holds a path separator) rather than a synthetic preset."""
    return os.sep in preset or (os.altsep is not None and os.altsep in preset)


def dataset_label(preset: str) -> str:
    """Short name of a preset for tables and run folders: the preset, or a folder's last two path parts."""
    if not is_folder_preset(preset):
        return preset
    parts = [p for p in os.path.normpath(os.path.abspath(preset)).split(os.sep) if p]
    return "_".join(parts[-2:])


@dataclasses.dataclass(frozen=True)
class Settings:
    global_batch_size: int = 4096
    warmup_steps: int = 5
    steps: int = 30
    repeats: int = 3
    first_seed: int = 0  # auc runs: repeat r trains with --seed=first_seed + r
    optimizer: str | None = None  # None: the trainer's default
    extra_flags: tuple[str, ...] = ()
    timeout_s: float = 3600.0
    sim_tf_path: str | None = None  # run another checkout of sim-tf (before/after comparisons)
    recipe: str | None = None  # the recipe's runner (bench/recipe.py): adds its runs as the "recipe" config

    def auc_seed(self, repeat: int) -> int:
        """The --seed of repeat ``repeat`` of an auc run, ours or the recipe's."""
        return self.first_seed + repeat


def is_store_preset(preset: str) -> bool:
    """Whether ``preset`` is a behaviour-store dataset (the lifelong presets, or a folder whose FeatureSpec
    has a behavior_store section)."""
    from sim_tf.data import synthetic

    if not is_folder_preset(preset):
        return preset in synthetic.LIFELONG_PRESETS
    import yaml

    try:
        with open(os.path.join(preset, DEFAULT_FEATURE_SPEC_NAME)) as f:
            return "behavior_store" in (yaml.safe_load(f) or {})
    except (OSError, yaml.YAMLError):
        return False


def cases(models: Sequence[str], presets: Sequence[str], modes: Sequence[str], configs: Sequence[str],
          gsus: Sequence[str] = ("soft",), long_histories: Sequence[int] = (1000,), recipe: bool = False) -> list[Case]:
    """Every combination; on behaviour-store presets also every (search unit, long history) pair (DIN and
    DIEN have no search unit: they get the soft one, i.e. the whole long history).

    With ``recipe``, every case the recipe can run (its models, a recipe-format dataset) also gets a
    ``recipe`` config, placed first so that the runs alternate: recipe, ours, recipe, ours."""
    from sim_tf.bench import recipe as anchor
    from sim_tf.models import GSU_KINDS

    for mode in modes:
        if mode not in MODES:
            raise UserError(f"--modes: unknown mode {mode!r}; choose from {list(MODES)}")
    for config in configs:
        if config not in CONFIGS:
            raise UserError(f"--configs: unknown config {config!r}; choose from {list(CONFIGS)}")
    for gsu in gsus:
        if gsu not in GSU_KINDS:
            raise UserError(f"--gsus: unknown search unit {gsu!r}; choose from {list(GSU_KINDS)}")
    for length in long_histories:
        if length < 1:
            raise UserError(f"--long_histories must be positive, got {length}")
    out = []
    for p in presets:
        histories = [(g, n) for g in gsus for n in long_histories] if is_store_preset(p) else [("", 0)]
        for m in models:
            shown = histories if m == "sim" or not histories[0][0] else list(dict.fromkeys(("soft", n) for _, n in histories))
            with_recipe = recipe and not histories[0][0] and m in anchor.MODELS
            shown_configs = ([anchor.CONFIG] if with_recipe else []) + list(configs)
            out += [Case(m, p, mode, c, g, n) for g, n in shown for mode in modes for c in shown_configs]
    if recipe and not any(c.config == anchor.CONFIG for c in out):
        raise UserError(f"--recipe: the recipe runs only {list(anchor.MODELS)} on recipe-format datasets (not on a "
                        "behaviour store); none of the cases asked for is one")
    return out


def long_seq_length(preset: str) -> int | None:
    """A synthetic preset's long/short split; None for a dataset folder (the trainer's default, 90)."""
    from sim_tf.data import synthetic

    if is_folder_preset(preset) or preset not in synthetic.PRESETS:
        return None
    config = synthetic.PRESETS[preset]
    return config.history_length - config.recent_length


def trainer_args(case: Case, settings: Settings, dataset_dir: str, results_dir: str, repeat: int = 0) -> list[str]:
    """The `sim-tf` command line (after the program name) that runs repeat number ``repeat`` of ``case``.

    An ``auc`` run is deterministic for a given seed, so its repeats differ in seed (repeat r trains with
    ``--seed=first_seed + r``: another initialisation and shuffle of the same data); their AUC range is the
    seed-to-seed spread that a difference between two configurations has to exceed to mean anything.
    """
    command = "inference" if case.mode == "inference" else "train"
    dataset_dir, results_dir = os.path.abspath(dataset_dir), os.path.abspath(results_dir)
    args = [command, f"--dataset_dir={dataset_dir}", f"--model_type={case.model}"]
    if case.gsu:
        args += [f"--gsu={case.gsu}", f"--max_long_history={case.long_history}"]
        if case.model == "sim":
            args.append(f"--top_k={min(50, case.long_history)}")
    elif long_seq_length(case.preset) is not None:
        # A dataset folder's long/short split is the trainer's default (90) unless given after `--`.
        args.append(f"--long_seq_length={long_seq_length(case.preset)}")
    args += [
        f"--global_batch_size={settings.global_batch_size}",
        f"--results_dir={results_dir}",
        *CONFIGS[case.config],
    ]
    if case.mode == "auc":
        args += ["--epochs=1", f"--seed={settings.auc_seed(repeat)}"]
    else:
        args += ["--benchmark", f"--benchmark_warmup_steps={settings.warmup_steps}",
                 f"--benchmark_steps={settings.steps}"]
    if case.mode == "inference":
        args.append("--random_init")
    if settings.optimizer and case.mode != "inference":
        args.append(f"--optimizer={settings.optimizer}")
    return args + list(settings.extra_flags)


def read_summary(results_dir: str) -> dict | None:
    path = os.path.join(results_dir, "log.json")
    if not os.path.exists(path):
        return None
    summaries = [r for r in read_log(path, skip_bad_lines=True) if r.get("type") == "summary"]
    return summaries[-1] if summaries else None


def run_once(args: list[str], results_dir: str, timeout_s: float, sim_tf_path: str | None = None,
             extra_env: dict[str, str] | None = None) -> dict:
    """Runs ``sim-tf ARGS`` in a fresh process; returns its summary plus peak RSS, or an error.

    With ``sim_tf_path`` the process imports sim_tf from that checkout instead of this one; ``extra_env``
    is added to its environment.
    """
    env = dict(os.environ, **(extra_env or {}))
    if sim_tf_path:
        env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(sim_tf_path)] + [p for p in [env.get("PYTHONPATH")] if p])
    results_dir = os.path.abspath(results_dir)
    shutil.rmtree(results_dir, ignore_errors=True)
    os.makedirs(results_dir)
    started = time.perf_counter()
    with open(os.path.join(results_dir, "output.txt"), "w") as out:
        # cwd: `python -m` puts the working directory first on sys.path, which would shadow sim_tf_path.
        process = subprocess.Popen([sys.executable, "-m", "sim_tf", *args], stdout=out, stderr=subprocess.STDOUT,
                                   env=env, cwd=results_dir)
        deadline = started + timeout_s
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                process.kill()
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.05)
        process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    result = {"wall_seconds": wall, "peak_rss_bytes": usage.ru_maxrss * 1024, "exit_code": process.returncode}
    summary = read_summary(results_dir)
    if summary and summary.get("peak_rss_bytes"):
        result["peak_rss_bytes"] = summary["peak_rss_bytes"]  # the run's own high-water mark (VmHWM)
    if process.returncode != 0 or summary is None:
        with open(os.path.join(results_dir, "output.txt")) as f:
            lines = [line.rstrip() for line in f if line.strip()]
        timed_out = wall >= timeout_s
        reason = f"timed out after {timeout_s:.0f}s" if timed_out else f"exit status {process.returncode}"
        result["error"] = f"{reason}: {lines[-1] if lines else 'no output'}"
        return result
    keep = ("throughput", "test_auc", "test_gauc", "test_loss", "latency_mean_ms", "latency_p50_ms",
            "latency_p90_ms", "latency_p95_ms", "latency_p99_ms", "benchmark_steps", "measured_batches",
            "time_to_train")
    result.update({k: summary[k] for k in keep if summary.get(k) is not None})
    return result


def aggregate(runs: list[dict]) -> dict:
    """Median and spread over the successful runs of one case (failed runs are counted, not averaged)."""
    good = [r for r in runs if "error" not in r]
    out: dict = {"runs": len(runs), "failed": len(runs) - len(good)}
    if not good:
        out["error"] = runs[-1].get("error") if runs else "not run"
        return out

    def spread(key: str) -> None:
        values = [r[key] for r in good if r.get(key) is not None]
        if values:
            out[key] = statistics.median(values)
            out[f"{key}_min"] = min(values)
            out[f"{key}_max"] = max(values)

    spread("throughput")
    spread("test_auc")
    for key in ("latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "test_gauc"):
        values = [r[key] for r in good if r.get(key) is not None]
        if values:
            out[key] = statistics.median(values)
    out["peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in good)
    if "throughput" in out and out["throughput"]:
        out["spread_percent"] = 100.0 * (out["throughput_max"] - out["throughput_min"]) / out["throughput"]
    return out


def format_table(results: list[dict]) -> str:
    header = ["model", "preset", "history", "mode", "config", "samples/s (median)", "min - max",
              "p50 / p90 / p99 ms", "test AUC", "peak RSS", "runs"]
    with_ratio = any("vs_recipe" in entry["result"] for entry in results)
    if with_ratio:
        header.insert(6, "vs recipe")
    rows = []
    for entry in results:
        case, agg = entry["case"], entry["result"]
        history = Case(**case).history
        if "throughput" not in agg:
            row = [case["model"], case["preset"], history, case["mode"], case["config"],
                   f"FAILED: {agg.get('error', '?')}"[:60], "", "", "", "", f"{agg['runs']}"]
            if with_ratio:
                row.insert(6, "")
            rows.append(row)
            continue
        latency = " / ".join(f"{agg[k]:.0f}" if k in agg else "-"
                             for k in ("latency_p50_ms", "latency_p90_ms", "latency_p99_ms"))
        auc = f"{agg['test_auc']:.4f}" if "test_auc" in agg else ""
        if "test_auc_min" in agg and agg["test_auc_max"] > agg["test_auc_min"]:
            auc += f" ({agg['test_auc_min']:.4f}-{agg['test_auc_max']:.4f})"
        failed = f" ({agg['failed']} failed)" if agg["failed"] else ""
        row = [
            case["model"], case["preset"], history, case["mode"], case["config"],
            f"{agg['throughput']:,.0f}", f"{agg['throughput_min']:,.0f} - {agg['throughput_max']:,.0f}",
            latency, auc, f"{agg['peak_rss_bytes'] / 2**30:.2f} GiB", f"{agg['runs']}{failed}",
        ]
        if with_ratio:
            row.insert(6, f"{agg['vs_recipe']:.2f}x" if "vs_recipe" in agg else "")
        rows.append(row)
    return text_table(header, rows)


def text_table(header: list[str], rows: list[list]) -> str:
    """A plain-text table for the terminal: columns padded to their widest cell, a rule under the header."""
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    lines = [" | ".join(str(v).ljust(w) for v, w in zip(header, widths))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(str(v).ljust(w) for v, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def ensure_dataset(preset: str, data_dir: str, echo: Callable[[str], None] = print) -> str:
    """The folder of ``preset``'s synthetic dataset (seed 0), written on first use by `sim-tf synthesize`
    in a process of its own: this process stays small, so it cannot inflate a run's measured peak memory
    (a child's ru_maxrss starts from its parent's when it is spawned)."""
    from sim_tf.data import synthetic

    if is_folder_preset(preset):
        if not os.path.isfile(os.path.join(preset, DEFAULT_FEATURE_SPEC_NAME)):
            raise UserError(f"--presets: {preset!r} is not a dataset folder (no {DEFAULT_FEATURE_SPEC_NAME} in it)")
        return preset
    known = list(synthetic.PRESETS) + list(synthetic.LIFELONG_PRESETS)
    if preset not in known:
        raise UserError(f"--presets: unknown preset {preset!r}; choose from {known} or give "
                        f"the path of a dataset folder (one holding {DEFAULT_FEATURE_SPEC_NAME})")
    folder = os.path.join(data_dir, f"{preset}-seed0")
    if not os.path.exists(os.path.join(folder, DEFAULT_FEATURE_SPEC_NAME)):
        echo(f"writing the {preset!r} synthetic dataset to {folder} (once)")
        args = [sys.executable, "-m", "sim_tf", "synthesize", f"--preset={preset}", f"--output={folder}", "--overwrite"]
        result = subprocess.run(args, capture_output=True, text=True)
        if result.returncode != 0:
            lines = (result.stderr or result.stdout).strip().splitlines()
            raise UserError(f"could not write the {preset!r} dataset to {folder}: {lines[-1] if lines else 'no output'}")
    return folder


def cpu_model() -> str:
    """The CPU's model name (benchmarks differ between CPU models more than between runs)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


# What decides how fast float32 and bfloat16 run on a CPU: /proc/cpuinfo flag names -> what we print.
CPU_FEATURES = {"avx512f": "AVX-512", "avx512_bf16": "AVX512-BF16", "amx_bf16": "AMX-BF16"}


def cpu_features() -> dict[str, bool]:
    """Whether the CPU has AVX-512, AVX512-BF16 and AMX (bfloat16 matmuls run on AMX tiles where it
    exists, which is where --amp pays off most)."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return {shown: name in flags for name, shown in CPU_FEATURES.items()}


def machine_line() -> str:
    """One line naming the CPU, its core count and its vector/matrix features, printed with every benchmark."""
    features = ", ".join(f"{name} {'yes' if has else 'no'}" for name, has in cpu_features().items())
    return f"{cpu_model()}, {os.cpu_count()} CPU(s); {features}"


def machine() -> dict:
    import platform

    import tensorflow as tf

    return {
        "cpu_model": cpu_model(),
        "cpu_features": cpu_features(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "gpus": len(tf.config.list_physical_devices("GPU")),
    }


def run_suite(all_cases: list[Case], settings: Settings, data_dir: str, work_dir: str,
              echo: Callable[[str], None] = print) -> list[dict]:
    """Runs every case ``settings.repeats`` times, round-robin: the first run of every case, then the
    second of every case, and so on. This machine's speed drifts by 5-20% over minutes; round-robin spreads
    that drift over all cases instead of handing a slow stretch to one of them, so comparisons between
    cases (before/after, small/amazon, fp32/amp) hold up better than their absolute numbers."""
    from sim_tf.bench import recipe as anchor

    if any(c.config == anchor.CONFIG for c in all_cases) and not settings.recipe:
        raise UserError("the recipe's cases need its runner (--recipe DIR)")
    datasets = {p: ensure_dataset(p, data_dir, echo) for p in dict.fromkeys(c.preset for c in all_cases)}
    runs: list[list[dict]] = [[] for _ in all_cases]
    for repeat in range(settings.repeats):
        for number, case in enumerate(all_cases, 1):
            results_dir = os.path.join(work_dir, case.name, f"run{repeat}")
            if case.config == anchor.CONFIG:
                args = anchor.recipe_args(case, settings, datasets[case.preset], long_seq_length(case.preset), repeat)
                run = anchor.run_once(settings.recipe, case, args, datasets[case.preset], results_dir,
                                      settings.timeout_s)
            else:
                args = trainer_args(case, settings, datasets[case.preset], results_dir, repeat)
                run = run_once(args, results_dir, settings.timeout_s, settings.sim_tf_path)
                run["command"] = "sim-tf " + " ".join(args)
            runs[number - 1].append(run)
            shown = run.get("error") or (f"{run['throughput']:,.0f} samples/s" +
                                         (f", test AUC {run['test_auc']:.4f}" if "test_auc" in run else ""))
            echo(f"[{number}/{len(all_cases)}] {case.name} run {repeat + 1}/{settings.repeats}: {shown}, "
                 f"peak RSS {run['peak_rss_bytes'] / 2**30:.2f} GiB")
    results = [{"case": dataclasses.asdict(case), "result": aggregate(case_runs), "runs": case_runs}
               for case, case_runs in zip(all_cases, runs)]
    add_recipe_ratios(results)
    return results


def _anchor_key(case: dict) -> tuple:
    return case["model"], case["preset"], case.get("gsu", ""), case.get("long_history", 0), case["mode"]


def add_recipe_ratios(results: list[dict]) -> None:
    """Sets ``vs_recipe`` (our median throughput / the recipe's, same model, dataset and mode) on every
    result that has a recipe run beside it; the recipe's own row gets 1.0."""
    from sim_tf.bench.recipe import CONFIG

    anchors = {_anchor_key(r["case"]): r["result"].get("throughput") for r in results if r["case"]["config"] == CONFIG}
    for entry in results:
        anchor = anchors.get(_anchor_key(entry["case"]))
        ours = entry["result"].get("throughput")
        if anchor and ours:
            entry["result"]["vs_recipe"] = ours / anchor
