"""sim-tf demo: the main job end to end on embedded synthetic data.

Synthesizes the `small` preset (or reuses it), trains SIM for one epoch at batch 4096 and lr 0.01,
evaluates on the test split, and prints test AUC, GAUC, throughput and where the logs are. Every
trainer flag works here too (`sim-tf demo --model_type din --amp`), with demo defaults.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

from absl import flags

from sim_tf import main as trainer  # defines the trainer's flags
from sim_tf.data import feature_spec as fs
from sim_tf.data import synthetic
from sim_tf.data.atomic import atomic_directory

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "sim_tf_demo", "Folder for the dataset (WORKDIR/data/PRESET) and results (WORKDIR/results).")
flags.DEFINE_enum("preset", "small", list(synthetic.PRESETS), "Synthetic dataset preset.")
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


def main(argv):
    del argv
    config = dataclasses.replace(synthetic.PRESETS[FLAGS.preset], seed=max(0, FLAGS.seed))
    data_dir = os.path.join(FLAGS.workdir, "data", FLAGS.preset)
    if dataset_ready(data_dir, config):
        print(f"reusing the {FLAGS.preset} dataset in {data_dir}")
    else:
        print(f"synthesizing the {FLAGS.preset} dataset into {data_dir}")
        with atomic_directory(data_dir, overwrite=True) as staging:
            synthetic.synthesize(config, staging, num_files=8, prebatch_size=32)
    results_dir = os.path.join(FLAGS.workdir, "results", f"{FLAGS.model_type}_{FLAGS.preset}")
    if not FLAGS["results_dir"].present and os.path.isdir(results_dir):
        # Each demo run starts fresh: its own results folder would otherwise resume the last run.
        shutil.rmtree(results_dir)
    defaults = {
        "dataset_dir": data_dir,
        "results_dir": results_dir,
        "long_seq_length": config.history_length - config.recent_length,
        "top_k": min(50, config.history_length - config.recent_length),
        "save_checkpoint_path": os.path.join(results_dir, "checkpoints"),
    }
    for name, value in defaults.items():
        if not FLAGS[name].present:
            FLAGS[name].value = value
    print(f"training {FLAGS.model_type} for {FLAGS.epochs} epoch(s), batch {FLAGS.global_batch_size}, "
          f"lr {FLAGS.lr}, optimizer {FLAGS.optimizer}")
    trainer.run("train")
