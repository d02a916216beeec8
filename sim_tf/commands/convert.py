"""sim-tf convert: BYO parquet (+ metadata.json) -> TFRecord shards + feature_spec.yaml."""

from __future__ import annotations

import time

from absl import flags

from sim_tf.data.atomic import atomic_directory
from sim_tf.errors import UserError
from sim_tf.preprocess import convert

FLAGS = flags.FLAGS
flags.DEFINE_string("input", None, "BYO parquet folder: metadata.json, train/*.parquet, test/*.parquet.")
flags.DEFINE_string("output", None, "Folder for feature_spec.yaml and the TFRecord shards.")
flags.DEFINE_integer("number_of_user_features", 1, "How many of metadata.json's features (the first ones) are user features.")
flags.DEFINE_enum("columns", "by_position", list(convert.COLUMN_MODES), "Map parquet columns by position (the recipe's way) or by name.")
flags.DEFINE_integer("history_length", 100, "History length L: longer histories keep their last L, shorter are left-padded.")
flags.DEFINE_integer("train_parts", 8, "TFRecord shards for the training split.")
flags.DEFINE_integer("test_parts", 1, "TFRecord shards for the test split.")
flags.DEFINE_integer("prebatch_size", 1, "Samples per record. 32 reads ~3x faster; use it only for rows that are already shuffled (records are shuffled, not the samples inside them).")
flags.DEFINE_boolean("overwrite", False, "Replace an existing --output.")


def main(argv):
    del argv
    for name in ("input", "output"):
        if not FLAGS[name].value:
            raise UserError(f"--{name} is required")
    started = time.perf_counter()
    with atomic_directory(FLAGS.output, FLAGS.overwrite) as staging:
        spec = convert.convert(
            FLAGS.input, staging, FLAGS.number_of_user_features, columns=FLAGS.columns,
            history_length=FLAGS.history_length, train_parts=FLAGS.train_parts, test_parts=FLAGS.test_parts,
            prebatch_size=FLAGS.prebatch_size,
        )
    samples = spec.metadata["samples"]
    rows = samples["train"] + samples["test"]
    elapsed = time.perf_counter() - started
    print(f"wrote {FLAGS.output} in {elapsed:.1f}s ({rows / elapsed:,.0f} rows/s)")
