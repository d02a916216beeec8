"""sim-tf demo: the main job end to end on embedded synthetic data.

Default (``--source raw``), the whole pipeline a user runs on Amazon Books:
raw files in the 2014 formats (synthesized) -> ``preprocess amazon`` -> ``convert`` -> train SIM for
one epoch (batch 4096, lr 0.01) -> evaluate, printing test AUC, GAUC, throughput and where the logs are.
``--source synthetic`` trains on a TFRecord preset (``--preset small`` by default) instead. Every
trainer flag works here too (``sim-tf demo --model_type din --amp``); each stage's output is reused
when it is already there.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

from absl import flags

from sim_tf.data import amazon_raw
from sim_tf.data import feature_spec as fs
from sim_tf.data import synthetic
from sim_tf.data.atomic import atomic_directory
from sim_tf.train import flags as trainer_flags  # defines the trainer's flags

FLAGS = flags.FLAGS
FLAGS_MODULES = (trainer_flags.__name__,)
flags.DEFINE_string("workdir", "sim_tf_demo", "Folder for the data (WORKDIR/data) and the results (WORKDIR/results).")
flags.DEFINE_enum("source", "raw", ["raw", "synthetic"], "raw: synthesize Amazon-format raw files and run preprocess + convert; synthetic: write a TFRecord preset directly.")
flags.DEFINE_enum("preset", "small", list(synthetic.PRESETS), "TFRecord preset for --source synthetic.")
for _name, _value in (("epochs", 1), ("global_batch_size", 4096), ("log_every_steps", 10), ("seed", 0)):
    FLAGS.set_default(_name, _value)


def dataset_ready(path: str, config: synthetic.SyntheticConfig) -> bool:
    """True when ``path`` holds a complete dataset generated from exactly ``config``."""
    spec_path = os.path.join(path, fs.DEFAULT_FEATURE_SPEC_NAME)
    if not os.path.exists(spec_path):
        return False
    try:
        spec = fs.FeatureSpec.from_yaml(spec_path)
    except fs.FeatureSpecError:
        return False
    generator = dict(spec.metadata.get("generator", {}))
    generator.pop("kind", None)
    return generator == dataclasses.asdict(config)


def synthetic_dataset(seed: int) -> tuple[str, int, int]:
    """The TFRecord preset; returns (dataset folder, history length, short history length)."""
    config = dataclasses.replace(synthetic.PRESETS[FLAGS.preset], seed=seed)
    data_dir = os.path.join(FLAGS.workdir, "data", f"{FLAGS.preset}-seed{seed}")
    if dataset_ready(data_dir, config):
        print(f"reusing the {FLAGS.preset} dataset in {data_dir}")
    else:
        print(f"synthesizing the {FLAGS.preset} dataset into {data_dir}")
        with atomic_directory(data_dir, overwrite=True) as staging:
            synthetic.synthesize(config, staging, num_files=8, prebatch_size=32)
    return data_dir, config.history_length, config.recent_length


def raw_pipeline(seed: int) -> tuple[str, int, int]:
    """Raw Amazon-format files -> parquet -> TFRecord; each stage is skipped when its output exists."""
    from sim_tf.preprocess import amazon, convert

    base = os.path.join(FLAGS.workdir, "data", f"amazon-raw-seed{seed}")
    raw, parquet, tfrecord = (os.path.join(base, name) for name in ("raw", "parquet", "tfrecord"))
    if not os.path.exists(raw):
        print(f"1/3 synthesizing raw reviews and metadata into {raw}")
        with atomic_directory(raw) as staging:
            amazon_raw.write(dataclasses.replace(amazon_raw.RawConfig(), seed=seed), staging)
    if not os.path.exists(parquet):
        print(f"2/3 sim-tf preprocess amazon -> {parquet}")
        with atomic_directory(parquet) as staging:
            amazon.preprocess(os.path.join(raw, "reviews_Books.json"), os.path.join(raw, "meta_Books.json"), staging,
                              amazon.AmazonConfig(seed=seed))
    if not os.path.exists(tfrecord):
        print(f"3/3 sim-tf convert -> {tfrecord}")
        with atomic_directory(tfrecord) as staging:
            convert.convert(parquet, staging, 1, columns="by_name", prebatch_size=32)
    return tfrecord, amazon.AmazonConfig().history_length, 10  # the recipe's split: 90 long + 10 short


def main(argv):
    del argv
    seed = max(0, FLAGS.seed)
    data_dir, history, recent = raw_pipeline(seed) if FLAGS.source == "raw" else synthetic_dataset(seed)
    name = "amazon-raw" if FLAGS.source == "raw" else FLAGS.preset
    results_dir = os.path.join(FLAGS.workdir, "results", f"{FLAGS.model_type}_{name}")
    if not FLAGS["results_dir"].present and os.path.isdir(results_dir):
        # Each demo run starts fresh: its own results folder would otherwise resume the last run.
        shutil.rmtree(results_dir)
    defaults = {
        "dataset_dir": data_dir,
        "results_dir": results_dir,
        "long_seq_length": history - recent,
        "top_k": min(50, history - recent),
        "save_checkpoint_path": os.path.join(results_dir, "checkpoints"),
    }
    for flag, value in defaults.items():
        if not FLAGS[flag].present:
            FLAGS[flag].value = value
    print(f"training {FLAGS.model_type} for {FLAGS.epochs} epoch(s), batch {FLAGS.global_batch_size}, "
          f"lr {FLAGS.lr}, optimizer {FLAGS.optimizer}")
    from sim_tf.train import train_lib

    train_lib.run(trainer_flags.config_from_flags("train"))
