"""sim-tf synthesize: write a synthetic click dataset with a planted long/short-history signal."""

from __future__ import annotations

import dataclasses
import time

from absl import flags

from sim_tf.data import synthetic
from sim_tf.data.atomic import atomic_directory
from sim_tf.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_enum("format", "tfrecord", ["tfrecord", "amazon-raw", "events"], "tfrecord: a ready dataset (FeatureSpec + TFRecord); amazon-raw: reviews_Books.json + meta_Books.json in the 2014 formats, for `sim-tf preprocess amazon`; events: an interaction log (user, item, category, time; parquet parts) for `sim-tf preprocess events`.")
flags.DEFINE_integer("events", 1_000_000, "--format events: rows of the log.", lower_bound=1)
flags.DEFINE_boolean("events_csv", False, "--format events: write CSV instead of parquet.")
flags.DEFINE_boolean("events_labels", False, "--format events: add a 0/1 `clicked` column (an impression log).")
flags.DEFINE_enum("preset", "small", list(synthetic.PRESETS) + list(synthetic.LIFELONG_PRESETS),
                  "Dataset shape to start from (--format tfrecord). lifelong: a behaviour store with histories up to "
                  "--max_history whose signal is older than every sample's last 1,000 behaviours.")
flags.DEFINE_string("output", None, "Folder to write feature_spec.yaml and the TFRecord shards to.")
flags.DEFINE_integer("users", None, "Override the preset's number of users.")
flags.DEFINE_integer("items", None, "Override the preset's number of items.")
flags.DEFINE_integer("categories", None, "Override the preset's number of categories.")
flags.DEFINE_integer("history_length", None, "Override the preset's history length L (padded presets).")
flags.DEFINE_integer("max_history", None, "Override the lifelong preset's longest history (default 10,000).", lower_bound=1)
flags.DEFINE_integer("train_samples", None, "Override the preset's number of training samples.")
flags.DEFINE_integer("test_samples", None, "Override the preset's number of test samples.")
flags.DEFINE_integer("seed", 0, "Random seed; the same seed writes the same dataset.")
flags.DEFINE_integer("num_files", 8, "TFRecord shards for the train split (the test split gets a quarter); --format events: files of the log.", lower_bound=1)
flags.DEFINE_integer(
    "prebatch_size", 32, "Samples per TFRecord record (the recipe's prebatched layout; rows are shuffled "
    "before writing). 1 writes one Example per sample, which reads ~3x slower.", lower_bound=1,
)
flags.DEFINE_boolean("overwrite", False, "Replace an existing dataset in --output.")
flags.mark_flag_as_required("output")


def config_from_flags() -> synthetic.SyntheticConfig:
    overrides = {
        name: getattr(FLAGS, name)
        for name in ("users", "items", "categories", "history_length", "train_samples", "test_samples")
        if getattr(FLAGS, name) is not None
    }
    overrides["seed"] = FLAGS.seed
    try:
        return dataclasses.replace(synthetic.PRESETS[FLAGS.preset], **overrides)
    except ValueError as e:
        raise UserError(str(e)) from None


def lifelong_config_from_flags() -> synthetic.LifelongConfig:
    overrides = {name: getattr(FLAGS, name) for name in ("users", "items", "categories", "max_history")
                 if getattr(FLAGS, name) is not None}
    if FLAGS.history_length is not None or FLAGS.train_samples is not None or FLAGS.test_samples is not None:
        raise UserError("--history_length, --train_samples and --test_samples do not apply to --preset lifelong "
                        "(its samples come 100 per user; use --users and --max_history)")
    base = synthetic.LIFELONG_PRESETS[FLAGS.preset]
    if "max_history" in overrides:  # keep the preset's proportions for shorter stores
        floor = base.recent_span + base.samples_per_user + 1
        if overrides["max_history"] < floor:
            raise UserError(f"--max_history must be at least {floor:,} for --preset lifelong: its signal lies older than "
                            f"the last {base.recent_span:,} behaviours before each of a user's {base.samples_per_user} samples")
        overrides.setdefault("min_history", min(base.min_history, max(base.recent_span + base.samples_per_user + 1,
                                                                       overrides["max_history"] // 2)))
    try:
        return dataclasses.replace(base, seed=FLAGS.seed, **overrides)
    except ValueError as e:
        raise UserError(str(e)) from None


def write_raw():
    from sim_tf.data import amazon_raw

    overrides = {name: getattr(FLAGS, name) for name in ("users", "items", "categories") if getattr(FLAGS, name) is not None}
    try:
        config = dataclasses.replace(amazon_raw.RawConfig(), seed=FLAGS.seed, **overrides)
    except ValueError as e:
        raise UserError(str(e)) from None
    with atomic_directory(FLAGS.output, FLAGS.overwrite) as staging:
        amazon_raw.write(config, staging)


def write_events():
    from sim_tf.data.events_log import write_events_log

    users = FLAGS.users or max(1, FLAGS.events // 50)
    items = FLAGS.items or max(1, FLAGS.events // 25)
    categories = FLAGS.categories or 1000
    started = time.perf_counter()
    with atomic_directory(FLAGS.output, FLAGS.overwrite) as staging:
        write_events_log(staging, FLAGS.events, users, items, categories, seed=FLAGS.seed, files=FLAGS.num_files,
                         csv=FLAGS.events_csv, labels=FLAGS.events_labels)
    print(f"event log written to {FLAGS.output} in {time.perf_counter() - started:.1f}s: {FLAGS.events:,} events of "
          f"{users:,} users, {items:,} items, {categories:,} categories in {FLAGS.num_files} file(s)")


def main(argv):
    del argv
    if FLAGS.format == "events":
        write_events()
        return
    if FLAGS.format == "amazon-raw":
        started = time.perf_counter()
        write_raw()
        print(f"raw files written to {FLAGS.output} in {time.perf_counter() - started:.1f}s")
        return
    if FLAGS.preset in synthetic.LIFELONG_PRESETS:
        config = lifelong_config_from_flags()
        write = synthetic.synthesize_lifelong
        shape = (f"{config.users:,} users with {config.min_history:,}-{config.max_history:,} behaviours each, "
                 f"{config.items:,} items, {config.categories:,} categories")
    else:
        if FLAGS.max_history is not None:
            raise UserError("--max_history applies to --preset lifelong only")
        config = config_from_flags()
        write = synthetic.synthesize
        shape = (f"{config.users:,} users, {config.items:,} items, {config.categories:,} categories, "
                 f"L={config.history_length}")
    started = time.perf_counter()
    with atomic_directory(FLAGS.output, FLAGS.overwrite) as staging:
        write(config, staging, num_files=FLAGS.num_files, prebatch_size=FLAGS.prebatch_size)
    print(f"dataset written to {FLAGS.output} in {time.perf_counter() - started:.1f}s (preset {FLAGS.preset}: {shape})")
