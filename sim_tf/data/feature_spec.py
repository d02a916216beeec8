"""The dataset description: a FeatureSpec YAML file, loaded, validated and saved.

A FeatureSpec has four sections (see ../shared/SPEC_DATA.md and the NVIDIA recipe's "BYO dataset"):

* ``feature_spec``: feature name -> {dtype, cardinality, dimensions}.
* ``source_spec``: mapping name (``train``/``test``) -> list of chunks {type, features, files}.
* ``channel_spec``: channel name -> list of feature names (the five channels below).
* ``metadata``: free-form; sim-tf reads ``out_of_range_ids`` (``error`` or ``oov``) from it.

Everything is validated before TensorFlow reads a record, and each problem is reported in one
:class:`FeatureSpecError` that names the key, feature or file at fault. Files are opened through
``tf.io.gfile``, so a dataset on any file system TensorFlow supports (local, gs://, hdfs://) loads.
"""

from __future__ import annotations

import copy
import dataclasses
import posixpath
from typing import Any

import yaml

from sim_tf.errors import UserError

LABEL_CHANNEL = "label"
USER_FEATURES_CHANNEL = "user_features"
TARGET_ITEM_FEATURES_CHANNEL = "target_item_features"
POSITIVE_HISTORY_CHANNEL = "positive_history"
NEGATIVE_HISTORY_CHANNEL = "negative_history"
CHANNELS = (
    LABEL_CHANNEL,
    USER_FEATURES_CHANNEL,
    TARGET_ITEM_FEATURES_CHANNEL,
    POSITIVE_HISTORY_CHANNEL,
    NEGATIVE_HISTORY_CHANNEL,
)
ITEM_CHANNELS = (TARGET_ITEM_FEATURES_CHANNEL, POSITIVE_HISTORY_CHANNEL, NEGATIVE_HISTORY_CHANNEL)
HISTORY_CHANNELS = (POSITIVE_HISTORY_CHANNEL, NEGATIVE_HISTORY_CHANNEL)
REQUIRED_MAPPINGS = ("train", "test")
SUPPORTED_SOURCE_TYPES = ("tfrecord",)
OUT_OF_RANGE_POLICIES = ("error", "oov")
DEFAULT_FEATURE_SPEC_NAME = "feature_spec.yaml"


class FeatureSpecError(UserError):
    """A FeatureSpec that cannot describe a trainable dataset; the message names the culprit."""


def _gfile():
    # Imported lazily: validating a spec should not pay TensorFlow's import time unless files are checked.
    import tensorflow as tf

    return tf.io.gfile


def _is_remote(path: str) -> bool:
    return "://" in path


def _join(base: str, relative: str) -> str:
    if _is_remote(base):
        return posixpath.join(base, relative)
    import os

    return os.path.join(base, relative)


def _normalize(path: str) -> str:
    if _is_remote(path):
        scheme, rest = path.split("://", 1)
        return scheme + "://" + posixpath.normpath(rest)
    import os

    return os.path.normpath(os.path.abspath(path))


@dataclasses.dataclass(frozen=True)
class ItemFeatureGroup:
    """One item feature seen in the three item channels; the three share one embedding table."""

    index: int
    target: str
    positive: str
    negative: str
    cardinality: int


@dataclasses.dataclass(frozen=True)
class SourceChunk:
    type: str
    features: tuple[str, ...]
    files: tuple[str, ...]  # absolute (or URL) paths


class FeatureSpec:
    """A validated FeatureSpec. Build it with :meth:`from_yaml` or :meth:`from_dict`."""

    def __init__(
        self,
        feature_spec: dict[str, dict[str, Any]],
        source_spec: dict[str, list[dict[str, Any]]],
        channel_spec: dict[str, list[str]],
        metadata: dict[str, Any] | None = None,
        base_directory: str = ".",
    ):
        self.feature_spec = feature_spec
        self.source_spec = source_spec
        self.channel_spec = channel_spec
        self.metadata = {} if metadata is None else metadata
        self.base_directory = base_directory

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_yaml(cls, path: str, check_files: bool = True) -> "FeatureSpec":
        """Loads and validates ``path``; data files are resolved relative to its folder."""
        gfile = _gfile()
        if not gfile.exists(path):
            raise FeatureSpecError(f"feature spec file {path!r} does not exist")
        if gfile.isdir(path):
            path = _join(path, DEFAULT_FEATURE_SPEC_NAME)
            if not gfile.exists(path):
                raise FeatureSpecError(f"feature spec file {path!r} does not exist")
        with gfile.GFile(path, "r") as f:
            text = f.read()
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise FeatureSpecError(f"feature spec file {path!r} is not valid YAML: {e}") from None
        base = posixpath.dirname(path) if _is_remote(path) else _dirname(path)
        return cls.from_dict(raw, base_directory=base, check_files=check_files, source=path)

    @classmethod
    def from_dict(
        cls,
        raw: Any,
        base_directory: str = ".",
        check_files: bool = True,
        source: str = "feature spec",
    ) -> "FeatureSpec":
        if not isinstance(raw, dict):
            raise FeatureSpecError(
                f"{source}: the top level must be a mapping with keys feature_spec, source_spec, "
                f"channel_spec and metadata, got {type(raw).__name__}"
            )
        for key in ("feature_spec", "source_spec", "channel_spec"):
            if key not in raw:
                raise FeatureSpecError(f"{source}: required section {key!r} is missing")
            if not isinstance(raw[key], dict):
                raise FeatureSpecError(f"{source}: section {key!r} must be a mapping, got {type(raw[key]).__name__}")
        unknown = sorted(set(raw) - {"feature_spec", "source_spec", "channel_spec", "metadata"})
        if unknown:
            raise FeatureSpecError(f"{source}: unknown top-level section(s) {unknown}")
        metadata = raw.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise FeatureSpecError(f"{source}: section 'metadata' must be a mapping")
        spec = cls(
            feature_spec=copy.deepcopy(raw["feature_spec"]),
            source_spec=copy.deepcopy(raw["source_spec"]),
            channel_spec=copy.deepcopy(raw["channel_spec"]),
            metadata=copy.deepcopy(metadata),
            base_directory=base_directory,
        )
        spec.validate(check_files=check_files, source=source)
        return spec

    def to_dict(self) -> dict[str, Any]:
        return {
            "channel_spec": copy.deepcopy(self.channel_spec),
            "feature_spec": copy.deepcopy(self.feature_spec),
            "metadata": copy.deepcopy(self.metadata),
            "source_spec": copy.deepcopy(self.source_spec),
        }

    def to_yaml(self, path: str) -> None:
        """Writes the spec; file paths stay relative, so ``path`` belongs in the dataset folder."""
        gfile = _gfile()
        with gfile.GFile(path, "w") as f:
            f.write(yaml.safe_dump(self.to_dict(), sort_keys=True))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FeatureSpec) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return (
            f"FeatureSpec(users={self.user_features}, items={[g.target for g in self.item_groups]}, "
            f"history_length={self.history_length}, base_directory={self.base_directory!r})"
        )

    # ------------------------------------------------------------------ validation
    def validate(self, check_files: bool = True, source: str = "feature spec") -> None:
        """Raises FeatureSpecError on the first problem found; returns None for a usable spec."""
        where = source
        features = self.feature_spec
        channels = self.channel_spec

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

        policy = self.metadata.get("out_of_range_ids", "error")
        if policy not in OUT_OF_RANGE_POLICIES:
            raise FeatureSpecError(
                f"{where}: metadata.out_of_range_ids is {policy!r}; use one of {list(OUT_OF_RANGE_POLICIES)}"
            )

        self._validate_sources(where, check_files)

    def _validate_sources(self, where: str, check_files: bool) -> None:
        required = set(self.channel_features())
        for mapping in REQUIRED_MAPPINGS:
            if mapping not in self.source_spec:
                raise FeatureSpecError(f"{where}: source_spec has no {mapping!r} mapping")
        base = _normalize(self.base_directory)
        for mapping, chunks in self.source_spec.items():
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
                    if name not in self.feature_spec:
                        raise FeatureSpecError(f"{where}: {label} lists feature {name!r}, absent from feature_spec")
                listed.extend(chunk["features"])
                files = chunk["files"]
                if isinstance(files, str):
                    files = chunk["files"] = [files]
                if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
                    raise FeatureSpecError(f"{where}: {label}.files must be a non-empty list of paths")
                for rel in files:
                    full = _normalize(_join(self.base_directory, rel))
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
            gfile = _gfile()
            for mapping in self.source_spec:
                for path in self.files(mapping):
                    if not gfile.exists(path):
                        raise FeatureSpecError(f"{where}: data file {path!r} of mapping {mapping!r} does not exist")

    # ------------------------------------------------------------------ accessors
    def channel_features(self) -> list[str]:
        return [name for channel in CHANNELS for name in self.channel_spec[channel]]

    @property
    def label_feature(self) -> str:
        return self.channel_spec[LABEL_CHANNEL][0]

    @property
    def user_features(self) -> list[str]:
        return list(self.channel_spec[USER_FEATURES_CHANNEL])

    @property
    def target_item_features(self) -> list[str]:
        return list(self.channel_spec[TARGET_ITEM_FEATURES_CHANNEL])

    @property
    def positive_history_features(self) -> list[str]:
        return list(self.channel_spec[POSITIVE_HISTORY_CHANNEL])

    @property
    def negative_history_features(self) -> list[str]:
        return list(self.channel_spec[NEGATIVE_HISTORY_CHANNEL])

    @property
    def history_length(self) -> int:
        return int(self.feature_spec[self.positive_history_features[0]]["dimensions"][0])

    @property
    def out_of_range_ids(self) -> str:
        return self.metadata.get("out_of_range_ids", "error")

    def cardinality(self, name: str) -> int:
        return int(self.feature_spec[name]["cardinality"])

    @property
    def user_cardinalities(self) -> list[int]:
        return [self.cardinality(n) for n in self.user_features]

    @property
    def item_groups(self) -> list[ItemFeatureGroup]:
        """Item-feature positions; group i's table serves target, positive and negative feature i."""
        return [
            ItemFeatureGroup(i, t, p, n, self.cardinality(t))
            for i, (t, p, n) in enumerate(
                zip(self.target_item_features, self.positive_history_features, self.negative_history_features)
            )
        ]

    def is_history(self, name: str) -> bool:
        return name in self.positive_history_features or name in self.negative_history_features

    def mappings(self) -> list[str]:
        return list(self.source_spec)

    def chunk(self, mapping: str) -> SourceChunk:
        if mapping not in self.source_spec:
            raise FeatureSpecError(f"mapping {mapping!r} is not in source_spec (have {list(self.source_spec)})")
        raw = self.source_spec[mapping][0]
        return SourceChunk(
            type=raw["type"],
            features=tuple(raw["features"]),
            files=tuple(_join(self.base_directory, f) for f in raw["files"]),
        )

    def files(self, mapping: str) -> list[str]:
        return list(self.chunk(mapping).files)


def _dirname(path: str) -> str:
    import os

    return os.path.dirname(os.path.abspath(path))
