"""sim-tf benchmark-input: how many records per second the input pipeline delivers."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import numpy as np
from absl import flags

from sim_tf.data import feature_spec as fs  # TensorFlow-free: `--help` stays fast; the readers import it

if TYPE_CHECKING:
    from sim_tf.data import dataset as data

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset_dir", None, "Folder holding the FeatureSpec and the TFRecord files.")
flags.DEFINE_string("feature_spec", fs.DEFAULT_FEATURE_SPEC_NAME, "Name of the FeatureSpec file in --dataset_dir.")
flags.DEFINE_enum("mapping", "train", ["train", "test"], "Which mapping to read.")
flags.DEFINE_integer("global_batch_size", 4096, "Samples per batch.", lower_bound=1)
flags.DEFINE_integer("long_seq_length", 90, "Long/short history split.", lower_bound=1)
flags.DEFINE_integer("repeats", 3, "Full passes to time; the median is reported.", lower_bound=1)
flags.DEFINE_boolean("cache", False, "Cache the serialized records after the first pass.")
flags.DEFINE_string("json_output", None, "Also write the measurements to this JSON file.")
flags.mark_flag_as_required("dataset_dir")


def measure(spec: fs.FeatureSpec, mapping: str, batch_size: int, options: data.InputOptions, repeats: int) -> dict:
    from sim_tf.data import dataset as data

    ds = data.make_dataset(spec, mapping, batch_size, options=options)
    rates = []
    for _ in range(repeats):
        samples = 0
        started = time.perf_counter()
        for _, label in ds:
            samples += int(label.shape[0])
        rates.append(samples / (time.perf_counter() - started))
    return {
        "mapping": mapping,
        "batch_size": batch_size,
        "samples_per_pass": samples,
        "records_per_s_median": float(np.median(rates)),
        "records_per_s_min": float(np.min(rates)),
        "records_per_s_max": float(np.max(rates)),
        "passes": repeats,
    }


def main(argv):
    del argv
    from sim_tf.data import dataset as data

    spec = fs.FeatureSpec.from_yaml(f"{FLAGS.dataset_dir.rstrip('/')}/{FLAGS.feature_spec}")
    options = data.InputOptions(long_seq_length=FLAGS.long_seq_length, cache=FLAGS.cache, seed=0)
    result = measure(spec, FLAGS.mapping, FLAGS.global_batch_size, options, FLAGS.repeats)
    print(
        f"input pipeline, {result['mapping']} mapping, batch {result['batch_size']}: "
        f"{result['records_per_s_median']:,.0f} samples/s median over {result['passes']} passes "
        f"(min {result['records_per_s_min']:,.0f}, max {result['records_per_s_max']:,.0f})"
    )
    if FLAGS.json_output:
        with open(FLAGS.json_output, "w") as f:
            json.dump(result, f, indent=2)
