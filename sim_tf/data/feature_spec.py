"""The dataset description: a FeatureSpec YAML file, loaded, validated and saved.

A FeatureSpec has four sections (see ../shared/SPEC_DATA.md and the NVIDIA recipe's "BYO dataset"):

* ``feature_spec``: feature name -> {dtype, cardinality, dimensions}.
* ``source_spec``: mapping name (``train``/``test``) -> list of chunks {type, features, files}.
* ``channel_spec``: channel name -> list of feature names (the five channels below).
* ``metadata``: free-form; sim-tf reads ``out_of_range_ids`` (``error`` or ``oov``) from it.

and, for lifelong histories, an optional fifth, ``behavior_store`` (sim-tf's own; the recipe has none):

* ``file``: the store (``sim_tf.data.behavior_store``: every user's behaviours once, sorted by time);
* ``user``: the user feature whose id is the store's user; ``position``: a per-sample feature saying how
  many of the user's behaviours came before the sample (its ``history_end``);
* ``arrays``: the store array behind each item-feature position (target, positive and negative feature i);
* ``category``: the store array the hard search matches the target's sibling feature against.

In a store-backed dataset the records hold label, user, target and position features only; the history
features keep ``dimensions: [S]``, the *recent* (short) history the pipeline assembles from the store, and
the long history is assembled before it, up to ``--max_long_history`` (docs/data.md).

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


def gfile_module():
    # Imported lazily: validating a spec should not pay TensorFlow's import time unless files are checked.
    import tensorflow as tf

    return tf.io.gfile


def _is_remote(path: str) -> bool:
    return "://" in path


def join_path(base: str, relative: str) -> str:
    if _is_remote(base):
        return posixpath.join(base, relative)
    import os

    return os.path.join(base, relative)


def normalize_path(path: str) -> str:
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
class StoreSection:
    """The ``behavior_store`` section: where the store is and how samples reference it."""

    file: str  # absolute (or URL) path
    user: str
    position: str
    arrays: tuple[str, ...]
    category: str

    @property
    def category_index(self) -> int:
        return self.arrays.index(self.category)


STORE_KEYS = ("file", "user", "position", "arrays", "category")


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
        behavior_store: dict[str, Any] | None = None,
    ):
        self.feature_spec = feature_spec
        self.source_spec = source_spec
        self.channel_spec = channel_spec
        self.metadata = {} if metadata is None else metadata
        self.base_directory = base_directory
        self.behavior_store = behavior_store

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_yaml(cls, path: str, check_files: bool = True) -> "FeatureSpec":
        """Loads and validates ``path``; data files are resolved relative to its folder."""
        gfile = gfile_module()
        if not gfile.exists(path):
            raise FeatureSpecError(f"feature spec file {path!r} does not exist")
        if gfile.isdir(path):
            path = join_path(path, DEFAULT_FEATURE_SPEC_NAME)
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
        unknown = sorted(set(raw) - {"feature_spec", "source_spec", "channel_spec", "metadata", "behavior_store"})
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
            behavior_store=copy.deepcopy(raw.get("behavior_store")),
        )
        spec.validate(check_files=check_files, source=source)
        return spec

    def to_dict(self) -> dict[str, Any]:
        out = {
            "channel_spec": copy.deepcopy(self.channel_spec),
            "feature_spec": copy.deepcopy(self.feature_spec),
            "metadata": copy.deepcopy(self.metadata),
            "source_spec": copy.deepcopy(self.source_spec),
        }
        if self.behavior_store is not None:
            out["behavior_store"] = copy.deepcopy(self.behavior_store)
        return out

    def to_yaml(self, path: str) -> None:
        """Writes the spec; file paths stay relative, so ``path`` belongs in the dataset folder."""
        gfile = gfile_module()
        with gfile.GFile(path, "w") as f:
            f.write(yaml.safe_dump(self.to_dict(), sort_keys=True))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FeatureSpec) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return (
            f"FeatureSpec(users={self.user_features}, items={[g.target for g in self.item_groups]}, "
            f"history_length={self.history_length}, base_directory={self.base_directory!r})"
        )

    def validate(self, check_files: bool = True, source: str = "feature spec") -> None:
        """Raises FeatureSpecError on the first problem found (the checks live in
        sim_tf/data/spec_validation.py); returns None for a usable spec."""
        from sim_tf.data.spec_validation import validate

        validate(self, check_files, source)

    # ------------------------------------------------------------------ accessors
    def channel_features(self) -> list[str]:
        return [name for channel in CHANNELS for name in self.channel_spec[channel]]

    @property
    def store(self) -> StoreSection | None:
        """The behaviour store section, None for a padded (recipe-format) dataset."""
        raw = self.behavior_store
        if raw is None:
            return None
        return StoreSection(file=join_path(self.base_directory, raw["file"]), user=raw["user"],
                            position=raw["position"], arrays=tuple(raw["arrays"]), category=raw["category"])

    def record_features(self) -> list[str]:
        """The features each record stores: every channel's, except that a store-backed dataset keeps its
        histories in the store and stores each sample's position in it instead."""
        if self.behavior_store is None:
            return self.channel_features()
        histories = set(self.positive_history_features) | set(self.negative_history_features)
        return [n for n in self.channel_features() if n not in histories] + [self.behavior_store["position"]]

    def padded_view(self, history_length: int) -> "FeatureSpec":
        """This dataset as a padded one with histories of ``history_length``: the contract of a model
        trained on it once its histories are assembled (export and serving take that form)."""
        raw = self.to_dict()
        raw.pop("behavior_store", None)
        for name in self.positive_history_features + self.negative_history_features:
            raw["feature_spec"][name]["dimensions"] = [int(history_length)]
        for chunks in raw["source_spec"].values():
            for chunk in chunks:
                chunk["features"] = self.channel_features()
        return FeatureSpec.from_dict(raw, self.base_directory, check_files=False)

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

    def per_sample(self, name: str) -> int:
        """Values a record stores per sample for feature ``name``."""
        return self.history_length if self.is_history(name) else 1

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
            files=tuple(join_path(self.base_directory, f) for f in raw["files"]),
        )

    def files(self, mapping: str) -> list[str]:
        return list(self.chunk(mapping).files)


def _dirname(path: str) -> str:
    import os

    return os.path.dirname(os.path.abspath(path))
