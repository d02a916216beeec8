"""Validation of a FeatureSpec: every key, feature, channel and source, each problem one FeatureSpecError
naming the key, feature or file.

It runs before TensorFlow reads a record, so a mismatch between spec and data ends in a clear message
instead of a graph error.
"""

from __future__ import annotations

from typing import Any

from sim_tf.data.feature_spec import (
    CHANNELS,
    HISTORY_CHANNELS,
    ITEM_CHANNELS,
    LABEL_CHANNEL,
    OUT_OF_RANGE_POLICIES,
    REQUIRED_MAPPINGS,
    STORE_KEYS,
    SUPPORTED_SOURCE_TYPES,
    TARGET_ITEM_FEATURES_CHANNEL,
    USER_FEATURES_CHANNEL,
    FeatureSpec,
    FeatureSpecError,
    gfile_module,
    join_path,
    normalize_path,
)

# Ids are int32 inside the model and a table has cardinality + 2 rows (padding, OOV); 2**31 - 3 keeps every
# id representable. Tables beyond ~1e9 rows would not fit one machine's memory in any case.
MAX_CARDINALITY = 2**31 - 3


def validate(spec: FeatureSpec, check_files: bool = True, source: str = "feature spec") -> None:
    """Raises FeatureSpecError on the first problem found; returns None for a usable spec."""
    where = source
    features = spec.feature_spec
    channels = spec.channel_spec

    for name, props in features.items():
        if not isinstance(name, str):
            raise FeatureSpecError(f"{where}: feature name {name!r} in feature_spec must be a string")
        if props is None:
            props = features[name] = {}
        if not isinstance(props, dict):
            raise FeatureSpecError(f"{where}: feature_spec[{name!r}] must be a mapping")

    unknown_channels = sorted(set(channels) - set(CHANNELS))
    if unknown_channels:
        raise FeatureSpecError(
            f"{where}: unknown channel(s) {unknown_channels} in channel_spec; the channels are {list(CHANNELS)}"
        )
    for channel in CHANNELS:
        if channel not in channels:
            raise FeatureSpecError(f"{where}: channel {channel!r} is missing from channel_spec")
        listed = channels[channel]
        if isinstance(listed, str):
            listed = channels[channel] = [listed]
        if not isinstance(listed, list) or not all(isinstance(n, str) for n in listed):
            raise FeatureSpecError(f"{where}: channel_spec[{channel!r}] must be a list of feature names")
        if not listed:
            raise FeatureSpecError(f"{where}: channel {channel!r} lists no features")
        for name in listed:
            if name not in features:
                raise FeatureSpecError(
                    f"{where}: feature {name!r} is listed in channel {channel!r} but absent from feature_spec"
                )
    if len(channels[LABEL_CHANNEL]) != 1:
        raise FeatureSpecError(
            f"{where}: channel 'label' must list exactly one feature, got {channels[LABEL_CHANNEL]}"
        )
    seen: dict[str, str] = {}
    for channel in CHANNELS:
        for name in channels[channel]:
            if name in seen:
                raise FeatureSpecError(
                    f"{where}: feature {name!r} is listed twice (channels {seen[name]!r} and {channel!r})"
                )
            seen[name] = channel
    lengths = {c: len(channels[c]) for c in ITEM_CHANNELS}
    if len(set(lengths.values())) != 1:
        raise FeatureSpecError(
            f"{where}: channels target_item_features, positive_history and negative_history must list "
            f"the same number of features (position i shares one embedding table), got {lengths}"
        )

    for channel in CHANNELS[1:]:
        for name in channels[channel]:
            card = features[name].get("cardinality")
            if card is None:
                raise FeatureSpecError(
                    f"{where}: feature {name!r} (channel {channel!r}) has no cardinality in feature_spec"
                )
            if isinstance(card, bool) or not isinstance(card, int) or card <= 0:
                raise FeatureSpecError(
                    f"{where}: feature {name!r} has cardinality {card!r}; it must be a positive integer"
                )
            if card > MAX_CARDINALITY:
                raise FeatureSpecError(
                    f"{where}: feature {name!r} has cardinality {card:,}; at most {MAX_CARDINALITY:,} is supported "
                    f"(ids are 32-bit in the model, and a table of that many rows would not fit in memory anyway)"
                )
    for i, names in enumerate(zip(*(channels[c] for c in ITEM_CHANNELS))):
        cards = {n: features[n]["cardinality"] for n in names}
        if len(set(cards.values())) != 1:
            raise FeatureSpecError(
                f"{where}: item features {list(names)} share embedding table {i} but have different "
                f"cardinalities {cards}"
            )

    history_dims: dict[str, Any] = {}
    for channel in HISTORY_CHANNELS:
        for name in channels[channel]:
            dims = features[name].get("dimensions")
            if (
                not isinstance(dims, list)
                or len(dims) != 1
                or isinstance(dims[0], bool)
                or not isinstance(dims[0], int)
                or dims[0] <= 0
            ):
                raise FeatureSpecError(
                    f"{where}: history feature {name!r} must have 'dimensions: [L]' with a positive L, "
                    f"got {dims!r}"
                )
            history_dims[name] = dims[0]
    if len(set(history_dims.values())) != 1:
        raise FeatureSpecError(
            f"{where}: history features must all have the same dimensions, got {history_dims}"
        )
    for channel in (LABEL_CHANNEL, USER_FEATURES_CHANNEL, TARGET_ITEM_FEATURES_CHANNEL):
        for name in channels[channel]:
            dims = features[name].get("dimensions")
            if dims not in (None, [], [1]):
                raise FeatureSpecError(
                    f"{where}: feature {name!r} in channel {channel!r} is a scalar and cannot have "
                    f"dimensions {dims!r}"
                )

    samples = spec.metadata.get("samples", {})
    if not isinstance(samples, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in samples.values()):
        raise FeatureSpecError(f"{where}: metadata.samples must map each split to a whole number of samples, got "
                               f"{samples!r}")
    prebatch = spec.metadata.get("prebatch_size", 1)
    if isinstance(prebatch, bool) or not isinstance(prebatch, int) or prebatch < 1:
        raise FeatureSpecError(f"{where}: metadata.prebatch_size must be a whole number >= 1, got {prebatch!r}")

    policy = spec.metadata.get("out_of_range_ids", "error")
    if policy not in OUT_OF_RANGE_POLICIES:
        raise FeatureSpecError(
            f"{where}: metadata.out_of_range_ids is {policy!r}; use one of {list(OUT_OF_RANGE_POLICIES)}"
        )

    _validate_store(spec, where, check_files)
    _validate_sources(spec, where, check_files)


def _validate_store(spec: FeatureSpec, where: str, check_files: bool) -> None:
    raw = spec.behavior_store
    if raw is None:
        return
    label = f"{where}: behavior_store"
    if not isinstance(raw, dict):
        raise FeatureSpecError(f"{label} must be a mapping with keys {list(STORE_KEYS)}")
    missing = [k for k in STORE_KEYS if k not in raw]
    unknown = sorted(set(raw) - set(STORE_KEYS))
    if missing or unknown:
        raise FeatureSpecError(f"{label}: " + (f"missing key(s) {missing}" if missing else f"unknown key(s) {unknown}")
                               + f"; the keys are {list(STORE_KEYS)}")
    for key in ("file", "user", "position", "category"):
        if not isinstance(raw[key], str) or not raw[key]:
            raise FeatureSpecError(f"{label}.{key} must be a non-empty string, got {raw[key]!r}")
    if raw["user"] not in spec.user_features:
        raise FeatureSpecError(f"{label}.user is {raw['user']!r}, which is not a user feature "
                               f"(channel user_features lists {spec.user_features})")
    position = raw["position"]
    if position not in spec.feature_spec:
        raise FeatureSpecError(f"{label}.position names feature {position!r}, absent from feature_spec")
    if position in spec.channel_features():
        raise FeatureSpecError(f"{label}.position feature {position!r} must not be listed in a channel")
    if spec.feature_spec[position].get("dimensions") not in (None, [], [1]):
        raise FeatureSpecError(f"{label}.position feature {position!r} is one number per sample; it cannot have "
                               f"dimensions {spec.feature_spec[position]['dimensions']!r}")
    arrays = raw["arrays"]
    groups = len(spec.target_item_features)
    if not isinstance(arrays, list) or len(arrays) != groups or not all(isinstance(a, str) and a for a in arrays):
        raise FeatureSpecError(f"{label}.arrays must list one store array per item feature position ({groups}: "
                               f"{spec.target_item_features}), got {arrays!r}")
    if len(set(arrays)) != len(arrays):
        raise FeatureSpecError(f"{label}.arrays names an array twice: {arrays}")
    if raw["category"] not in arrays:
        raise FeatureSpecError(f"{label}.category is {raw['category']!r}; it must be one of arrays {arrays}")
    full = normalize_path(join_path(spec.base_directory, raw["file"]))
    base = normalize_path(spec.base_directory)
    if not full.startswith(base.rstrip("/") + "/"):
        raise FeatureSpecError(f"{label}.file {raw['file']!r} lies outside the dataset folder {base!r}")
    if check_files and not gfile_module().exists(full):
        raise FeatureSpecError(f"{label}.file: the behaviour store {full!r} does not exist")

def _validate_sources(spec: FeatureSpec, where: str, check_files: bool) -> None:
    required = set(spec.record_features())
    for mapping in REQUIRED_MAPPINGS:
        if mapping not in spec.source_spec:
            raise FeatureSpecError(f"{where}: source_spec has no {mapping!r} mapping")
    base = normalize_path(spec.base_directory)
    for mapping, chunks in spec.source_spec.items():
        if not isinstance(chunks, list) or not chunks:
            raise FeatureSpecError(f"{where}: source_spec[{mapping!r}] must be a non-empty list of chunks")
        listed: list[str] = []
        for i, chunk in enumerate(chunks):
            label = f"source_spec[{mapping!r}][{i}]"
            if not isinstance(chunk, dict):
                raise FeatureSpecError(f"{where}: {label} must be a mapping with type, features and files")
            for key in ("type", "features", "files"):
                if key not in chunk:
                    raise FeatureSpecError(f"{where}: {label} has no {key!r}")
            if chunk["type"] not in SUPPORTED_SOURCE_TYPES:
                raise FeatureSpecError(
                    f"{where}: {label} has type {chunk['type']!r}; supported: {list(SUPPORTED_SOURCE_TYPES)} "
                    f"(convert parquet with `sim-tf convert`)"
                )
            if not isinstance(chunk["features"], list) or not chunk["features"]:
                raise FeatureSpecError(f"{where}: {label}.features must be a non-empty list")
            for name in chunk["features"]:
                if name not in spec.feature_spec:
                    raise FeatureSpecError(f"{where}: {label} lists feature {name!r}, absent from feature_spec")
            listed.extend(chunk["features"])
            files = chunk["files"]
            if isinstance(files, str):
                files = chunk["files"] = [files]
            if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
                raise FeatureSpecError(f"{where}: {label}.files must be a non-empty list of paths")
            for rel in files:
                full = normalize_path(join_path(spec.base_directory, rel))
                if not (full == base or full.startswith(base.rstrip("/") + "/")):
                    raise FeatureSpecError(
                        f"{where}: file {rel!r} in {label} lies outside the dataset folder {base!r}"
                    )
        duplicates = sorted({n for n in listed if listed.count(n) > 1})
        if duplicates:
            raise FeatureSpecError(f"{where}: mapping {mapping!r} lists feature(s) {duplicates} in more than one chunk")
        missing = sorted(required - set(listed))
        if missing:
            raise FeatureSpecError(f"{where}: mapping {mapping!r} does not store feature(s) {missing}")
        if len(chunks) > 1:
            raise FeatureSpecError(
                f"{where}: mapping {mapping!r} has {len(chunks)} chunks; TFRecord datasets keep all features of "
                f"a sample in one record, so list them in a single chunk"
            )
    if check_files:
        gfile = gfile_module()
        for mapping in spec.source_spec:
            for path in spec.files(mapping):
                if not gfile.exists(path):
                    raise FeatureSpecError(f"{where}: data file {path!r} of mapping {mapping!r} does not exist")
