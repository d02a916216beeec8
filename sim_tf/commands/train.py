"""sim-tf train | evaluate | inference: the trainer's front end (flags in sim_tf/train/flags.py).

  sim-tf train --dataset_dir DIR --global_batch_size 4096 --epochs 1
  sim-tf evaluate --dataset_dir DIR --load_checkpoint_path CKPT
  sim-tf inference --dataset_dir DIR --load_checkpoint_path CKPT --benchmark
"""

from __future__ import annotations

from absl import flags

from sim_tf.errors import UserError
from sim_tf.train import flags as trainer_flags

FLAGS = flags.FLAGS
FLAGS_MODULES = (trainer_flags.__name__,)  # where this command's flags are defined (for --help)


def main(argv, mode: str | None = None):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {argv[1:]}; flags take the form --name=value")
    if mode is not None and FLAGS["mode"].present and FLAGS.mode != mode:
        raise UserError(f"`sim-tf {mode}` runs --mode {mode}; drop --mode={FLAGS.mode} or use `sim-tf {FLAGS.mode}`")
    from sim_tf.train import train_lib

    train_lib.run(trainer_flags.config_from_flags(mode))
    # returns nothing: absl would print a returned value and exit non-zero
