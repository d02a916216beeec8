import copy
import os

import pytest
import yaml

from sim_tf.data import feature_spec as fs
from sim_tf.data import tfrecord_writer

# The recipe README's example (names user_id, item_id_trgt, cat_id_pos, ...).
README_SPEC = """
channel_spec:
  label: [label]
  negative_history: [item_id_neg, cat_id_neg]
  positive_history: [item_id_pos, cat_id_pos]
  target_item_features: [item_id_trgt, cat_id_trgt]
  user_features: [user_id]
feature_spec:
  item_id_neg: {cardinality: 1209081, dimensions: [100], dtype: int64}
  item_id_pos: {cardinality: 1209081, dimensions: [100], dtype: int64}
  item_id_trgt: {cardinality: 1209081, dtype: int64}
  cat_id_neg: {cardinality: 2330, dimensions: [100], dtype: int64}
  cat_id_pos: {cardinality: 2330, dimensions: [100], dtype: int64}
  cat_id_trgt: {cardinality: 2330, dtype: int64}
  label: {dtype: bool}
  user_id: {cardinality: 105925, dtype: int64}
metadata: {}
source_spec:
  test:
  - features: &id001 [label, user_id, item_id_trgt, cat_id_trgt, item_id_pos, cat_id_pos, item_id_neg, cat_id_neg]
    files: [test.tfrecord]
    type: tfrecord
  train:
  - features: *id001
    files: [train.tfrecord]
    type: tfrecord
"""


def _write(folder, text, files=("train.tfrecord", "test.tfrecord")):
    for name in files:
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "wb").close()
    path = os.path.join(folder, "feature_spec.yaml")
    with open(path, "w") as f:
        f.write(text)
    return path


def test_readme_naming_loads_with_accessors(tmp_path):
    spec = fs.FeatureSpec.from_yaml(_write(tmp_path, README_SPEC))
    assert spec.label_feature == "label"
    assert spec.user_features == ["user_id"]
    assert spec.user_cardinalities == [105925]
    assert spec.history_length == 100
    groups = spec.item_groups
    assert [(g.target, g.positive, g.negative, g.cardinality) for g in groups] == [
        ("item_id_trgt", "item_id_pos", "item_id_neg", 1209081),
        ("cat_id_trgt", "cat_id_pos", "cat_id_neg", 2330),
    ]
    assert spec.files("train") == [os.path.join(str(tmp_path), "train.tfrecord")]
    assert spec.out_of_range_ids == "error"


def test_directory_path_finds_feature_spec_yaml(tmp_path):
    _write(tmp_path, README_SPEC)
    assert fs.FeatureSpec.from_yaml(str(tmp_path)).user_features == ["user_id"]


def test_converter_naming_round_trips(tmp_path):
    for name in ("train/part_0.tfrecord", "test/part_0.tfrecord"):
        os.makedirs(tmp_path / os.path.dirname(name), exist_ok=True)
        open(tmp_path / name, "wb").close()
    spec = tfrecord_writer.make_feature_spec([7, 3], [50, 5], 12, ["train/part_0.tfrecord"], ["test/part_0.tfrecord"],
                                base_directory=str(tmp_path))
    assert spec.user_features == ["user_feat_0", "user_feat_1"]
    assert [g.target for g in spec.item_groups] == ["item_feat_0_trgt", "item_feat_1_trgt"]
    assert spec.positive_history_features == ["item_feat_0_pos", "item_feat_1_pos"]
    path = tmp_path / "feature_spec.yaml"
    spec.to_yaml(str(path))
    again = fs.FeatureSpec.from_yaml(str(path))
    assert again == spec
    assert again.to_dict() == yaml.safe_load(path.read_text())


def _mutate(fn):
    raw = yaml.safe_load(README_SPEC)
    fn(raw)
    return raw


def _set(path, value):
    def apply(raw):
        node = raw
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return apply


def _delete(path):
    def apply(raw):
        node = raw
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    return apply


MALFORMED = [
    ("missing section", _delete(["channel_spec"]), "required section 'channel_spec' is missing"),
    ("section not a mapping", _set(["feature_spec"], [1, 2]), "section 'feature_spec' must be a mapping"),
    ("unknown channel", _set(["channel_spec", "numeric_inputs"], ["user_id"]), "unknown channel(s) ['numeric_inputs']"),
    ("missing channel", _delete(["channel_spec", "negative_history"]), "channel 'negative_history' is missing"),
    ("empty channel", _set(["channel_spec", "user_features"], []), "channel 'user_features' lists no features"),
    ("two labels", _set(["channel_spec", "label"], ["label", "user_id"]), "channel 'label' must list exactly one"),
    ("channel length mismatch", _set(["channel_spec", "negative_history"], ["item_id_neg"]),
     "must list the same number of features"),
    ("feature absent", _set(["channel_spec", "user_features"], ["user_idx"]),
     "feature 'user_idx' is listed in channel 'user_features' but absent from feature_spec"),
    ("missing cardinality", _delete(["feature_spec", "user_id", "cardinality"]),
     "feature 'user_id' (channel 'user_features') has no cardinality"),
    ("zero cardinality", _set(["feature_spec", "cat_id_trgt", "cardinality"], 0),
     "feature 'cat_id_trgt' has cardinality 0; it must be a positive integer"),
    ("string cardinality", _set(["feature_spec", "user_id", "cardinality"], "many"),
     "feature 'user_id' has cardinality 'many'"),
    ("shared table cardinalities differ", _set(["feature_spec", "item_id_neg", "cardinality"], 5),
     "share embedding table 0 but have different cardinalities"),
    ("history without dimensions", _delete(["feature_spec", "cat_id_pos", "dimensions"]),
     "history feature 'cat_id_pos' must have 'dimensions: [L]'"),
    ("history dimensions differ", _set(["feature_spec", "cat_id_neg", "dimensions"], [90]),
     "history features must all have the same dimensions"),
    ("scalar with dimensions", _set(["feature_spec", "user_id", "dimensions"], [4]),
     "feature 'user_id' in channel 'user_features' is a scalar and cannot have dimensions [4]"),
    ("missing test mapping", _delete(["source_spec", "test"]), "source_spec has no 'test' mapping"),
    ("unsupported type", _set(["source_spec", "train", 0, "type"], "csv"), "has type 'csv'; supported: ['tfrecord']"),
    ("mapping misses feature", lambda r: r["source_spec"]["train"][0].__setitem__(
        "features", [f for f in r["source_spec"]["train"][0]["features"] if f != "cat_id_neg"]),
     "mapping 'train' does not store feature(s) ['cat_id_neg']"),
    ("file outside folder", _set(["source_spec", "train", 0, "files"], ["../elsewhere.tfrecord"]),
     "file '../elsewhere.tfrecord' in source_spec['train'][0] lies outside the dataset folder"),
    ("file missing", _set(["source_spec", "train", 0, "files"], ["nope.tfrecord"]), "nope.tfrecord' of mapping 'train' does not exist"),
    ("duplicate feature", _set(["channel_spec", "user_features"], ["user_id", "label"]),
     "feature 'label' is listed twice"),
    ("bad oov policy", _set(["metadata"], {"out_of_range_ids": "clip"}), "metadata.out_of_range_ids is 'clip'"),
    ("chunk without files", _delete(["source_spec", "test", 0, "files"]), "source_spec['test'][0] has no 'files'"),
]


@pytest.mark.parametrize("name,mutate,message", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_spec_names_the_problem(tmp_path, name, mutate, message):
    raw = _mutate(mutate)
    path = _write(tmp_path, yaml.safe_dump(raw))
    with pytest.raises(fs.FeatureSpecError) as info:
        fs.FeatureSpec.from_yaml(path)
    assert message in str(info.value)


def test_not_yaml_and_not_a_file(tmp_path):
    path = _write(tmp_path, "feature_spec: [unclosed")
    with pytest.raises(fs.FeatureSpecError, match="is not valid YAML"):
        fs.FeatureSpec.from_yaml(path)
    with pytest.raises(fs.FeatureSpecError, match="does not exist"):
        fs.FeatureSpec.from_yaml(str(tmp_path / "missing.yaml"))
    path = _write(tmp_path, "- just\n- a list\n")
    with pytest.raises(fs.FeatureSpecError, match="the top level must be a mapping"):
        fs.FeatureSpec.from_yaml(path)


def test_validation_does_not_mutate_input():
    raw = yaml.safe_load(README_SPEC)
    before = copy.deepcopy(raw)
    fs.FeatureSpec.from_dict(raw, check_files=False)
    assert raw == before
