"""NVIDIA's SIM recipe as a benchmark anchor: run it beside sim-tf on the same data and batch size.

`sim-tf benchmark --recipe DIR` adds a ``recipe`` config to every (model, preset, mode) case of a
recipe-format dataset. DIR is a folder holding the recipe's runner ``run.sh`` (as ``../shared/recipe``
does): ``run.sh NAME DATASET_DIR [main.py flags]`` runs the unmodified recipe in its own virtual
environment and ends with one line

    RESULT NAME throughput=<samples/s> test_auc=<..|-> peak_rss_gib=<..|-> wall_s=<..> exit=<..>

which is all we read from it. The recipe runs the same hyperparameters as our run of the case (model,
batch size, embedding size, optimizer, learning rate, long/short split, warm-up and measured steps, seed
of an ``auc`` repeat), reads the dataset's records the way they were written (one Example per sample or
prebatched), and runs in float32 without XLA: its ``--amp`` is float16, which CPUs run slower than
float32, so it would only flatter our ratios.

Two differences that cannot be removed, both against us: the recipe's inference reads the train split
(``main.py`` passes it), ours the test split; and flags given after ``--`` reach our runs only.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import subprocess
import time

import yaml

from sim_tf.data.feature_spec import DEFAULT_FEATURE_SPEC_NAME
from sim_tf.errors import UserError

RUNNER = "run.sh"
CONFIG = "recipe"
# The recipe's models, by our --model_type names (it has no ETA/SDIM/TWIN and no behaviour store).
MODELS = ("sim", "din", "dien")
_RESULT = re.compile(r"^RESULT (\S+) (.*)$")


def runner_path(folder: str) -> str:
    """The recipe's runner in ``folder``, checked before the first run so a wrong path fails at once."""
    path = os.path.join(os.path.abspath(folder), RUNNER)
    if not os.path.isfile(path):
        raise UserError(f"--recipe {folder!r}: no {RUNNER} in it (give the folder holding the recipe's runner, "
                        f"e.g. ../shared/recipe)")
    if not os.access(path, os.X_OK):
        raise UserError(f"--recipe: {path} is not executable")
    return path


def dataset_facts(dataset_dir: str) -> tuple[int, int | None]:
    """(samples per record, training samples or None) from a dataset folder's FeatureSpec metadata."""
    path = os.path.join(dataset_dir, DEFAULT_FEATURE_SPEC_NAME)
    try:
        with open(path) as f:
            metadata = (yaml.safe_load(f) or {}).get("metadata") or {}
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"--recipe: cannot read {path}: {e}") from None
    samples = metadata.get("samples") if isinstance(metadata.get("samples"), dict) else {}
    train = samples.get("train")
    return int(metadata.get("prebatch_size", 1)), (int(train) if train is not None else None)


def recipe_args(case, settings, dataset_dir: str, long_seq_length: int | None, repeat: int = 0) -> list[str]:
    """The recipe's ``main.py`` flags for repeat ``repeat`` of ``case`` (a bench.Case): the same
    hyperparameters as our trainer's run of the case, in the recipe's spelling."""
    prebatch, train_samples = dataset_facts(dataset_dir)
    batch = settings.global_batch_size
    mode = "inference" if case.mode == "inference" else "train"
    args = ["--mode", mode, "--model_type", case.model, "--global_batch_size", str(batch),
            "--embedding_dim", "16", "--lr", "0.01", "--optimizer", settings.optimizer or "adam",
            "--seed", str(settings.auc_seed(repeat) if case.mode == "auc" else 1)]
    if long_seq_length is not None:
        args += ["--long_seq_length", str(long_seq_length)]
    if prebatch > 1:
        args += ["--prebatch_train_size", str(prebatch), "--prebatch_test_size", str(prebatch)]
    if case.mode == "auc":
        # The recipe crashes when an epoch has no more steps than its warm-up (its README, crash 1).
        steps_per_epoch = train_samples // batch if train_samples else None
        warmup = settings.warmup_steps if steps_per_epoch is None else min(settings.warmup_steps, steps_per_epoch - 1)
        return args + ["--epochs", "1", "--benchmark_warmup_steps", str(max(warmup, 0))]
    args += ["--benchmark", "--benchmark_warmup_steps", str(settings.warmup_steps),
             "--benchmark_steps", str(settings.steps)]
    if mode == "train":
        # --benchmark stops after warm-up + steps; enough epochs that the data never runs out first.
        steps_per_epoch = max(train_samples // batch, 1) if train_samples else 1
        args += ["--drop_remainder", "--epochs",
                 str(math.ceil((settings.warmup_steps + settings.steps + 1) / steps_per_epoch))]
    return args


def parse_result(output: str) -> dict | None:
    """The fields of the runner's last RESULT line (numbers as floats, '-' left out); None without one."""
    fields = None
    for line in output.splitlines():
        match = _RESULT.match(line.strip())
        if match:
            fields = dict(part.split("=", 1) for part in match.group(2).split() if "=" in part)
    if fields is None:
        return None
    out = {}
    for key, value in fields.items():
        if value == "-":
            continue
        try:
            out[key] = float(value)
        except ValueError:
            out[key] = value
    return out


def run_once(runner: str, case, args: list[str], dataset_dir: str, results_dir: str, timeout_s: float) -> dict:
    """Runs the recipe once through its runner; the same result fields as our runs (throughput,
    test_auc, peak_rss_bytes, wall_seconds, or error)."""
    results_dir = os.path.abspath(results_dir)
    os.makedirs(results_dir, exist_ok=True)
    env = dict(os.environ, RECIPE_RESULTS=results_dir)
    if case.model == "din" and case.mode == "inference":
        env["REF_DIN_INFER_FIX"] = "1"  # the recipe's DIN inference crashes without it (its README, crash 3)
    command = [runner, "run", os.path.abspath(dataset_dir), *args]
    started = time.perf_counter()
    with open(os.path.join(results_dir, "output.txt"), "w") as out:
        out.write("$ " + shlex.join(command) + "\n")
        out.flush()
        try:
            process = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                     timeout=timeout_s)
            output, code = process.stdout, process.returncode
        except subprocess.TimeoutExpired as e:
            output = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            code = None
        out.write(output)
    result: dict = {"wall_seconds": time.perf_counter() - started, "peak_rss_bytes": 0, "exit_code": code,
                    "command": shlex.join(command)}
    parsed = parse_result(output) or {}
    if parsed.get("peak_rss_gib"):
        result["peak_rss_bytes"] = int(parsed["peak_rss_gib"] * 2**30)
    if code is None:
        result["error"] = f"timed out after {timeout_s:.0f}s"
    elif code != 0 or not parsed.get("throughput"):
        lines = [line for line in output.splitlines() if line.strip() and not line.startswith("RESULT")]
        result["error"] = f"recipe exit status {code}: {lines[-1].strip() if lines else 'no output'}"
    else:
        result["throughput"] = parsed["throughput"]
        if "test_auc" in parsed:
            result["test_auc"] = parsed["test_auc"]
    return result
