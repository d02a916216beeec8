"""`sim-tf COMMAND [--flags]`: one console script, one thin front-end module per command.

Each command module (sim_tf/commands/) defines its absl flags at import time and a ``main(argv)``;
only the chosen command's module is imported. ``sim-tf COMMAND --help`` lists that command's flags
(and those of the modules named in its ``FLAGS_MODULES``); ``--helpfull`` lists every flag.
A :class:`~sim_tf.errors.UserError` ends the command with its message on stderr and exit status 1; a
bad flag with status 2.

TensorFlow's start-up lines (oneDNN banners, absl's "before InitializeLog" warning, INFO/WARNING lines)
are hidden unless ``--tf_log_level`` or ``TF_CPP_MIN_LOG_LEVEL`` asks for them.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import sys
from typing import Callable

# name -> (module, main's keyword arguments, one-line help)
COMMANDS = {
    "demo": ("sim_tf.commands.demo", {}, "the main job: raw synthetic files -> preprocess -> convert -> train SIM one epoch -> evaluate"),
    "train": ("sim_tf.commands.train", {"mode": "train"}, "train a model (same flags as python -m sim_tf.main --mode train)"),
    "evaluate": ("sim_tf.commands.train", {"mode": "evaluate"}, "evaluate a checkpoint on the test split (AUC, GAUC, log loss)"),
    "inference": ("sim_tf.commands.train", {"mode": "inference"}, "predict the test split and measure throughput and latency"),
    "export": ("sim_tf.commands.export", {}, "write a SavedModel (serving_default over raw, named inputs) from a checkpoint"),
    "predict": ("sim_tf.commands.predict", {}, "batch prediction from an exported model to parquet or CSV"),
    "report": ("sim_tf.commands.report", {}, "PNG of training loss, test AUC/GAUC and the ROC curve from a run's log"),
    "launch": ("sim_tf.commands.launch", {}, "start N local workers (`launch local`), or print TF_CONFIG for a cluster (`launch tf-config`)"),
    "preprocess": ("sim_tf.commands.preprocess", {}, "training data from raw data: Amazon Books 2014 files (`preprocess amazon`) or an interaction log on Dask (`preprocess events`)"),
    "convert": ("sim_tf.commands.convert", {}, "BYO parquet + metadata.json -> TFRecord shards + feature_spec.yaml"),
    "synthesize": ("sim_tf.commands.synthesize", {}, "write a synthetic dataset (TFRecord, raw Amazon-format files, or an interaction log)"),
    "inspect": ("sim_tf.commands.inspect", {}, "validate a dataset and print its shape, counts and a sample batch"),
    "benchmark": ("sim_tf.commands.benchmark", {}, "train/inference throughput, latency, peak memory (and AUC) per model, preset and precision"),
    "benchmark-compare": ("sim_tf.commands.benchmark_compare", {}, "throughput ratios and paired per-seed AUC differences of two benchmark reports (or of configs within one)"),
    "benchmark-input": ("sim_tf.commands.benchmark_input", {}, "measure the input pipeline's samples/s"),
    "profile": ("sim_tf.commands.profile", {}, "top TensorFlow ops of a --profile_steps trace, without the profile plugin"),
    "gpu-check": ("sim_tf.commands.gpu_check", {}, "first run on a GPU machine: build, GPUs, fp32/amp/xla step speed, loss scale, XLA compiles, copies"),
}

HELP_FLAGS = ("-h", "--help", "-help", "-?", "--helpshort")
# Commands that never need TensorFlow, so never pay its seconds of start-up: `launch` must stay
# single-threaded until it has entered its private network; `preprocess` is pandas/pyarrow/Dask work.
WITHOUT_TENSORFLOW = ("launch", "preprocess")
TF_LOG_FLAG = "--tf_log_level"


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: sim-tf COMMAND [--flags]   (sim-tf COMMAND --help for a command's flags)", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_text}" for name, (_, _, help_text) in COMMANDS.items()]
    lines += ["", f"every command also takes {TF_LOG_FLAG}=N: TensorFlow's C++ log level (0 shows everything; "
                  "default 3, or TF_CPP_MIN_LOG_LEVEL), and --debug: a traceback instead of a one-line error"]
    return "\n".join(lines)


def tf_log_level(argv: list[str]) -> tuple[str | None, list[str]]:
    """(the --tf_log_level value, argv without it); the value is checked to be 0..3."""
    value, rest, args = None, [], iter(argv)
    for arg in args:
        if arg == TF_LOG_FLAG:
            value = next(args, "")
        elif arg.startswith(TF_LOG_FLAG + "="):
            value = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    if value is not None and value not in ("0", "1", "2", "3"):
        print(f"sim-tf: {TF_LOG_FLAG} must be 0, 1, 2 or 3, got {value!r}", file=sys.stderr)
        sys.exit(2)
    return value, rest


@contextlib.contextmanager
def _quiet_stderr(enabled: bool):
    """fd 2 pointed at /dev/null inside the block (C++ start-up lines bypass Python's sys.stderr)."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def quiet_tensorflow_import(level: str | None, import_now: bool = True) -> None:
    """Imports TensorFlow once, without its start-up banners unless a log level was asked for (without
    ``import_now``, only sets the log level that this process's children inherit)."""
    if level is not None:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = level
    asked = "TF_CPP_MIN_LOG_LEVEL" in os.environ
    # 3: TensorFlow's C++ ERROR lines too (e.g. oneDNN's "DT_INT32 only with AVX-512" on every CPU
    # without it); a failure still ends in the command's own message.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules or not import_now:
        return
    try:
        with _quiet_stderr(enabled=not asked or os.environ["TF_CPP_MIN_LOG_LEVEL"] >= "2"):
            import tensorflow  # noqa: F401
    except ImportError:
        pass  # commands that do not need TensorFlow still run; the ones that do say so when they import it


def command_help(name: str, module) -> str:
    """`sim-tf NAME --help`: the command's description and its own flags, with help and defaults."""
    from absl import flags

    doc = (module.__doc__ or "").strip()
    summary = COMMANDS[name][2] if name in COMMANDS else "train, evaluate or infer (--mode), the recipe's form"
    text = [f"{'python -m sim_tf.main' if name == 'main' else 'sim-tf ' + name}: {summary}", ""]
    if doc:
        text += [doc, ""]
    sections = 0
    for owner in (module.__name__, *getattr(module, "FLAGS_MODULES", ())):
        listed = flags.FLAGS.get_flags_for_module(owner)
        if listed:
            sections += 1
            text += [flags.FLAGS.module_help(owner), ""]
    if not sections:
        text += ["(this command has no flags of its own)", ""]
    text.append(f"Try --helpfull for every flag (TensorFlow's and absl's too); {TF_LOG_FLAG}=N shows TensorFlow's logs.")
    return "\n".join(text)


def run_command(name: str, argv: list[str], run: Callable, module=None) -> None:
    """Parses flags for ``name`` and calls ``run(argv)`` under absl, with friendly errors."""
    from absl import app

    program = "python -m sim_tf.main" if name == "main" else f"sim-tf {name}"
    if module is not None and any(arg in HELP_FLAGS for arg in argv[1:]):
        print(command_help(name, module))
        sys.exit(0)
    app.run(_guarded(program, run), argv=[program] + list(argv[1:]), flags_parser=_flags_parser(program))


def take_global_flags(argv: list[str]) -> tuple[str | None, list[str]]:
    """Takes the flags every entry point accepts out of ``argv``, before absl parses the rest:
    ``--tf_log_level`` (returned) and ``--debug`` (tracebacks instead of one-line messages, set for this
    process and its children)."""
    level, argv = tf_log_level(argv)
    if "--debug" in argv:
        argv.remove("--debug")
        os.environ["SIM_TF_DEBUG"] = "1"
    return level, argv


def main(argv: list[str] | None = None) -> None:
    level, argv = take_global_flags(list(sys.argv if argv is None else argv))
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(usage())
        sys.exit(0 if len(argv) >= 2 else 2)
    name = argv[1]
    if name not in COMMANDS:
        print(f"sim-tf: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    # `--help` imports only what the command's flags need (importing TensorFlow takes seconds).
    helping = any(arg in HELP_FLAGS for arg in argv[2:])
    quiet_tensorflow_import(level, import_now=name not in WITHOUT_TENSORFLOW and not helping)
    module_name, kwargs, _ = COMMANDS[name]
    # A command whose flags live beside TensorFlow code imports it here: without its start-up lines.
    with _quiet_stderr(enabled=helping and os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3") >= "2"):
        module = importlib.import_module(module_name)
    run_command(name, argv[1:], functools.partial(module.main, **kwargs), module)


def _guarded(program: str, run):
    """Runs a command under sim_tf.faults.guard: one line on stderr for a user's error or an outside fault."""

    def wrapped(argv):
        from absl import logging

        from sim_tf import faults

        logging.set_verbosity(logging.WARNING)  # TensorFlow's Python INFO lines (checkpoint sharding, ...)
        return faults.guard(program, run, argv)

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
