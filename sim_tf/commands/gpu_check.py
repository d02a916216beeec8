"""sim-tf gpu-check: a ~10-minute smoke test for the first run on a GPU machine (sim_tf/bench/gpu_check.py).

  sim-tf gpu-check                              on the `small` synthetic preset (written once)
  sim-tf gpu-check --dataset_dir DATA           on your own dataset
"""

from __future__ import annotations

import json
import os

from absl import flags

from sim_tf.bench import gpu_check
from sim_tf.data.atomic import atomic_write_text

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset_dir", None, "Dataset folder to measure on (default: the `small` synthetic preset, "
                    "written to --work_dir once).")
flags.DEFINE_string("work_dir", "sim_tf_gpu_check", "Where the runs' results, the preset and the report go.")
flags.DEFINE_integer("global_batch_size", 131072, "Global batch size (the recipe's).", lower_bound=1)
flags.DEFINE_integer("warmup_steps", 10, "Untimed steps per run.", lower_bound=0)
flags.DEFINE_integer("steps", 40, "Timed steps per run.", lower_bound=1)
flags.DEFINE_float("timeout_s", 900.0, "Stop a run that takes longer than this.", lower_bound=1.0)


def main(argv):
    del argv
    from sim_tf.bench import suite

    if not gpu_check.device_details():
        print(gpu_check.no_gpu_line(gpu_check.build_info()))
        return
    dataset = FLAGS.dataset_dir or suite.ensure_dataset("small", os.path.join(FLAGS.work_dir, "data"))
    print(f"gpu-check on {dataset}, batch {FLAGS.global_batch_size}; host: {suite.machine_line()}")
    results = {}
    for run in gpu_check.planned_runs():
        results_dir = os.path.join(FLAGS.work_dir, "runs", run.name.replace(" ", "_").replace("+", "_"))
        args = gpu_check.run_args(run, dataset, results_dir, FLAGS.global_batch_size, FLAGS.warmup_steps, FLAGS.steps)
        results[run.name] = gpu_check.run_one(run, args, results_dir, FLAGS.timeout_s)
        shown = results[run.name].get("error") or f"{results[run.name]['throughput']:,.0f} samples/s"
        print(f"  {run.name}: {shown}", flush=True)
    rate = gpu_check.input_rate(dataset, FLAGS.global_batch_size)
    report = gpu_check.format_report(gpu_check.build_info(), gpu_check.device_details(), results, rate)
    print()
    print(report)
    os.makedirs(FLAGS.work_dir, exist_ok=True)
    atomic_write_text(os.path.join(FLAGS.work_dir, "gpu_check.json"),
                      json.dumps({"results": results, "input_samples_per_s": rate}, indent=2, default=str))
