"""`python -m sim_tf.main --mode train|evaluate|inference [--flags]`: the recipe's form of `sim-tf train`.

A thin shim over the `train` command (sim_tf/commands/train.py), kept so that the recipe's README
commands run unchanged.
"""

from __future__ import annotations

import sys


def entry(argv=None):
    from sim_tf import cli

    level, argv = cli.take_global_flags(list(sys.argv if argv is None else argv))
    cli.quiet_tensorflow_import(level)
    from sim_tf.commands import train

    cli.run_command("main", argv, train.main, train)


if __name__ == "__main__":
    entry()
