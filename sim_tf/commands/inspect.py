"""sim-tf inspect: validate a dataset folder and summarise it."""

from __future__ import annotations

import time

import numpy as np
from absl import flags

from sim_tf.data import dataset as data
from sim_tf.data import feature_spec as fs
from sim_tf.data import inputs

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset_dir", None, "Folder holding the FeatureSpec and the TFRecord files.")
flags.DEFINE_string("feature_spec", fs.DEFAULT_FEATURE_SPEC_NAME, "Name of the FeatureSpec file in --dataset_dir.")
flags.DEFINE_integer("long_seq_length", 90, "Long/short history split used for the sample batch (clipped to L - 1).",
                     lower_bound=1)
flags.mark_flag_as_required("dataset_dir")


def describe(spec: fs.FeatureSpec, long_seq_length: int) -> list[str]:
    lines = [f"feature spec: {spec.base_directory}", f"history length L: {spec.history_length}"]
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
        )
    long = min(long_seq_length, spec.history_length - 1)
    ds = data.make_dataset(spec, "test", 1024, options=data.InputOptions(long_seq_length=long))
    for features, label in ds.take(1):
        history = np.concatenate([features[inputs.LONG_MASK].numpy(), features[inputs.SHORT_MASK].numpy()], axis=1)
        lengths = history.sum(axis=1)
        lines.append(
            f"first test batch: {label.shape[0]} samples, click rate {label.numpy().mean():.3f}, "
            f"history length min/mean/max {lengths.min():.0f}/{lengths.mean():.1f}/{lengths.max():.0f}"
        )
    return lines


def main(argv):
    del argv
    started = time.perf_counter()
    spec = fs.FeatureSpec.from_yaml(f"{FLAGS.dataset_dir.rstrip('/')}/{FLAGS.feature_spec}")
    validated = time.perf_counter() - started
    print("\n".join(describe(spec, FLAGS.long_seq_length)))
    print(f"spec validated in {validated * 1000:.0f} ms")
