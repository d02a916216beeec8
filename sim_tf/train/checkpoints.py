"""Checkpoints of the whole training state, and loading a model's weights from one.

Keras 3 models do not expose layers held in Python lists to ``tf.train.Checkpoint``, so the model's
variables are tracked by their Keras paths ("item_embedding_0.table", ...): stable across processes and
readable in the checkpoint. Every worker of a multi-worker job must take part in a save (TensorFlow
synchronises inside it); only the chief's copy is kept.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import keras
import tensorflow as tf

from sim_tf.errors import UserError, brief


def variables_by_path(model: keras.Model) -> dict:
    """The model's variables keyed by their Keras paths, "/" replaced by "." (checkpoint keys)."""
    out = {}
    for variable in model.variables:
        key = variable.path.replace("/", ".")
        if key in out:
            raise ValueError(f"two model variables share the path {variable.path!r}")
        out[key] = variable
    return out


def find_checkpoint(path: str) -> str:
    """The checkpoint --load_checkpoint_path names: itself, or the newest one in a folder."""
    if tf.io.gfile.isdir(path):
        found = tf.train.latest_checkpoint(path)
        if found is None:
            raise UserError(f"--load_checkpoint_path {path!r} holds no checkpoint")
        return found
    if not tf.io.gfile.exists(path + ".index"):
        raise UserError(f"--load_checkpoint_path {path!r} is neither a checkpoint folder nor a checkpoint")
    return path


# The flags that decide which weights a model has, named by every checkpoint-mismatch message: a checkpoint
# restores only into a model built with the same ones.
MODEL_FLAGS = ("--model_type, --embedding_dim, the MLP sizes, --attention, --gsu and --head_batch_norm (whose "
               "default depends on --gsu)")


def check_no_foreign_weights(model: keras.Model, path: str, model_type: str) -> None:
    """Refuses a checkpoint that holds model weights ``model`` does not have (its flags built other parts:
    --head_batch_norm, --gsu, ...): TensorFlow restores the weights a model asks for and ignores the rest,
    so loading it would silently predict with a model other than the one trained."""
    try:
        names = [name for name, _ in tf.train.list_variables(path)]
    except (ValueError, tf.errors.OpError) as e:
        raise UserError(f"checkpoint {path!r} is unreadable: {brief(e)}") from None
    # A checkpoint key "model/<name>/.ATTRIBUTES/VARIABLE_VALUE" escapes each "." of <name> as "..".
    prefix, suffix = "model/", "/.ATTRIBUTES/VARIABLE_VALUE"
    saved = {n[len(prefix):-len(suffix)] for n in names if n.startswith(prefix) and n.endswith(suffix)}
    foreign = sorted(saved - {key.replace(".", "..") for key in variables_by_path(model)})
    if foreign:
        shown = ", ".join(k.replace("..", "/") for k in foreign[:4]) + (", ..." if len(foreign) > 4 else "")
        raise UserError(f"checkpoint {path!r} does not fit a {model_type} model with these flags: it holds "
                        f"{len(foreign)} model weight(s) that model does not have ({shown}), so it was trained "
                        f"with other model flags ({MODEL_FLAGS}); pass the flags it was trained with")


def restore_model_weights(model: keras.Model, path: str, model_type: str) -> None:
    """Loads only the model's weights from a training checkpoint; every weight must be found there, and
    the checkpoint must hold no model weight the model lacks."""
    check_no_foreign_weights(model, path, model_type)
    try:
        status = tf.train.Checkpoint(model=variables_by_path(model)).restore(path)
    except (ValueError, tf.errors.OpError) as e:
        raise UserError(f"checkpoint {path!r} is unreadable or does not fit a {model_type} model with these "
                        f"flags: {brief(e)}") from None
    status.expect_partial()  # the optimizer and counters are not needed
    try:
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        raise UserError(f"checkpoint {path!r} does not fit a {model_type} model with these flags "
                        f"({MODEL_FLAGS}): {brief(e)}") from None


class TrainingCheckpoints:
    """Saves and restores the training state (model, optimizer, counters) in ``directory``.

    ``directory`` empty disables saving. Non-chief workers save into a private scratch folder that is
    removed right after each save.
    """

    def __init__(self, model: keras.Model, optimizer, counters: dict[str, tf.Variable], directory: str,
                 keep: int, is_chief: bool, task_index: int = 0):
        self.checkpoint = tf.train.Checkpoint(model=variables_by_path(model), optimizer=optimizer, **counters)
        self.directory = directory
        self.keep = keep
        self.is_chief = is_chief
        self.task_index = task_index
        self._manager = None
        self._scratch: str | None = None

    def _target(self) -> str:
        if self.is_chief:
            return self.directory
        if self._scratch is None:  # a fresh private folder (mode 0700), not a predictable /tmp name
            self._scratch = tempfile.mkdtemp(prefix=f"sim_tf_worker_{self.task_index}_")
        return self._scratch

    def save(self, step: int) -> str | None:
        """Writes a checkpoint numbered ``step``; returns its path on the chief, None elsewhere."""
        if not self.directory:
            return None
        if self._manager is None:
            self._manager = tf.train.CheckpointManager(self.checkpoint, self._target(), max_to_keep=self.keep)
        path = self._manager.save(checkpoint_number=step)
        if not self.is_chief:
            shutil.rmtree(self._target(), ignore_errors=True)
            self._manager, self._scratch = None, None
            return None
        return path

    SIGNATURE = "run_signature.json"

    def write_signature(self, signature: dict) -> None:
        """Records, beside the chief's checkpoints, what a resume must keep equal (see TrainConfig.resume_signature)."""
        if self.is_chief and self.directory:
            from sim_tf.data.atomic import atomic_write_text

            atomic_write_text(os.path.join(self.directory, self.SIGNATURE), json.dumps(signature, sort_keys=True))

    def check_signature(self, signature: dict) -> None:
        """Refuses to resume a run whose shape differs from the saved one's (batch size, optimizer, model, ...):
        its steps would silently skip samples, or restart the optimizer's state."""
        path = os.path.join(self.directory, self.SIGNATURE)
        if not os.path.exists(path):
            return
        try:
            with open(path) as f:
                saved = json.load(f)
        except (OSError, ValueError):
            raise UserError(f"{path!r} is unreadable: remove it to resume anyway, or start a new "
                            f"--save_checkpoint_path") from None
        signature = json.loads(json.dumps(signature))  # tuples -> lists, as saved
        changed = sorted(k for k in signature if k in saved and saved[k] != signature[k])
        if changed:
            details = ", ".join(f"{k}: {saved[k]!r} -> {signature[k]!r}" for k in changed)
            raise UserError(f"--save_checkpoint_path {self.directory!r} holds a run with other settings ({details}); "
                            f"resume it with the same flags, or start a new run in another folder")

    def latest(self) -> str | None:
        return tf.train.latest_checkpoint(self.directory) if self.directory else None

    def restore(self, path: str) -> None:
        """Restores everything (model, optimizer and its loss scale, counters) from ``path``."""
        try:
            self.checkpoint.restore(path).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            raise UserError(f"checkpoint {path!r} cannot be resumed by this run: it is unreadable or was written "
                            f"for another model ({MODEL_FLAGS}) or optimizer: {brief(e)}; "
                            f"use another --save_checkpoint_path for a new run") from None

    def restore_latest_or(self, load_path: str, model: keras.Model, model_type: str, training: bool,
                          signature: dict | None = None) -> str | None:
        """Training resumes the whole state from the newest checkpoint in the save folder (refused when
        ``signature`` differs from the saved run's), else from ``load_path``; evaluation and inference load
        only the model's weights from ``load_path``. Returns the checkpoint used, or None."""
        latest = self.latest() if training else None
        if latest and signature is not None:
            self.check_signature(signature)
        candidates = [latest]
        if load_path:
            candidates.append(find_checkpoint(load_path))
        path = next((p for p in candidates if p), None)
        if path is not None and training:
            check_no_foreign_weights(model, path, model_type)
            self.restore(path)
        elif path is not None:
            restore_model_weights(model, path, model_type)
        return path
