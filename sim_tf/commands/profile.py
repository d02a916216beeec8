"""sim-tf profile: the top ops of a --profile_steps trace, in the terminal.

  sim-tf train --dataset_dir D --global_batch_size 4096 --benchmark --profile_steps 10,13 --results_dir R
  sim-tf profile R/tensorboard
  sim-tf inference --dataset_dir D --random_init --benchmark --profile_steps 10,13 --results_dir R   (prediction)
"""

from __future__ import annotations

from absl import flags

from sim_tf.bench import profile_summary
from sim_tf.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_integer("top", 20, "How many op types and ops to list.", lower_bound=1)


def main(argv):
    if len(argv) != 2:
        raise UserError("usage: sim-tf profile LOGDIR   (the TensorBoard folder of a run trained with --profile_steps)")
    times = profile_summary.op_times(profile_summary.find_trace(argv[1]))
    print(profile_summary.format_top(times, FLAGS.top))
