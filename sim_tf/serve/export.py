"""Export a trained model as a SavedModel with a `serving_default` signature over raw, named inputs.

Inputs (names from the dataset's FeatureSpec, e.g. ``user_feat_0``, ``item_feat_0_trgt``,
``item_feat_0_pos``), all int64:

* every user feature: [batch];
* every target item feature: [batch];
* every positive-history feature: [batch, L], left-padded with 0 (most recent behaviour last).

A model trained on a behaviour-store dataset takes its histories *assembled*, as the input pipeline
assembled them: [batch, Ll + S], the long part (Ll = ``long_seq_length`` in sim_tf_export.json) before
the recent S. With ``gsu: soft`` the long part is the Ll behaviours before the recent S; with
``gsu: hard`` it is the (at most) Ll most recent behaviours of the target's category among the
``max_long_history`` before the recent S, oldest first, left-padded. The store itself never enters the
SavedModel: an online system keeps it in its own feature service (docs/data.md, "Serving").

Output: ``probability`` [batch] float32, the click probability (SIM: its second stage). Ids outside
``0..cardinality`` are handled as the FeatureSpec says: an error naming the feature (default), or the
out-of-vocabulary row. The SavedModel needs only TensorFlow to load.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from sim_tf.data import feature_spec as fs
from sim_tf.data.inputs import model_inputs
from sim_tf.models import models
from sim_tf.train.checkpoints import find_checkpoint, restore_model_weights, variables_by_path


class ServingModule(tf.Module):
    def __init__(self, model, spec: fs.FeatureSpec, long_seq_length: int, out_of_range: str):
        super().__init__(name="sim_tf_serving")
        self.model = model
        # Keras 3 hides list-held layers from TensorFlow's tracking; track the variables explicitly.
        self.model_variables = variables_by_path(model)
        self.spec = spec
        self.long = long_seq_length
        self.out_of_range = out_of_range
        length = spec.history_length
        signature = {name: tf.TensorSpec([None], tf.int64, name=name)
                     for name in spec.user_features + spec.target_item_features}
        signature.update({name: tf.TensorSpec([None, length], tf.int64, name=name)
                          for name in spec.positive_history_features})
        self.serve = tf.function(self._serve, input_signature=[signature])

    def _serve(self, inputs):
        # The same builder as the training pipeline's; without negative histories, as in prediction.
        features = model_inputs(inputs, self.spec, self.long, self.out_of_range)
        return {"probability": self.model(features, training=False)["prediction"]}


def export(model, spec: fs.FeatureSpec, long_seq_length: int, output: str, out_of_range: str | None = None,
           extra: dict | None = None) -> str:
    """Writes the SavedModel (plus sim_tf_export.json describing its inputs) to ``output``. For a
    store-backed ``spec``, ``long_seq_length`` is the long history's positions (see the module doc)."""
    policy = out_of_range or spec.out_of_range_ids
    if spec.store is not None:
        spec = spec.padded_view(long_seq_length + spec.history_length)
    module = ServingModule(model, spec, long_seq_length, policy)
    tf.saved_model.save(module, output, signatures={"serving_default": module.serve.get_concrete_function()})
    description = {
        "inputs": {name: {"shape": ["batch"], "cardinality": spec.cardinality(name)}
                   for name in spec.user_features + spec.target_item_features},
        "output": "probability",
        "user_features": spec.user_features,
        "target_item_features": spec.target_item_features,
        "positive_history_features": spec.positive_history_features,
        "history_length": spec.history_length,
        "long_seq_length": long_seq_length,
        "out_of_range_ids": policy,
        **(extra or {}),
    }
    for name in spec.positive_history_features:
        description["inputs"][name] = {"shape": ["batch", spec.history_length], "cardinality": spec.cardinality(name),
                                       "padding": "left, with 0; most recent behaviour last"}
    with open(os.path.join(output, "sim_tf_export.json"), "w") as f:
        json.dump(description, f, indent=2)
    return output


def restore_model(model_type: str, config: models.ModelConfig, spec: fs.FeatureSpec, checkpoint: str):
    """Builds the model for ``spec`` and restores its weights from a checkpoint (or a folder of them)."""
    path = find_checkpoint(checkpoint)
    model = models.build_model(model_type, config, spec)
    restore_model_weights(model, path, model_type)
    return model, path
