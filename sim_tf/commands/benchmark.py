"""sim-tf benchmark: training and inference throughput (and one-epoch AUC) per model, preset and config.

  sim-tf benchmark                                       SIM, DIEN, DIN on `small`: train + inference, fp32 + amp
  sim-tf benchmark --models sim --configs fp32,amp+xla --modes train,inference,auc --repeats 5
  sim-tf benchmark --presets small,amazon --modes train -- --optimizer=lazy_adam   (flags after -- go to every run)
  sim-tf benchmark --presets sim_tf_demo/data/amazon-raw-seed0/tfrecord --modes auc   (a dataset folder)
  sim-tf benchmark --models sim --presets lifelong --gsus soft,hard --long_histories 100,1000,10000 \
      --configs fp32 --global_batch_size 1024      (long histories from a behaviour store)
  sim-tf benchmark --recipe ../shared/recipe --configs fp32,amp    (NVIDIA's recipe side by side: ratio column)
"""

from __future__ import annotations

import json
import os
import time

from absl import flags

from sim_tf.bench import recipe
from sim_tf.bench import suite as bench
from sim_tf.data.atomic import atomic_write_text
from sim_tf.errors import UserError
from sim_tf.models import MODEL_TYPES

FLAGS = flags.FLAGS
flags.DEFINE_list("models", list(MODEL_TYPES), f"Models to measure, from {list(MODEL_TYPES)}.")
flags.DEFINE_list("presets", ["small"], "Synthetic presets to measure on (tiny, small, amazon, lifelong; each is written once "
                  "to --data_dir), or paths of dataset folders holding a feature_spec.yaml (a path has a '/'), "
                  "e.g. the demo's sim_tf_demo/data/amazon-raw-seed0/tfrecord, where one epoch trains to "
                  "convergence.")
flags.DEFINE_list("modes", ["train", "inference"], "train: --benchmark training steps; inference: --benchmark "
                  "prediction batches of the test split (random weights); auc: one real epoch + test AUC (repeat r "
                  "trains with --seed=first_seed+r, so the AUC range is the seed-to-seed spread).")
flags.DEFINE_list("gsus", ["soft", "hard"], "Behaviour-store presets only: SIM's search units to measure (DIN and "
                  "DIEN always get the whole long history).")
flags.DEFINE_list("long_histories", ["100", "1000", "10000"], "Behaviour-store presets only: long-history spans "
                  "(--max_long_history) to measure.")
flags.DEFINE_list("configs", ["fp32", "amp"], f"Precision/compilation settings, from {list(bench.CONFIGS)} "
                  "(amp is bfloat16 on CPU, float16 with loss scaling on GPU).")
flags.DEFINE_integer("repeats", 3, "Runs per case, each in a fresh process, round-robin over the cases; the table "
                     "shows their median and range.",
                     lower_bound=1)
flags.DEFINE_integer("first_seed", 0, "auc runs: the first repeat's --seed (repeat r trains with --seed=first_seed+r). "
                     "Fresh seeds for a replication that must not reuse the seeds a choice was made on; "
                     "`sim-tf benchmark-compare` pairs runs by the seed each trained with.", lower_bound=0)
flags.DEFINE_integer("global_batch_size", 4096, "Global batch size of every run.", lower_bound=1)
flags.DEFINE_integer("warmup_steps", 5, "Untimed steps (train) or batches (inference) per run.", lower_bound=0)
flags.DEFINE_integer("steps", 30, "Timed steps or batches per run.", lower_bound=1)
flags.DEFINE_string("optimizer", None, "Optimizer for train/auc runs (default: the trainer's default).")
flags.DEFINE_string("data_dir", "sim_tf_bench/data", "Where the presets' datasets are kept.")
flags.DEFINE_string("work_dir", "sim_tf_bench/runs", "Where each run's results and output go.")
flags.DEFINE_string("json_output", "sim_tf_bench/benchmark.json", "The full results (every run) as JSON.")
flags.DEFINE_float("timeout_s", 3600.0, "Stop a run that takes longer than this.", lower_bound=1.0)
flags.DEFINE_string("recipe", None, "Also run NVIDIA's SIM recipe beside ours: the folder holding its runner run.sh "
                    "(e.g. ../shared/recipe, set up once with its setup.sh). Every SIM/DIN/DIEN case on a "
                    "recipe-format dataset gets a 'recipe' run before ours in each round (same data, batch, "
                    "optimizer, steps; float32), and the table shows each config's median as a multiple of it.")
flags.DEFINE_string("sim_tf_path", None, "Run the trainer from another checkout of sim-tf (the folder holding its "
                    "sim_tf package), e.g. an older commit for a before/after table.")


def main(argv):
    extra = tuple(argv[1:])
    if extra and extra[0] == "--":
        extra = extra[1:]
    for flag in extra:
        if not flag.startswith("--"):
            raise UserError(f"unexpected argument {flag!r}: trainer flags go after `--`, as --name=value")
    settings = bench.Settings(
        global_batch_size=FLAGS.global_batch_size,
        warmup_steps=FLAGS.warmup_steps,
        steps=FLAGS.steps,
        repeats=FLAGS.repeats,
        first_seed=FLAGS.first_seed,
        optimizer=FLAGS.optimizer,
        extra_flags=extra,
        timeout_s=FLAGS.timeout_s,
        sim_tf_path=FLAGS.sim_tf_path,
        recipe=recipe.runner_path(FLAGS.recipe) if FLAGS.recipe else None,
    )
    if FLAGS.sim_tf_path and not os.path.isfile(os.path.join(FLAGS.sim_tf_path, "sim_tf", "__init__.py")):
        raise UserError(f"--sim_tf_path {FLAGS.sim_tf_path!r} holds no sim_tf package (sim_tf/__init__.py)")
    for model in FLAGS.models:
        if model not in MODEL_TYPES:
            raise UserError(f"--models: unknown model {model!r}; choose from {list(MODEL_TYPES)}")
    try:
        long_histories = [int(v) for v in FLAGS.long_histories]
    except ValueError:
        raise UserError(f"--long_histories must be integers, got {','.join(FLAGS.long_histories)!r}") from None
    all_cases = bench.cases(FLAGS.models, FLAGS.presets, FLAGS.modes, FLAGS.configs, FLAGS.gsus, long_histories,
                            recipe=bool(FLAGS.recipe))
    print(f"machine: {bench.machine_line()}")
    started = time.perf_counter()
    results = bench.run_suite(all_cases, settings, FLAGS.data_dir, FLAGS.work_dir)
    report = {
        "settings": {**settings.__dict__, "extra_flags": list(extra)},
        "machine": bench.machine(),
        "seconds": time.perf_counter() - started,
        "results": results,
    }
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.json_output)), exist_ok=True)
    atomic_write_text(FLAGS.json_output, json.dumps(report, indent=2))
    print()
    print(bench.format_table(results))
    print(f"\n{len(all_cases)} case(s) x {settings.repeats} run(s) in {report['seconds']:.0f}s; every run in "
          f"{FLAGS.json_output}")
    failed = [r["case"] for r in results if r["result"].get("failed")]
    if failed:
        names = ", ".join(bench.Case(**c).name for c in failed)
        raise UserError(f"{len(failed)} case(s) had failed runs: {names} (see their output.txt under {FLAGS.work_dir})")
