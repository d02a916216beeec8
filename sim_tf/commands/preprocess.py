"""sim-tf preprocess: training data from raw data.

* ``amazon``: Amazon Books 2014 raw files -> BYO parquet (metadata.json + parts), or with --format store a
  behaviour-store TFRecord dataset (every review once, samples by reference).
* ``events``: an interaction log (parquet or CSV: user, item, item features, time, optional label; local
  or any fsspec URL) -> the same two formats, on Dask: a local cluster by default, an existing one with
  --scheduler (sim_tf/preprocess/events.py, docs/preprocessing.md). ``amazon --dask`` reads the 2014
  files into that pipeline.
"""

from __future__ import annotations

import os
import shutil
import time

from absl import flags

from sim_tf.data.atomic import atomic_directory
from sim_tf.errors import UserError
from sim_tf.preprocess import amazon

FLAGS = flags.FLAGS
flags.DEFINE_string("reviews", None, "amazon: reviews_Books.json or reviews_Books.json.gz (JSON lines).")
flags.DEFINE_string("meta", None, "amazon: meta_Books.json or meta_Books.json.gz (one Python dict literal per line).")
flags.DEFINE_string("input", None, "events: the log: a parquet or CSV file, a folder of them or a glob; local or an "
                    "fsspec URL (s3://, gs://, hdfs://, ...).")
flags.DEFINE_enum("input_format", "auto", ["auto", "parquet", "csv"], "events: the log's format (auto: CSV when "
                  "the name ends in .csv, .csv.gz, .tsv or .txt, or for a folder when every file in it does, "
                  "names starting with . or _ skipped; parquet otherwise).")
flags.DEFINE_string("user_col", "user", "events: the user id column.")
flags.DEFINE_string("item_col", "item", "events: the item id column.")
flags.DEFINE_list("item_feature_cols", [], "events: item feature columns (e.g. category), comma separated; each "
                  "becomes an item feature of the model.")
flags.DEFINE_string("time_col", "time", "events: the time column: integers (any unit) or date/times.")
flags.DEFINE_string("label_col", None, "events: an explicit 0/1 label column (impressions and clicks). Without it "
                    "every event is a positive and each target gets a popularity-drawn negative.")
flags.DEFINE_integer("min_events", 3, "events: drop users with fewer events than this.", lower_bound=1)
flags.DEFINE_string("test_split", "last", "events: `last` (each user's last event is its test sample) or "
                    "`time:T` (every event at or after T, an integer time or an ISO date/time).")
flags.DEFINE_integer("partitions", 0, "events and amazon --dask: user parts (output files per split); 0 takes the "
                     "input's number of chunks. The same value gives the same output on any engine.", lower_bound=0)
flags.DEFINE_string("scheduler", None, "events and amazon --dask: address of an existing Dask scheduler "
                    "(tcp://HOST:8786); the output folder must be on storage its workers share.")
flags.DEFINE_string("memory_limit", "auto", "events and amazon --dask: memory limit per local Dask worker (e.g. "
                    "4GiB; auto shares the machine's memory); above it a worker spills to disk.")
flags.DEFINE_string("output", None, "Folder for metadata.json, train/ and test/ parquet parts (--format parquet), or "
                    "for feature_spec.yaml, behaviors.npz and the TFRecord samples (--format store).")
flags.DEFINE_enum("format", "parquet", ["parquet", "store", "events"], "parquet: the recipe's BYO layout, padded "
                  "histories (then `sim-tf convert`); store: a ready behaviour-store dataset whose histories are each "
                  "user's whole sequence (docs/data.md); events (amazon only): the reviews as an interaction log "
                  "(user, item, cat, time) for `sim-tf preprocess events`, e.g. to run them on a Dask cluster.")
flags.DEFINE_integer("min_reviews", 20, "amazon: drop users with fewer reviews than this.")
flags.DEFINE_integer("history_length", 100, "Behaviours kept per history (L); shorter ones are left-padded. With "
                     "--format store: the recent (short) history S (default 10); the long one is the whole history.")
flags.DEFINE_integer("min_history", 1, "Behaviours a sample needs before its target.")
flags.DEFINE_integer("train_parts", 8, "amazon: parquet parts for the training rows (rows are shuffled across them).")
flags.DEFINE_integer("test_parts", 1, "amazon: parquet parts for the test rows.")
flags.DEFINE_integer("seed", 0, "Seed for negatives and shuffling; the same seed gives the same output.")
flags.DEFINE_integer("workers", None, "amazon: processes reading the files and writing the parquet parts (default "
                     "2 at most); events and amazon --dask: local Dask worker processes, one thread each (default: "
                     "one per core; 0: everything in this process).", lower_bound=0)
flags.DEFINE_boolean("dask", False, "amazon: read the 2014 files here, then make the samples with the interaction-log "
                     "pipeline on Dask, as `preprocess events` does (a local cluster, --workers, --scheduler, "
                     "--partitions): ids in sorted raw order, mappings in OUTPUT/mapping/ (docs/preprocessing.md).")
flags.DEFINE_boolean("strict", False, "amazon: stop at the first malformed input line instead of skipping it.")
flags.DEFINE_boolean("overwrite", False, "Replace an existing --output.")

SOURCES = ("amazon", "events")


def _required(*names):
    for name in names:
        if not FLAGS[name].value:
            raise UserError(f"--{name} is required")


def _recent_history() -> int:
    # A store's long history is the user's whole sequence; its recent part defaults to the recipe's 10.
    return FLAGS.history_length if FLAGS["history_length"].present or FLAGS.format == "parquet" else 10


def run_amazon():
    _required("reviews", "meta", "output")
    config = amazon.AmazonConfig(
        min_reviews=FLAGS.min_reviews, history_length=_recent_history(), min_history=FLAGS.min_history,
        train_parts=FLAGS.train_parts, test_parts=FLAGS.test_parts, seed=FLAGS.seed, strict=FLAGS.strict,
        workers=max(1, FLAGS.workers if FLAGS.workers is not None else min(2, os.cpu_count() or 1)),
    )
    started = time.perf_counter()
    if FLAGS.dask:
        if FLAGS.format == "events":
            raise UserError("--dask makes samples from the reviews; --format events writes only the log")
        _amazon_on_dask(config, started)
        return
    if FLAGS.format == "events":
        with atomic_directory(FLAGS.output, FLAGS.overwrite) as staging:
            counts = amazon.write_events(FLAGS.reviews, FLAGS.meta, staging, config)
        print(f"wrote {counts['reviews_used']:,} reviews as events in {time.perf_counter() - started:.1f}s to "
              f"{FLAGS.output}; next: sim-tf preprocess events --input {FLAGS.output} --output DIR "
              f"--item_feature_cols cat --min_events {FLAGS.min_reviews}")
        return
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


def _amazon_on_dask(config, started: float) -> None:
    """`preprocess amazon --dask`: the reviews as an interaction log inside the staging folder, then the
    events pipeline on it (users with fewer than --min_reviews reviews dropped there), then the log removed."""
    events = _events_module("preprocess amazon --dask")
    events_config = events.EventsConfig(
        user_col="user", item_col="item", item_feature_cols=("cat",), time_col="time",
        history_length=_recent_history(), min_events=FLAGS.min_reviews, min_history=FLAGS.min_history,
        partitions=FLAGS.partitions, seed=FLAGS.seed, fmt=FLAGS.format)
    with atomic_directory(FLAGS.output, FLAGS.overwrite) as staging:
        log_dir = os.path.join(staging, ".reviews-log")
        read = amazon.write_events(FLAGS.reviews, FLAGS.meta, log_dir, config)
        with _engine(events) as engine:
            counts = events.preprocess_events(log_dir, staging, events_config, engine)
        shutil.rmtree(log_dir)
    elapsed = time.perf_counter() - started
    print(f"preprocessed {read['reviews_read']:,} review lines in {elapsed:.1f}s on Dask: {counts['users']:,} users, "
          f"{counts['items']:,} items, {counts['train']:,} train and {counts['test']:,} test rows in {FLAGS.output}")


def _events_module(command: str):
    try:
        import dask.dataframe  # noqa: F401
        import distributed  # noqa: F401

        from sim_tf.preprocess import events
    except ImportError as e:
        raise UserError(f"`sim-tf {command}` needs Dask ({e.name} is not installed): "
                        f"pip install 'sim-tf[preprocess]'") from None
    return events


def _engine(events):
    workers = FLAGS.workers if FLAGS.workers is not None else (os.cpu_count() or 1)
    return events.Engine(FLAGS.scheduler, workers, FLAGS.memory_limit)


def run_events():
    _required("input", "output")
    if FLAGS.format == "events":
        raise UserError("--format events is what `preprocess amazon` writes for this command; here pick parquet "
                        "or store")
    events = _events_module("preprocess events")
    config = events.EventsConfig(
        user_col=FLAGS.user_col, item_col=FLAGS.item_col, item_feature_cols=tuple(FLAGS.item_feature_cols),
        time_col=FLAGS.time_col, label_col=FLAGS.label_col, history_length=_recent_history(),
        min_events=FLAGS.min_events, min_history=FLAGS.min_history, test_split=FLAGS.test_split,
        partitions=FLAGS.partitions, seed=FLAGS.seed, fmt=FLAGS.format,
        csv=None if FLAGS.input_format == "auto" else FLAGS.input_format == "csv",
    )
    if FLAGS.scheduler and "://" not in FLAGS.output and not os.path.isabs(FLAGS.output):
        print(f"note: --output {FLAGS.output!r} is relative; the cluster's workers write to the same path on their "
              f"own machines, so it must be on storage they share")
    started = time.perf_counter()  # the rate below counts the cluster's start and stop too
    with atomic_directory(FLAGS.output, FLAGS.overwrite) as staging:
        with _engine(events) as engine:
            counts = events.preprocess_events(FLAGS.input, staging, config, engine)
    elapsed = time.perf_counter() - started
    print(f"preprocessed {counts['events']:,} events in {elapsed:.1f}s "
          f"({counts['events'] / elapsed:,.0f} events/s): {counts['users']:,} users, {counts['items']:,} "
          f"items, {counts['train']:,} train and {counts['test']:,} test rows in {FLAGS.output}")


def main(argv):
    if len(argv) != 2 or argv[1] not in SOURCES:
        raise UserError("usage: sim-tf preprocess amazon --reviews FILE --meta FILE --output DIR, or "
                        "sim-tf preprocess events --input LOG --output DIR [--item_feature_cols ...] "
                        "(sim-tf preprocess --help lists every flag)")
    if argv[1] == "amazon":
        run_amazon()
    else:
        run_events()
