"""Streaming batch prediction with an exported SavedModel: input readers, the output writer, the loop.

Inputs are a TFRecord dataset (a folder with feature_spec.yaml) or a BYO parquet folder (metadata.json
+ SPLIT/*.parquet, columns by position or by name as in `sim-tf convert`); both yield raw int64 arrays
named as the writer names features. The output has one row per sample: ``user`` (first user feature),
``item`` (first target item feature), ``label`` when the input has one, and ``probability``.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from sim_tf.data import tfrecord_writer
from sim_tf.data.inputs import explain_data_error
from sim_tf.errors import UserError, brief
from sim_tf.progress import Progress


def tfrecord_batches(folder: str, mapping: str, batch_size: int, names: list[str]):
    """Raw int64 feature arrays from a TFRecord dataset, in file order."""
    import tensorflow as tf

    from sim_tf.data import feature_spec as fs

    spec = fs.FeatureSpec.from_yaml(os.path.join(folder, fs.DEFAULT_FEATURE_SPEC_NAME))
    missing = [n for n in names if n not in spec.feature_spec]
    if missing:
        raise UserError(f"the model's inputs {missing} are not features of {folder!r} (features: "
                        f"{sorted(spec.feature_spec)})")
    ragged = {n: tf.io.RaggedFeature(tf.int64) for n in names + [spec.label_feature]}
    ds = tf.data.TFRecordDataset(spec.files(mapping)).batch(256).map(lambda r: tf.io.parse_example(r, ragged))
    pending: dict[str, list[np.ndarray]] = {}
    count = 0
    for parsed in ds:
        samples = parsed[spec.label_feature].flat_values.shape[0]
        for name in names + [spec.label_feature]:
            values = parsed[name].flat_values.numpy()
            if spec.is_history(name):
                values = values.reshape(samples, -1)
            pending.setdefault(name, []).append(values)
        count += samples
        while count >= batch_size:
            merged = {k: np.concatenate(v) for k, v in pending.items()}
            yield {k: v[:batch_size] for k, v in merged.items()}, spec.label_feature
            pending = {k: [v[batch_size:]] for k, v in merged.items()}
            count -= batch_size
    if count:
        yield {k: np.concatenate(v) for k, v in pending.items()}, spec.label_feature


def store_batches(folder: str, mapping: str, batch_size: int, names: list[str], description: dict):
    """Raw int64 feature arrays from a behaviour-store dataset, histories assembled as the model was
    trained (its search unit and long-history span from ``description``, the export's json)."""
    import tensorflow as tf

    from sim_tf.data import dataset as data
    from sim_tf.data import feature_spec as fs
    from sim_tf.data import inputs

    spec = fs.FeatureSpec.from_yaml(os.path.join(folder, fs.DEFAULT_FEATURE_SPEC_NAME))
    if "gsu" not in description:
        raise UserError(f"--input {folder!r} is a behaviour-store dataset, but the model was trained on padded "
                        f"histories; predict on a padded dataset, or export a model trained on this one")
    long = int(description["long_seq_length"])
    options = data.InputOptions(shuffle=False, gsu=description["gsu"], top_k=long, negative_history=False,
                                max_long_history=int(description["max_long_history"]))
    for features, labels in data.make_dataset(spec, mapping, batch_size, options=options):
        arrays = {n: tf.cast(x, tf.int64).numpy() for n, x in zip(spec.user_features, features[inputs.USER])}
        arrays.update({n: tf.cast(x, tf.int64).numpy() for n, x in zip(spec.target_item_features, features[inputs.TARGET])})
        for name, older, recent in zip(spec.positive_history_features, features[inputs.LONG_HISTORY],
                                       features[inputs.SHORT_HISTORY]):
            arrays[name] = tf.cast(tf.concat([older, recent], axis=1), tf.int64).numpy()
        missing = [n for n in names if n not in arrays]
        if missing:
            raise UserError(f"the model's inputs {missing} are not features of {folder!r}")
        arrays[spec.label_feature] = labels.numpy().astype(np.int64)
        yield arrays, spec.label_feature


def is_store_dataset(folder: str) -> bool:
    from sim_tf.data import feature_spec as fs

    return fs.FeatureSpec.from_yaml(os.path.join(folder, fs.DEFAULT_FEATURE_SPEC_NAME)).store is not None


def parquet_batches(folder: str, mapping: str, batch_size: int, names: list[str], history_length: int,
                    number_of_user_features: int, columns: str):
    """Raw int64 feature arrays from a BYO parquet folder, named as `sim-tf convert` names them."""

    from sim_tf.preprocess import convert

    users, items = convert.read_metadata(folder, number_of_user_features)
    feature_names = tfrecord_writer.feature_names(len(users), len(items))
    histories = len(users) + len(items) + 1  # label, user and target features come first
    missing = [n for n in names if n not in feature_names]
    if missing:
        raise UserError(f"the model's inputs {missing} do not match the parquet features {feature_names[1:]}")
    for path in convert.parquet_files(folder, mapping):
        parquet = convert.open_parquet(path)
        sources = convert.column_names(parquet.schema_arrow.names, users, items, columns, path)
        for batch in convert.record_batches(parquet, path, sources, batch_size):
            out = {}
            for index, (target, source) in enumerate(zip(feature_names, sources)):
                if target != tfrecord_writer.LABEL and target not in names:
                    continue
                column = batch.column(source)
                if index >= histories:
                    out[target] = convert.pad_lists(column, history_length, source, path)
                else:
                    out[target] = convert.scalar_column(column, source, path)
            yield out, tfrecord_writer.LABEL


class PredictionWriter:
    """Writes prediction columns to .parquet or .csv; the file appears only when closed with ok=True."""

    def __init__(self, path: str):
        self.path = path
        self.kind = "csv" if path.endswith(".csv") else "parquet" if path.endswith(".parquet") else None
        if self.kind is None:
            raise UserError(f"--output {path!r} must end in .parquet or .csv")
        self.partial = path + ".partial"
        self.writer = None
        self.file = None

    def write(self, columns: dict[str, np.ndarray]):
        if self.kind == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.table(columns)
            if self.writer is None:
                self.writer = pq.ParquetWriter(self.partial, table.schema)
            self.writer.write_table(table)
        else:
            if self.file is None:
                self.file = open(self.partial, "w")
                self.file.write(",".join(columns) + "\n")
            rows = np.column_stack([np.asarray(v, dtype=object) for v in columns.values()])
            self.file.write("".join(",".join(str(x) for x in row) + "\n" for row in rows))

    def close(self, ok: bool):
        if self.writer is not None:
            self.writer.close()
        if self.file is not None:
            self.file.close()
        if ok and os.path.exists(self.partial):
            os.replace(self.partial, self.path)  # the output appears only when complete
        elif os.path.exists(self.partial):
            os.remove(self.partial)


def predict(model: str, input_path: str, output: str, mapping: str = "test", batch_size: int = 4096,
            number_of_user_features: int = 1, columns: str = "by_position", overwrite: bool = False) -> int:
    """Predicts every sample of ``input_path``'s ``mapping`` with the SavedModel ``model`` into ``output``;
    returns the number of predictions. ``model`` must be trusted: a SavedModel runs whatever ops it holds."""
    if not os.path.exists(os.path.join(model, "saved_model.pb")):
        raise UserError(f"--model {model!r} is not a SavedModel folder (write one with `sim-tf export`)")
    if os.path.exists(output) and not overwrite:
        raise UserError(f"--output {output!r} already exists; pass --overwrite to replace it")
    described = os.path.join(model, "sim_tf_export.json")
    try:
        with open(described) as f:
            description = json.load(f)
        history_length = int(description["history_length"])
        user_name, item_name = description["user_features"][0], description["target_item_features"][0]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise UserError(f"--model {model!r}: {described!r} is missing or unreadable ({type(e).__name__}); export "
                        f"the model again with `sim-tf export`") from None
    import tensorflow as tf

    try:
        serve = tf.saved_model.load(model).signatures["serving_default"]
    except Exception as e:  # a corrupt saved_model.pb raises protobuf, OS or TensorFlow errors
        raise UserError(f"--model {model!r} is not a readable SavedModel ({type(e).__name__}: "
                        f"{brief(e, 200)}); export it again with `sim-tf export`") from None
    names = sorted(serve.structured_input_signature[1])
    if os.path.exists(os.path.join(input_path, "feature_spec.yaml")) and is_store_dataset(input_path):
        batches = store_batches(input_path, mapping, batch_size, names, description)
    elif os.path.exists(os.path.join(input_path, "feature_spec.yaml")):
        batches = tfrecord_batches(input_path, mapping, batch_size, names)
    elif os.path.exists(os.path.join(input_path, "metadata.json")):
        batches = parquet_batches(input_path, mapping, batch_size, names, history_length,
                                  number_of_user_features, columns)
    else:
        raise UserError(f"--input {input_path!r} holds neither feature_spec.yaml (TFRecord) nor metadata.json (parquet)")
    writer = PredictionWriter(output)
    progress = Progress("predicting", unit="samples")
    done, ok = 0, False
    started = time.perf_counter()
    try:
        for arrays, label_name in batches:
            inputs = {n: tf.constant(arrays[n], tf.int64) for n in names}
            try:
                probability = serve(**inputs)["probability"].numpy()
            except tf.errors.InvalidArgumentError as e:
                explained = explain_data_error(e)  # names the feature and its out-of-range ids
                raise (explained or UserError(f"the model rejected the input: {e.message.splitlines()[0][:400]}")) from None
            out = {"user": arrays[user_name], "item": arrays[item_name]}
            if label_name in arrays:
                out["label"] = arrays[label_name]
            out["probability"] = probability.astype(np.float32)
            writer.write(out)
            done += probability.size
            progress.update(done)
        ok = done > 0
        if not ok:
            raise UserError(f"--input {input_path!r} ({mapping}) holds no samples")
    finally:
        writer.close(ok)
    elapsed = time.perf_counter() - started
    print(f"wrote {done:,} predictions to {output} in {elapsed:.1f}s ({done / max(elapsed, 1e-9):,.0f} samples/s)")
    return done
