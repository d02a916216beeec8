"""docs/flags.md, the flag reference, generated from the flags themselves (a test keeps it in sync).

    python -m sim_tf.docs > docs/flags.md

Each command's flags are read in a subprocess of their own, as `sim-tf COMMAND` would define them (two
commands may define flags of the same name, e.g. --output).
"""

from __future__ import annotations

import json
import subprocess
import sys

TRAINER_FLAGS = "sim_tf.train.flags"

_READ = """
import importlib, json, sys
from absl import flags
module = sys.argv[1]
importlib.import_module(module)
rows = []
for flag in sorted(flags.FLAGS.get_flags_for_module(module), key=lambda f: f.name):
    default = flag.default
    if isinstance(default, list):
        default = ",".join(default)
    # A boolean without a default is decided at run time (e.g. --xla by the devices: docs/gpu.md).
    shown = ("auto" if flag.flag_type() == "bool" else "") if default is None else str(default)
    rows.append([flag.name, shown, " ".join(flag.help.split())])
print(json.dumps(rows))
"""


def command_flags(module: str) -> list[list[str]]:
    out = subprocess.run([sys.executable, "-c", _READ, module], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[list[str]]) -> str:
    lines = ["| flag | default | meaning |", "| --- | --- | --- |"]
    for name, default, help_text in rows:
        lines.append(f"| `--{name}` | `{default}` | {help_text.replace('|', chr(92) + '|')} |")
    return "\n".join(lines)


def flags_page() -> str:
    from sim_tf.cli import COMMANDS

    parts = ["# Flag reference", "",
             "Generated from the flags by `python -m sim_tf.docs > docs/flags.md` (a test checks it is current). "
             "`sim-tf COMMAND --help` prints the same for one command; every command also takes "
             "`--tf_log_level=N` (TensorFlow's C++ log level, default 3) and `--flagfile=FILE`.", "",
             "## `sim-tf train` / `evaluate` / `inference` (and `python -m sim_tf.main`)", "",
             table(command_flags(TRAINER_FLAGS))]
    for name, (module, _, help_text) in COMMANDS.items():
        if module == "sim_tf.commands.train":
            continue
        rows = command_flags(module)
        note = " Also takes every trainer flag." if name in ("demo", "export") else ""
        parts += ["", f"## `sim-tf {name}`", "", f"{help_text[0].upper() + help_text[1:]}.{note}", ""]
        parts.append(table(rows) if rows else "(no flags)")
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    sys.stdout.write(flags_page())
