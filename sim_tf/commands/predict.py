"""sim-tf predict: batch prediction, streaming, to parquet or CSV.

  sim-tf predict --model SAVED_MODEL_DIR --input TFRECORD_DATASET_DIR --output predictions.parquet
  sim-tf predict --model SAVED_MODEL_DIR --input BYO_PARQUET_DIR --output predictions.csv

``--model`` is a folder written by ``sim-tf export``. ``--input`` is a TFRecord dataset (a folder with
feature_spec.yaml; ``--mapping`` picks the split) or a BYO parquet folder (metadata.json + SPLIT/*.parquet,
columns by position or by name as in ``sim-tf convert``). The output has one row per sample: ``user``
(first user feature), ``item`` (first target item feature), ``label`` when the input has one, and
``probability``.
"""

from __future__ import annotations

from absl import flags

from sim_tf.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "SavedModel folder written by `sim-tf export`. Use only models you trust: a "
                    "SavedModel runs whatever operations it holds, file writes included.")
flags.DEFINE_boolean("overwrite", False, "Replace an existing --output.")
flags.DEFINE_string("input", None, "TFRecord dataset folder (with feature_spec.yaml) or BYO parquet folder.")
flags.DEFINE_string("output", None, "Output file: .parquet or .csv.")
flags.DEFINE_string("mapping", "test", "Split to predict (TFRecord: a source_spec mapping; parquet: a sub-folder).")
flags.DEFINE_integer("batch_size", 4096, "Samples per prediction batch.", lower_bound=1)
flags.DEFINE_integer("number_of_user_features", 1, "Parquet input: leading user features in metadata.json.")
flags.DEFINE_enum("columns", "by_position", ["by_position", "by_name"], "Parquet input: how columns map to features.")


def main(argv):
    del argv
    for name in ("model", "input", "output"):
        if not FLAGS[name].value:
            raise UserError(f"--{name} is required")
    from sim_tf.serve import predict

    predict.predict(FLAGS.model, FLAGS.input, FLAGS.output, FLAGS.mapping, FLAGS.batch_size,
                    FLAGS.number_of_user_features, FLAGS.columns, FLAGS.overwrite)
