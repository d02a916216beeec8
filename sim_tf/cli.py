"""`sim-tf COMMAND [--flags]`: one console script, one module per command.

Each command module defines its absl flags at import time and a ``main(argv)``; only the chosen
command's module is imported, so ``sim-tf COMMAND --help`` lists exactly that command's flags.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "synthesize": ("sim_tf.commands.synthesize", "write a synthetic dataset (FeatureSpec + TFRecord)"),
    "inspect": ("sim_tf.commands.inspect", "validate a dataset and print its shape, counts and a sample batch"),
    "benchmark-input": ("sim_tf.commands.benchmark_input", "measure the input pipeline's records/s"),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: sim-tf COMMAND [--flags]   (sim-tf COMMAND --help for a command's flags)", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_text}" for name, (_, help_text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(usage())
        sys.exit(0 if len(argv) >= 2 else 2)
    name = argv[1]
    if name not in COMMANDS:
        print(f"sim-tf: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(COMMANDS[name][0])
    from absl import app

    app.run(_guarded(name, module.main), argv=[f"sim-tf {name}"] + argv[2:], flags_parser=_flags_parser(name))


def _guarded(command: str, run):
    """Runs a command; a UserError becomes one line on stderr and exit status 1."""
    from sim_tf.errors import UserError

    def wrapped(argv):
        try:
            return run(argv)
        except UserError as e:
            print(f"sim-tf {command}: error: {e}", file=sys.stderr)
            sys.exit(1)

    return wrapped


def _flags_parser(command: str):
    from absl import flags

    def parse(argv):
        try:
            return flags.FLAGS(argv)
        except flags.Error as e:
            print(f"sim-tf {command}: {e}\nRun `sim-tf {command} --help` for the flags.", file=sys.stderr)
            sys.exit(2)

    return parse
