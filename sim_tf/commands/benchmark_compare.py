"""sim-tf benchmark-compare: throughput ratios and paired per-seed AUC differences of benchmark results.

  sim-tf benchmark-compare BEFORE.json AFTER.json      every case in both (e.g. two checkouts, or two flag sets)
  sim-tf benchmark-compare RESULTS.json                every config against fp32 within one report
  sim-tf benchmark-compare RESULTS.json --baseline_config amp --tolerance 0.001
  sim-tf benchmark-compare RESULTS.json --baseline_gsu soft     every search unit against SIM's soft one
  sim-tf benchmark-compare RESULTS.json --baseline_gsu soft --confidence 0.99   a stricter interval

The files are `sim-tf benchmark --json_output` reports. For `--modes auc` cases, runs pair up by seed;
the table gives each seed's difference, their mean with a confidence interval (95% by default), and the
verdict on "AUC unchanged within --tolerance": decided only when the interval lies inside (or outside)
+-tolerance.
"""

from __future__ import annotations

import dataclasses
import json
import os

from absl import flags

from sim_tf.bench import compare as bench_compare
from sim_tf.bench import suite as bench
from sim_tf.data.atomic import atomic_write_text
from sim_tf.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_string("baseline_config", "fp32", f"With one report: the config the others are compared with, from "
                    f"{list(bench.CONFIGS)}.")
flags.DEFINE_string("baseline_gsu", None, "With one report: compare search units (--gsu) instead of configs, each "
                    "against this one (e.g. soft), same model, preset, mode, config and history, paired by seed.")
flags.DEFINE_float("tolerance", 0.002, "AUC change that counts as unchanged (per seed, and for the mean's interval).",
                   lower_bound=0.0)
flags.DEFINE_float("confidence", 0.95, "Two-sided level of the interval of each mean paired difference. Above "
                   "0.95 when one claim has been looked at several times: m looks, each at 0.05/m, keep the chance "
                   "of a false claim over all of them at 5% (e.g. 0.9875 for the fourth look).")
flags.DEFINE_string("json_output", None, "Also write the comparison as JSON to this file.")


def main(argv):
    paths = list(argv[1:])
    if not 1 <= len(paths) <= 2:
        raise UserError("give one benchmark report (configs compared within it) or two (BASE NEW), "
                        f"got {len(paths)} argument(s)")
    if FLAGS.baseline_config not in bench.CONFIGS:
        raise UserError(f"--baseline_config: unknown config {FLAGS.baseline_config!r}; choose from {list(bench.CONFIGS)}")
    if not 0.0 < FLAGS.confidence < 1.0:
        raise UserError(f"--confidence: a level between 0 and 1 (e.g. 0.95), got {FLAGS.confidence}")
    reports = [bench_compare.load_report(p) for p in paths]
    if len(reports) == 2:
        comparisons = bench_compare.compare_reports(*reports)
    elif FLAGS.baseline_gsu:
        comparisons = bench_compare.compare_search_units(reports[0], FLAGS.baseline_gsu)
    else:
        comparisons = bench_compare.compare_configs(reports[0], FLAGS.baseline_config)
    comparisons = [dataclasses.replace(c, confidence=FLAGS.confidence) for c in comparisons]
    print(bench_compare.format_comparisons(comparisons, FLAGS.tolerance))
    if FLAGS.json_output:
        rows = [{
            "model": c.model, "preset": c.preset, "mode": c.mode, "base": c.base, "new": c.new,
            "base_throughput": c.base_throughput, "new_throughput": c.new_throughput,
            "throughput_ratio": c.throughput_ratio, "seeds": list(c.seeds),
            "auc_differences": list(c.auc_differences), "mean_auc_difference": c.mean_difference,
            "confidence": c.confidence, "interval": list(c.interval) if c.interval else None,
            "base_auc_sd": c.base_auc_sd,
            "within_tolerance": c.within(FLAGS.tolerance), "verdict": c.verdict(FLAGS.tolerance)
            if c.auc_differences else None,
        } for c in comparisons]
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.json_output)), exist_ok=True)
        atomic_write_text(FLAGS.json_output, json.dumps({"reports": paths, "tolerance": FLAGS.tolerance,
                                                         "comparisons": rows}, indent=2))
