"""sim-tf preprocess amazon: Amazon Books 2014 raw files -> BYO parquet (metadata.json + parts)."""

from __future__ import annotations

import os
import time

from absl import flags

from sim_tf.data.atomic import atomic_directory
from sim_tf.errors import UserError
from sim_tf.preprocess import amazon

FLAGS = flags.FLAGS
flags.DEFINE_string("reviews", None, "reviews_Books.json or reviews_Books.json.gz (JSON lines).")
flags.DEFINE_string("meta", None, "meta_Books.json or meta_Books.json.gz (one Python dict literal per line).")
flags.DEFINE_string("output", None, "Folder for metadata.json, train/ and test/ parquet parts.")
flags.DEFINE_integer("min_reviews", 20, "Drop users with fewer reviews than this.")
flags.DEFINE_integer("history_length", 100, "Behaviours kept per history (L); shorter ones are left-padded.")
flags.DEFINE_integer("min_history", 1, "Behaviours a training prefix needs before its target.")
flags.DEFINE_integer("train_parts", 8, "Parquet parts for the training rows (rows are shuffled across them).")
flags.DEFINE_integer("test_parts", 1, "Parquet parts for the test rows.")
flags.DEFINE_integer("seed", 0, "Seed for negatives and shuffling; the same seed gives the same output.")
flags.DEFINE_integer("workers", min(2, os.cpu_count() or 1), "Processes writing the parquet parts.")
flags.DEFINE_boolean("strict", False, "Stop at the first malformed input line instead of skipping it.")
flags.DEFINE_boolean("overwrite", False, "Replace an existing --output.")


def main(argv):
    if len(argv) != 2 or argv[1] != "amazon":
        raise UserError("usage: sim-tf preprocess amazon --reviews FILE --meta FILE --output DIR (the only source "
                        "is `amazon`; bring other data as parquet and use `sim-tf convert`)")
    for name in ("reviews", "meta", "output"):
        if not FLAGS[name].value:
            raise UserError(f"--{name} is required")
    config = amazon.AmazonConfig(
        min_reviews=FLAGS.min_reviews, history_length=FLAGS.history_length, min_history=FLAGS.min_history,
        train_parts=FLAGS.train_parts, test_parts=FLAGS.test_parts, seed=FLAGS.seed, strict=FLAGS.strict,
        workers=FLAGS.workers,
    )
    started = time.perf_counter()
    with atomic_directory(FLAGS.output, FLAGS.overwrite) as staging:
        counts = amazon.preprocess(FLAGS.reviews, FLAGS.meta, staging, config)
    elapsed = time.perf_counter() - started
    print(f"preprocessed {counts['reviews_read']:,} review lines in {elapsed:.1f}s "
          f"({counts['reviews_read'] / elapsed:,.0f} reviews/s): {counts['users']:,} users, {counts['items']:,} items, "
          f"{counts['categories']:,} categories, {counts['train_rows']:,} train and {counts['test_rows']:,} test rows "
          f"in {FLAGS.output}")
