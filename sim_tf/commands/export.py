"""sim-tf export: checkpoint -> SavedModel with a serving_default signature over raw, named inputs."""

from __future__ import annotations

import os

from absl import flags

from sim_tf.train import flags as trainer_flags  # the model flags: same names and defaults as for training
from sim_tf.errors import UserError

FLAGS = flags.FLAGS
FLAGS_MODULES = (trainer_flags.__name__,)
flags.DEFINE_string("output", None, "Folder to write the SavedModel to (must not exist yet, or use --overwrite).")
flags.DEFINE_boolean("overwrite", False, "Replace an existing --output.")


def main(argv):
    del argv
    from sim_tf.serve import export
    from sim_tf.data import feature_spec as fs
    from sim_tf.data.atomic import atomic_directory

    if not FLAGS.output:
        raise UserError("--output is required: the folder for the SavedModel")
    if not FLAGS.load_checkpoint_path:
        raise UserError("--load_checkpoint_path is required: the checkpoint (or folder of them) to export")
    config = trainer_flags.config_from_flags("evaluate")
    spec = fs.FeatureSpec.from_yaml(os.path.join(config.dataset_dir, config.feature_spec))
    config.validate_for(spec)
    model, path = export.restore_model(config.model_type, config.model, spec, config.load_checkpoint_path)
    with atomic_directory(FLAGS.output, FLAGS.overwrite) as staging:
        long = config.long_history_positions if spec.store is not None else config.long_seq_length
        export.export(model, spec, long, staging,
                      extra={"model_type": config.model_type, "checkpoint": os.path.abspath(path),
                             **({"gsu": config.model.gsu, "max_long_history": config.max_long_history}
                                if spec.store is not None else {})})
    names = spec.user_features + spec.target_item_features + spec.positive_history_features
    print(f"exported {config.model_type} from {path} to {FLAGS.output}\n"
          f"  serving_default inputs (int64): {', '.join(names)}; output: probability\n"
          f"  load with: tf.saved_model.load({FLAGS.output!r}).signatures['serving_default'](**inputs)")
