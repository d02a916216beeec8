"""`sim-tf COMMAND [--flags]`: one console script, one module per command.

Each command module defines its absl flags at import time and a ``main(argv)``; only the chosen
command's module is imported, so ``sim-tf COMMAND --help`` lists exactly that command's flags.
A :class:`~sim_tf.errors.UserError` ends the command with its message on stderr and exit status 1; a
bad flag with status 2.
"""

from __future__ import annotations

import functools
import importlib
import sys
from typing import Callable

# name -> (module, main's keyword arguments, one-line help)
COMMANDS = {
    "demo": ("sim_tf.commands.demo", {}, "the main job: raw synthetic files -> preprocess -> convert -> train SIM one epoch -> evaluate"),
    "train": ("sim_tf.main", {"mode": "train"}, "train a model (same flags as python -m sim_tf.main --mode train)"),
    "evaluate": ("sim_tf.main", {"mode": "evaluate"}, "evaluate a checkpoint on the test split (AUC, GAUC, log loss)"),
    "inference": ("sim_tf.main", {"mode": "inference"}, "predict the test split and measure throughput and latency"),
    "export": ("sim_tf.commands.export", {}, "write a SavedModel (serving_default over raw, named inputs) from a checkpoint"),
    "predict": ("sim_tf.commands.predict", {}, "batch prediction from an exported model to parquet or CSV"),
    "report": ("sim_tf.commands.report", {}, "PNG of training loss, test AUC/GAUC and the ROC curve from a run's log"),
    "launch": ("sim_tf.commands.launch", {}, "start N local workers (`launch local`), or print TF_CONFIG for a cluster (`launch tf-config`)"),
    "preprocess": ("sim_tf.commands.preprocess", {}, "Amazon Books 2014 raw files -> BYO parquet (`sim-tf preprocess amazon`)"),
    "convert": ("sim_tf.commands.convert", {}, "BYO parquet + metadata.json -> TFRecord shards + feature_spec.yaml"),
    "synthesize": ("sim_tf.commands.synthesize", {}, "write a synthetic dataset (TFRecord, or raw Amazon-format files)"),
    "inspect": ("sim_tf.commands.inspect", {}, "validate a dataset and print its shape, counts and a sample batch"),
    "benchmark": ("sim_tf.commands.benchmark", {}, "train/inference throughput, latency, peak memory (and AUC) per model, preset and precision"),
    "benchmark-compare": ("sim_tf.commands.benchmark_compare", {}, "throughput ratios and paired per-seed AUC differences of two benchmark reports (or of configs within one)"),
    "benchmark-input": ("sim_tf.commands.benchmark_input", {}, "measure the input pipeline's samples/s"),
    "profile": ("sim_tf.commands.profile", {}, "top TensorFlow ops of a --profile_steps trace, without the profile plugin"),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: sim-tf COMMAND [--flags]   (sim-tf COMMAND --help for a command's flags)", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_text}" for name, (_, _, help_text) in COMMANDS.items()]
    return "\n".join(lines)


def run_command(name: str, argv: list[str], run: Callable) -> None:
    """Parses flags for ``name`` and calls ``run(argv)`` under absl, with friendly errors."""
    from absl import app

    program = "python -m sim_tf.main" if name == "main" else f"sim-tf {name}"
    app.run(_guarded(program, run), argv=[program] + list(argv[1:]), flags_parser=_flags_parser(program))


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(usage())
        sys.exit(0 if len(argv) >= 2 else 2)
    name = argv[1]
    if name not in COMMANDS:
        print(f"sim-tf: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    module_name, kwargs, _ = COMMANDS[name]
    module = importlib.import_module(module_name)
    run_command(name, argv[1:], functools.partial(module.main, **kwargs))


def _guarded(program: str, run):
    """Runs a command; a UserError becomes one line on stderr and exit status 1."""
    from sim_tf.errors import UserError

    def wrapped(argv):
        from absl import logging

        from sim_tf.errors import Interrupted

        logging.set_verbosity(logging.WARNING)  # TensorFlow's Python INFO lines (checkpoint sharding, ...)
        try:
            return run(argv)
        except UserError as e:
            print(f"{program}: error: {e}", file=sys.stderr)
            sys.exit(1)
        except Interrupted as e:
            print(f"{program}: {e}", file=sys.stderr)
            sys.exit(Interrupted.exit_code)

    return wrapped


def _flags_parser(program: str):
    from absl import flags

    def parse(argv):
        try:
            return flags.FLAGS(argv)
        except flags.Error as e:
            print(f"{program}: {e}\nRun `{program} --help` for the flags.", file=sys.stderr)
            sys.exit(2)

    return parse
