"""sim-tf inspect: validate a dataset folder and summarise it."""

from __future__ import annotations

import time

import numpy as np
from absl import flags

from sim_tf.data import feature_spec as fs  # TensorFlow-free: `--help` stays fast; the readers import it

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset_dir", None, "Folder holding the FeatureSpec and the TFRecord files.")
flags.DEFINE_string("feature_spec", fs.DEFAULT_FEATURE_SPEC_NAME, "Name of the FeatureSpec file in --dataset_dir.")
flags.DEFINE_integer("long_seq_length", 90, "Long/short history split used for the sample batch (clipped to L - 1).",
                     lower_bound=1)
flags.DEFINE_boolean("full_scan", True, "Read every record: sample counts against the metadata, every id against its "
                     "cardinality, every shape against the spec (--nofull_scan: the spec and the first records only).")
flags.mark_flag_as_required("dataset_dir")


def describe(spec: fs.FeatureSpec, long_seq_length: int) -> list[str]:
    from sim_tf.data import dataset as data
    from sim_tf.data import inputs

    lines = [f"feature spec: {spec.base_directory}"]
    if spec.store is None:
        lines.append(f"history length L: {spec.history_length}")
    else:
        from sim_tf.data.behavior_store import BehaviorStore

        store = BehaviorStore.load(spec.store.file)
        per_user = np.diff(store.offsets)[1:]
        lines.append(f"behaviour store {spec.store.file}: {store.num_users:,} users, {int(store.offsets[-1]):,} "
                     f"behaviours, {per_user.min():,}-{per_user.max():,} per user; samples reference "
                     f"{spec.store.user} at {spec.store.position}; recent history S: {spec.history_length}, the "
                     f"long one before it up to --max_long_history (docs/data.md)")
    for name, card in zip(spec.user_features, spec.user_cardinalities):
        lines.append(f"user feature {name}: cardinality {card:,}")
    for group in spec.item_groups:
        lines.append(
            f"item feature {group.index} ({group.target} / {group.positive} / {group.negative}): "
            f"cardinality {group.cardinality:,}"
        )
    lines.append(f"out-of-range ids: {spec.out_of_range_ids}")
    for mapping in spec.mappings():
        prebatch = data.inspect_layout(spec, mapping)
        layout = "one sample per record" if prebatch == 1 else f"prebatched, {prebatch} samples per record"
        lines.append(
            f"{mapping}: {data.sample_count(spec, mapping):,} samples in {len(spec.files(mapping))} file(s), {layout}"
            f" ({'declared in the metadata' if data.declared_sample_count(spec, mapping) is not None else 'counted'})"
        )
    long = min(long_seq_length, spec.history_length - 1)
    ds = data.make_dataset(spec, "test", 1024, options=data.InputOptions(long_seq_length=long))
    for features, label in ds.take(1):
        history = np.concatenate([features[inputs.LONG_MASK].numpy(), features[inputs.SHORT_MASK].numpy()], axis=1)
        lengths = history.sum(axis=1)
        lines.append(
            f"first test batch: {label.shape[0]} samples, click rate {label.numpy().mean():.3f}, "
            f"history length min/mean/max {lengths.min():.0f}/{lengths.mean():.1f}/{lengths.max():.0f}"
            + (" (long window of the default --max_long_history)" if spec.store is not None else "")
        )
    return lines


def scan(spec: fs.FeatureSpec, mapping: str, long_seq_length: int) -> str:
    import tensorflow as tf

    from sim_tf.data import dataset as data
    from sim_tf.data import inputs

    """Reads every record of ``mapping`` through the input pipeline (which checks every id against its
    cardinality and every shape against the spec) and compares the samples read with the declared count."""
    options = data.InputOptions(long_seq_length=long_seq_length, shuffle=False)
    read = 0
    try:
        for _, label in data.make_dataset(spec, mapping, 8192, options=options):
            read += int(label.shape[0])
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
        explained = data.explain_pipeline_error(e, spec, (mapping,)) or inputs.DataError(
            f"the {mapping} split's records do not match the FeatureSpec: {e.message.splitlines()[0][:300]}")
        raise explained from None
    expected = data.declared_sample_count(spec, mapping)
    if expected is not None and read != expected:
        raise data.lost_samples(f"the {mapping} split holds {read:,} samples but its FeatureSpec declares {expected:,}")
    return f"{mapping}: read all {read:,} samples: ids within their cardinalities, shapes as declared"


def main(argv):
    del argv
    started = time.perf_counter()
    spec = fs.FeatureSpec.from_yaml(f"{FLAGS.dataset_dir.rstrip('/')}/{FLAGS.feature_spec}")
    validated = time.perf_counter() - started
    print("\n".join(describe(spec, FLAGS.long_seq_length)))
    print(f"spec validated in {validated * 1000:.0f} ms")
    if FLAGS.full_scan:
        long = min(FLAGS.long_seq_length, spec.history_length - 1)
        for mapping in spec.mappings():
            print(scan(spec, mapping, long))
        print("checked: the FeatureSpec and every record (full scan)")
    else:
        print("checked: the FeatureSpec, the first record of each split and one test batch "
              "(--full_scan reads every record)")
