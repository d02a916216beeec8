"""The TFRecord input pipeline: FeatureSpec + mapping -> a batched tf.data.Dataset of model inputs.

Each element is ``(features, label)``: ``features`` is the model's input dict, built by
:func:`sim_tf.data.inputs.model_inputs` (its keys and shapes are documented there), ``label`` float32 [B].

Two record layouts are read: one sample per ``tf.train.Example`` and the recipe's *prebatched* layout
(P samples per Example, histories sample-major, a partial batch in ``remainder.tfrecord``). Records are
batched first and parsed a batch at a time, which is several times faster than parsing one by one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import tensorflow as tf

from sim_tf.data import behavior_store
from sim_tf.data import feature_spec as fs
from sim_tf.data.inputs import DataError, explain_data_error, model_inputs

AUTOTUNE = tf.data.AUTOTUNE
# The label of the samples that pad_final_batch adds; no real label is negative.
PADDING_LABEL = -1.0


@dataclasses.dataclass(frozen=True)
class InputOptions:
    """How to read one mapping. ``shuffle=None`` means: shuffle the train mapping only."""

    long_seq_length: int = 90
    shuffle: bool | None = None
    shuffle_buffer: int = 0  # records; 0 picks 8 global batches' worth (at most 65,536 records)
    seed: int | None = None
    drop_remainder: bool = False
    # cache: keep the serialized records in memory after the first pass, for the next passes (repeats, or
    # the next epochs when make_dataset is given a record_cache). A cached mapping is read in the spec's
    # file order, so that every pass sees the same records in the same order before the record shuffle.
    cache: bool = False
    # fixed_file_order: read the files in the spec's order without caching them, i.e. the order a cached
    # run reads (a one-pass run where caching would be allowed reads what the same run with more epochs
    # reads in its first one).
    fixed_file_order: bool = False
    repeat: int = 1  # passes over the data per iteration of the dataset; 0 or less repeats forever
    prefetch: int = AUTOTUNE
    out_of_range: str | None = None  # "error" | "oov"; None takes the FeatureSpec's metadata
    deterministic: bool = True
    num_parallel_reads: int = 4
    # Pad the last (partial) batch to the full batch size with all-padding samples labelled PADDING_LABEL,
    # so every batch has one shape (XLA compiles a step once per shape); readers drop those samples.
    pad_final_batch: bool = False
    prebatch_size: int | None = None  # None detects it from metadata or the first record
    # The negative history feeds DIEN's auxiliary loss only; prediction skips parsing it (a third of the
    # parsing work), and its SHORT_NEG_HISTORY is then an empty tuple.
    negative_history: bool = True
    # Store-backed datasets only (FeatureSpec behavior_store): the long history's size, and the search unit:
    # "hard" selects behaviours here, in the pipeline; every other one (sim_tf.models.GSU_KINDS) is handed
    # the whole window.
    gsu: str = "soft"
    max_long_history: int = 1000
    top_k: int = 50

    def __post_init__(self):
        if self.shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {self.shuffle_buffer}")
        if self.out_of_range not in (None, *fs.OUT_OF_RANGE_POLICIES):
            raise ValueError(f"out_of_range must be one of {fs.OUT_OF_RANGE_POLICIES}, got {self.out_of_range!r}")
        if self.prebatch_size is not None and self.prebatch_size < 1:
            raise ValueError(f"prebatch_size must be >= 1, got {self.prebatch_size}")
        if not isinstance(self.gsu, str) or not self.gsu:
            raise ValueError(f"gsu must name a search unit, got {self.gsu!r}")
        if self.top_k < 1 or self.max_long_history < 1:
            raise ValueError(f"top_k and max_long_history must be >= 1, got {self.top_k}, {self.max_long_history}")


def _parse_spec(spec: fs.FeatureSpec, ragged: bool, negative_history: bool = True) -> dict[str, Any]:
    out = {}
    skipped = () if negative_history else set(spec.negative_history_features)
    for name in spec.record_features():
        if name in skipped:
            continue
        if ragged:
            out[name] = tf.io.RaggedFeature(tf.int64)
        else:
            out[name] = tf.io.FixedLenFeature([spec.per_sample(name)], tf.int64)
    return out


def _first_record(path: str) -> bytes:
    for record in tf.data.TFRecordDataset(path).take(1):
        return record.numpy()
    raise DataError(f"data file {path!r} holds no records")


def inspect_layout(spec: fs.FeatureSpec, mapping: str) -> int:
    """Checks the first record of ``mapping`` against the spec and returns its prebatch size P.

    Reading one record takes milliseconds and turns a mismatch between spec and data into a clear
    message before any training starts.
    """
    files = spec.files(mapping)
    first = files[0]
    example = tf.train.Example()
    try:
        example.ParseFromString(_first_record(first))
    except tf.errors.OpError as e:
        raise DataError(f"data file {first!r} is not a readable TFRecord file: {e.message}") from None
    except Exception as e:  # a protobuf DecodeError: the records are not tf.train.Example
        raise DataError(f"the first record of {first!r} is not a tf.train.Example: {e}") from None
    stored = example.features.feature
    label_count = None
    for name in spec.record_features():
        if name not in stored:
            raise DataError(f"data file {first!r}: feature {name!r} from the spec is not in its records")
        values = stored[name].int64_list.value
        kind = stored[name].WhichOneof("kind")
        if kind != "int64_list":
            raise DataError(f"data file {first!r}: feature {name!r} is stored as {kind}, expected int64_list")
        if name == spec.label_feature:
            label_count = len(values)
    assert label_count is not None
    if label_count == 0:
        raise DataError(f"data file {first!r}: the label feature {spec.label_feature!r} is empty")
    is_remainder = first.endswith("remainder.tfrecord")
    prebatch = int(spec.metadata.get("prebatch_size", label_count))
    for name in spec.record_features():
        count = len(stored[name].int64_list.value)
        per_sample = spec.per_sample(name)
        if count != label_count * per_sample:
            raise DataError(
                f"data file {first!r}: feature {name!r} holds {count} values for {label_count} sample(s); the spec "
                f"says {per_sample} per sample (dimensions {spec.feature_spec[name].get('dimensions', [1])})"
            )
    return prebatch if not is_remainder else max(prebatch, label_count)


def declared_sample_count(spec: fs.FeatureSpec, mapping: str) -> int | None:
    """The number of samples the spec's metadata declares for ``mapping``; None when it declares none."""
    stored = spec.metadata.get("samples", {})
    return int(stored[mapping]) if isinstance(stored, dict) and mapping in stored else None


def lost_samples(what: str, advice: str = "") -> DataError:
    """The error for a pass that read another number of samples than the split holds: ``what`` gives the
    two counts; a TFRecord file cut at a record boundary loses whole records without any read error."""
    return DataError(f"{what}: a data file is truncated, missing or was changed after the dataset was written"
                     + (f"; {advice}" if advice else ""))


def sample_count(spec: fs.FeatureSpec, mapping: str) -> int:
    """Samples in ``mapping``: from metadata when the writer stored it, else by reading the labels."""
    declared = declared_sample_count(spec, mapping)
    if declared is not None:
        return declared
    label = spec.label_feature
    ds = tf.data.TFRecordDataset(spec.files(mapping), num_parallel_reads=4).batch(4096)
    ds = ds.map(lambda r: tf.io.parse_example(r, {label: tf.io.RaggedFeature(tf.int64)})[label].values)
    total = ds.reduce(tf.constant(0, tf.int64), lambda acc, v: acc + tf.size(v, out_type=tf.int64))
    return int(total.numpy())


def _records(files: list[str], pipelines: int, pipeline_id: int, reads: int, options: InputOptions,
             shuffle_files: bool) -> tf.data.Dataset:
    """The serialized records of one input pipeline's share of ``files``."""
    file_ds = tf.data.Dataset.from_tensor_slices(files)
    shard_records = pipelines > 1 and len(files) < pipelines
    if pipelines > 1 and not shard_records:
        file_ds = file_ds.shard(pipelines, pipeline_id)
    if shuffle_files and len(files) > 1:
        file_ds = file_ds.shuffle(len(files), seed=options.seed, reshuffle_each_iteration=True)
    # Unshuffled mappings are read file after file, so rows come in the order the spec lists them.
    records = tf.data.TFRecordDataset(file_ds, num_parallel_reads=reads if reads > 1 else None)
    return records.shard(pipelines, pipeline_id) if shard_records else records


def make_dataset(
    spec: fs.FeatureSpec,
    mapping: str,
    global_batch_size: int,
    input_context: tf.distribute.InputContext | None = None,
    options: InputOptions = InputOptions(),
    record_cache: dict | None = None,
) -> tf.data.Dataset:
    """Builds the input pipeline of one mapping for one input pipeline (worker).

    With an ``input_context`` the pipeline reads its share of the data: whole files when there are at
    least as many files as pipelines, every n-th record otherwise; either way each sample is read by
    exactly one pipeline. Batches are per replica (``global_batch_size / num_replicas_in_sync``).

    With ``options.cache``, passing the same ``record_cache`` dict to the calls for later epochs makes them
    share one in-memory cache of the records (filled by the first complete pass); each call still shuffles
    with its own ``options.seed``. Without it, the cache lives as long as the returned dataset.
    """
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(global_batch_size)
        pipelines, pipeline_id = input_context.num_input_pipelines, input_context.input_pipeline_id
    else:
        batch_size, pipelines, pipeline_id = global_batch_size, 1, 0
    shuffle = (mapping == "train") if options.shuffle is None else options.shuffle
    out_of_range = options.out_of_range or spec.out_of_range_ids

    if spec.store is not None:
        store = behavior_store.load_for_spec(spec)

        def build(parsed):
            return behavior_store.store_inputs(parsed, store, spec, options.gsu, options.max_long_history,
                                               options.top_k, out_of_range, options.negative_history)
    else:
        def build(parsed):
            return model_inputs(parsed, spec, options.long_seq_length, out_of_range)

    def transform(parsed):
        label = tf.cast(tf.reshape(parsed[spec.label_feature], [-1]), tf.float32)
        return build(parsed), label

    prebatch = options.prebatch_size or inspect_layout(spec, mapping)

    files = spec.files(mapping)
    reads = max(1, min(options.num_parallel_reads, len(files))) if shuffle else 1
    key = (tuple(files), pipelines, pipeline_id, reads)
    if options.cache and record_cache is not None and key in record_cache:
        records = record_cache[key]
    else:
        records = _records(files, pipelines, pipeline_id, reads, options,
                           shuffle_files=shuffle and not (options.cache or options.fixed_file_order))
        if options.cache:
            records = records.cache()
            if record_cache is not None:
                record_cache[key] = records
    records_per_batch = max(1, batch_size // prebatch)
    if shuffle:
        # Sized from the *global* batch, so every replica count shuffles the same way.
        buffer = options.shuffle_buffer or min(65536, 8 * max(1, global_batch_size // prebatch))
        records = records.shuffle(buffer, seed=options.seed, reshuffle_each_iteration=True)
    if options.repeat != 1:
        records = records.repeat(None if options.repeat <= 0 else options.repeat)

    if prebatch == 1:
        parse_spec = _parse_spec(spec, ragged=False, negative_history=options.negative_history)
        ds = records.batch(batch_size, drop_remainder=options.drop_remainder)
        ds = ds.map(lambda r: transform(tf.io.parse_example(r, parse_spec)), num_parallel_calls=AUTOTUNE)
    else:
        parse_spec = _parse_spec(spec, ragged=True, negative_history=options.negative_history)

        def parse_flat(serialized):
            parsed = tf.io.parse_example(serialized, parse_spec)
            return transform({k: v.flat_values for k, v in parsed.items()})

        ds = records.batch(records_per_batch).map(parse_flat, num_parallel_calls=AUTOTUNE)
        ds = ds.rebatch(batch_size, drop_remainder=options.drop_remainder)

    if options.pad_final_batch:
        ds = ds.map(lambda features, label: pad_batch(features, label, batch_size))

    ds_options = tf.data.Options()
    ds_options.deterministic = options.deterministic
    ds_options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    ds = ds.with_options(ds_options)
    return ds.prefetch(options.prefetch)


def pad_batch(features, label, batch_size: int):
    """(features, label) padded along the batch axis to ``batch_size`` rows: zeros (id 0 and mask 0 are
    padding everywhere) and PADDING_LABEL, so the added samples are empty histories that readers drop."""
    missing = batch_size - tf.shape(label)[0]

    def pad(x):
        padded = tf.pad(x, tf.concat([[[0, missing]], tf.zeros([tf.rank(x) - 1, 2], tf.int32)], axis=0))
        return padded if x.shape.rank is None else tf.ensure_shape(padded, [batch_size] + x.shape[1:])

    features = tf.nest.map_structure(pad, features)
    label = tf.ensure_shape(tf.concat([label, tf.fill([missing], tf.constant(PADDING_LABEL, label.dtype))], 0),
                            [batch_size])
    return features, label


def first_unreadable_file(spec: fs.FeatureSpec, mappings=("train", "test")) -> tuple[str, str] | None:
    """(file, reason) of the first data file whose TFRecord framing is corrupt (bad length or CRC), found by
    reading every file once; None when every file reads. Used after a DataLossError, which does not name
    the file it came from."""
    for mapping in mappings:
        for path in spec.files(mapping):
            try:
                for _ in tf.data.TFRecordDataset(path):
                    pass
            except tf.errors.OpError as e:
                return path, _first_line(e)
    return None


def first_bad_records(spec: fs.FeatureSpec, mappings=("train", "test")) -> tuple[str, str] | None:
    """(file, reason) of the first file whose records do not parse as the spec says (a feature of the wrong
    type, or of the wrong length); None when every record parses. Used after an InvalidArgumentError
    inside the pipeline, which names neither the file nor the record."""
    parse_spec = _parse_spec(spec, ragged=True)
    for mapping in mappings:
        for path in spec.files(mapping):
            try:
                for batch in tf.data.TFRecordDataset(path).batch(256):
                    parsed = tf.io.parse_example(batch, parse_spec)
                    labels = parsed[spec.label_feature].row_lengths()
                    for name in spec.record_features():
                        per_sample = spec.per_sample(name)
                        if not tf.reduce_all(parsed[name].row_lengths() == labels * per_sample):
                            return path, (f"feature {name!r} does not hold {per_sample} value(s) per sample in "
                                          f"every record")
            except tf.errors.OpError as e:
                return path, _first_line(e)
    return None


def _first_line(error: tf.errors.OpError) -> str:
    return (error.message or type(error).__name__).strip().splitlines()[0][:200]


def explain_pipeline_error(error: tf.errors.OpError, spec: fs.FeatureSpec,
                           mappings=("train", "test")) -> DataError | None:
    """The data fault behind an error the input pipeline raised inside a graph, as a DataError naming the
    feature or the file: an id outside its vocabulary, a corrupt file (DataLossError), records that do not
    parse or reshape as the spec says (InvalidArgumentError). None when the data is not at fault."""
    if isinstance(error, tf.errors.DataLossError):
        found = first_unreadable_file(spec, mappings)
        where = f"data file {found[0]!r} is corrupt ({found[1]})" if found else "a data file is corrupt"
        return DataError(f"{where}: rewrite it from its source (sim-tf convert / synthesize)")
    if isinstance(error, tf.errors.InvalidArgumentError):
        explained = explain_data_error(error)
        if explained is not None:
            return explained
        found = first_bad_records(spec, mappings)
        if found is not None:
            return DataError(f"data file {found[0]!r} does not match its FeatureSpec: {found[1]}")
    return None
