"""sim-tf launch: run multi-worker jobs.

  sim-tf launch local --num_workers 2 -- train --dataset_dir DIR ...   N workers on this machine
  sim-tf launch tf-config --workers host1:2222,host2:2222 --index 0    print TF_CONFIG for a worker
  sim-tf launch tf-config --slurm [--port 2222]                        TF_CONFIG from SLURM's environment
"""

from __future__ import annotations

import json
import sys

from absl import flags

from sim_tf.launch import cluster, local
from sim_tf.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_workers", 2, "local: workers to start on 127.0.0.1 (0: one per GPU, the recipe's layout).",
                     lower_bound=0, upper_bound=64)
flags.DEFINE_integer("gpus_per_worker", 0, "local: GPUs each worker sees through CUDA_VISIBLE_DEVICES (0: the "
                     "machine's GPUs split evenly; workers never see each other's GPUs).", lower_bound=0)
flags.DEFINE_enum("network", "private", ["private", "host"], "local: private runs the workers in a network "
                  "namespace of their own, reachable only from each other (TensorFlow's servers listen on every "
                  "interface and run any request they get); host runs them on this machine's network.")
flags.DEFINE_float("grace_s", 15.0, "local: seconds a worker gets to exit after SIGTERM before it is killed.")
flags.DEFINE_float("timeout_s", 0.0, "local: stop the whole job after this many seconds (0: no limit).")
flags.DEFINE_list("workers", [], "tf-config: every worker's HOST:PORT, in order (worker 0 is the chief).")
flags.DEFINE_integer("index", None, "tf-config: this machine's position in --workers.")
flags.DEFINE_boolean("slurm", False, "tf-config: take the hosts and this node's index from SLURM's environment.")
flags.DEFINE_integer("port", 23456, "tf-config --slurm: the port every worker listens on.", lower_bound=1,
                     upper_bound=65535)


def main(argv):
    if len(argv) < 2 or argv[1] not in ("local", "tf-config"):
        raise UserError("usage: sim-tf launch local --num_workers N -- COMMAND [FLAGS] | "
                        "sim-tf launch tf-config (--workers H:P,... --index I | --slurm)")
    if argv[1] == "local":
        code = local.run_local(FLAGS.num_workers, argv[2:], grace_s=FLAGS.grace_s, timeout_s=FLAGS.timeout_s,
                               private_network=FLAGS.network == "private", gpus_per_worker=FLAGS.gpus_per_worker)
        sys.exit(code)
    if FLAGS.slurm:
        config = cluster.slurm_tf_config(port=FLAGS.port)
    else:
        if not FLAGS.workers or FLAGS.index is None:
            raise UserError("tf-config needs --workers HOST:PORT,... and --index I (or --slurm)")
        config = cluster.tf_config(FLAGS.workers, FLAGS.index)
    print(json.dumps(config))
