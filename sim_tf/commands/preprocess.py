"""sim-tf preprocess amazon: Amazon Books 2014 raw files -> BYO parquet (metadata.json + parts), or with
--format store a behaviour-store TFRecord dataset (every review once, samples by reference)."""

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
flags.DEFINE_string("output", None, "Folder for metadata.json, train/ and test/ parquet parts (--format parquet), or "
                    "for feature_spec.yaml, behaviors.npz and the TFRecord samples (--format store).")
flags.DEFINE_enum("format", "parquet", ["parquet", "store"], "parquet: the recipe's BYO layout, padded histories "
                  "(then `sim-tf convert`); store: a ready behaviour-store dataset whose histories are each user's "
                  "whole review sequence (docs/data.md).")
flags.DEFINE_integer("min_reviews", 20, "Drop users with fewer reviews than this.")
flags.DEFINE_integer("history_length", 100, "Behaviours kept per history (L); shorter ones are left-padded. With "
                     "--format store: the recent (short) history S; the long one is the user's whole history.")
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
    # A store's long history is the user's whole review sequence; its recent part defaults to the recipe's 10.
    recent = FLAGS.history_length if FLAGS["history_length"].present or FLAGS.format == "parquet" else 10
    config = amazon.AmazonConfig(
        min_reviews=FLAGS.min_reviews, history_length=recent, min_history=FLAGS.min_history,
        train_parts=FLAGS.train_parts, test_parts=FLAGS.test_parts, seed=FLAGS.seed, strict=FLAGS.strict,
        workers=FLAGS.workers,
    )
    started = time.perf_counter()
    with atomic_directory(FLAGS.output, FLAGS.overwrite) as staging:
        if FLAGS.format == "store":
            counts = amazon.preprocess_store(FLAGS.reviews, FLAGS.meta, staging, config)
        else:
            counts = amazon.preprocess(FLAGS.reviews, FLAGS.meta, staging, config)
    elapsed = time.perf_counter() - started
    print(f"preprocessed {counts['reviews_read']:,} review lines in {elapsed:.1f}s "
          f"({counts['reviews_read'] / elapsed:,.0f} reviews/s): {counts['users']:,} users, {counts['items']:,} items, "
          f"{counts['categories']:,} categories, {counts['train_rows']:,} train and {counts['test_rows']:,} test rows "
          f"in {FLAGS.output}")
