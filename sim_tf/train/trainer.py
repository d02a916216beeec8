"""The training loop: strategy, input, steps, evaluation, checkpoints, logs, TensorBoard and profiling.

It knows the task (model + optimizer maths) only through :class:`CtrTask`; it owns everything else.
I/O (logging, summaries, evaluation, checkpoints) happens between inner loops of ``steps_per_loop``
steps, each a single ``tf.function`` call.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from sim_tf import distribute
from sim_tf.data import dataset as data
from sim_tf.data import feature_spec as fs
from sim_tf.errors import Interrupted, UserError
from sim_tf.layers import core
from sim_tf.models import models
from sim_tf.preprocess.progress import format_duration
from sim_tf.train import metrics
from sim_tf.train.config import TrainConfig
from sim_tf.train.optimizers import make_optimizer
from sim_tf.train.task import CtrTask


def resolve_precision(config: TrainConfig, num_gpus: int) -> tuple[str, bool]:
    """(Keras dtype policy, whether to use dynamic loss scaling) for ``--amp`` / ``--amp_dtype``.

    ``--amp`` means float16 with dynamic loss scaling on GPUs and bfloat16 on CPUs (float16 without
    XLA ran 40x slower than float32 on these CPUs; bfloat16 has float32's range, so needs no scaling).
    """
    if not config.amp:
        return "float32", False
    dtype = config.amp_dtype
    if dtype == "auto":
        dtype = "float16" if num_gpus > 0 else "bfloat16"
    return f"mixed_{dtype}", dtype == "float16"


class RunLog:
    """JSON-lines log (chief only) plus progress lines on stdout."""

    def __init__(self, path: str | None, echo: Callable[[str], None] = print):
        self.path = path
        self.echo = echo
        if path:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            self._file = open(path, "a")
        else:
            self._file = None

    def record(self, kind: str, **values):
        if self._file:
            clean = {k: (float(v) if isinstance(v, (np.floating, np.integer)) else v) for k, v in values.items()}
            self._file.write(json.dumps({"type": kind, "time": time.time(), **clean}) + "\n")
            self._file.flush()

    def say(self, text: str):
        if self.echo:
            self.echo(text)

    def close(self):
        if self._file:
            self._file.close()
            self._file = None


def _percentiles(latencies_s: list[float]) -> dict[str, float]:
    if not latencies_s:
        return {}
    ms = np.asarray(latencies_s) * 1000.0
    return {
        "latency_mean_ms": float(ms.mean()),
        "latency_p50_ms": float(np.percentile(ms, 50)),
        "latency_p90_ms": float(np.percentile(ms, 90)),
        "latency_p95_ms": float(np.percentile(ms, 95)),
        "latency_p99_ms": float(np.percentile(ms, 99)),
    }


def peak_rss_bytes() -> int | None:
    """This process's peak resident memory since it started (Linux VmHWM; ru_maxrss elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource

        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    except (ImportError, OSError):
        return None


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def variables_by_path(model: keras.Model) -> dict:
    """The model's variables keyed by their Keras paths ("item_embedding_0.table", ...).

    Keras 3 models do not expose layers held in Python lists to tf.train.Checkpoint, so the checkpoint
    tracks the variables by path instead: stable across processes and readable in the checkpoint.
    """
    out = {}
    for variable in model.variables:
        key = variable.path.replace("/", ".")
        if key in out:
            raise ValueError(f"two model variables share the path {variable.path!r}")
        out[key] = variable
    return out


def restore_model_weights(model: keras.Model, path: str, model_type: str) -> None:
    """Loads only the model's weights from a training checkpoint; every weight must be found there."""
    status = tf.train.Checkpoint(model=variables_by_path(model)).restore(path)
    status.expect_partial()  # the optimizer and counters are not needed
    try:
        status.assert_existing_objects_matched()
    except AssertionError as e:
        raise UserError(f"checkpoint {path!r} does not fit a {model_type} model with these flags "
                        f"(--model_type, --embedding_dim, MLP sizes, --attention): {str(e)[:300]}") from None


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


class Trainer:
    def __init__(self, config: TrainConfig, echo: Callable[[str], None] = print):
        self.config = config
        self.cluster = distribute.read_tf_config()
        num_gpus = distribute.configure_devices(
            config.cpu_replicas, config.inter_op_parallelism, config.intra_op_parallelism,
            training=config.mode == "train", xla=config.xla,
        )
        self.choice = distribute.choose_strategy(config.strategy, num_gpus, self.cluster, config.cpu_replicas)
        self.strategy = distribute.create_strategy(self.choice, config.collective_timeout_s)
        self.is_chief = self.cluster.is_chief
        self.policy, loss_scaling = resolve_precision(config, num_gpus)

        keras.utils.set_random_seed(config.seed)
        if config.deterministic:
            tf.config.experimental.enable_op_determinism()

        spec_path = os.path.join(config.dataset_dir, config.feature_spec)
        self.spec = fs.FeatureSpec.from_yaml(spec_path)
        if not 0 < config.long_seq_length < self.spec.history_length:
            raise UserError(
                f"--long_seq_length {config.long_seq_length} must be between 1 and {self.spec.history_length - 1}: "
                f"the dataset's histories have {self.spec.history_length} positions (L) and the short history "
                f"is the last L - long_seq_length"
            )
        replicas = self.strategy.num_replicas_in_sync
        if config.global_batch_size % replicas:
            raise UserError(
                f"--global_batch_size {config.global_batch_size} is not divisible by the {replicas} replicas"
            )

        os.makedirs(config.results_dir, exist_ok=True)
        log_path = os.path.join(config.results_dir, config.log_filename) if self.is_chief else None
        self.log = RunLog(log_path, echo if self.is_chief else None)
        self.log.say(distribute.describe(self.choice, self.strategy) + f", precision {self.policy}"
                     + (", XLA" if config.xla else ""))

        with core.global_dtype_policy(self.policy), self.strategy.scope():
            self.model = models.build_model(config.model_type, config.model, self.spec)
            optimizer = make_optimizer(config.optimizer, config.lr, config.weight_decay)
            if loss_scaling:
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            optimizer.build(self.model.trainable_variables)
            self.optimizer = optimizer
            aggregation = tf.VariableAggregation.ONLY_FIRST_REPLICA
            self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, aggregation=aggregation)
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, aggregation=aggregation)
            self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, aggregation=aggregation)
        # The resolved thread count (0: TensorFlow's default, one per core), recorded in config.json.
        self.intra_op_threads = tf.config.threading.get_intra_op_parallelism_threads()
        self.microbatches = config.microbatches or distribute.auto_microbatches(
            num_gpus, distribute.usable_cores(), config.mode == "train", self.intra_op_threads, config.xla)
        self.task = CtrTask(self.model, self.optimizer, loss_scaling, config.xla, replicas, self.microbatches)
        self.checkpoint = tf.train.Checkpoint(
            model=variables_by_path(self.model),
            optimizer=self.optimizer,
            global_step=self.global_step,
            epoch=self.epoch,
            step_in_epoch=self.step_in_epoch,
        )
        self._manager = None
        # The training records cached in memory, shared by every epoch's pipeline (see _input_options).
        self._record_cache: dict = {}
        self._writers: dict[str, tf.summary.SummaryWriter] = {}
        self._train_loop_fn = None
        self._predict_fn = None
        self._profiling = False
        self._stop_signal = 0
        self.samples = {m: data.sample_count(self.spec, m) for m in ("train", "test")}

    # ------------------------------------------------------------------ input
    def _input_options(self, mapping: str, epoch: int) -> data.InputOptions:
        c = self.config
        prefetch = c.prefetch_train_size if mapping == "train" else c.prefetch_test_size
        prebatch = c.prebatch_train_size if mapping == "train" else c.prebatch_test_size
        cacheable = c.cache and mapping == "train" and not c.benchmark and self._train_fits_in_memory
        return data.InputOptions(
            long_seq_length=c.long_seq_length,
            # One seed per epoch (not one reshuffling stream), so a run resumed at epoch k sees the same
            # order as an uninterrupted one.
            seed=c.seed * 1009 + epoch,
            shuffle=mapping == "train",
            shuffle_buffer=c.shuffle_buffer,
            drop_remainder=c.drop_remainder and mapping == "train",
            # The cache only pays when this run reads the records again. The file order must not depend on
            # the number of epochs, though, so a one-pass run reads in the cached runs' order.
            cache=cacheable and c.epochs * max(1, c.repeat_count) > 1,
            fixed_file_order=cacheable,
            repeat=0 if (c.benchmark and mapping == "train") else max(1, c.repeat_count) if mapping == "train" else 1,
            prefetch=prefetch if prefetch > 0 else data.AUTOTUNE,
            deterministic=True,
            prebatch_size=prebatch or None,
            negative_history=mapping == "train",
        )

    @functools.cached_property
    def _train_fits_in_memory(self) -> bool:
        """Caching keeps the serialized records in RAM; skip it when they would take over a quarter of it.

        Decided once per run: it also fixes the file order, which must be the same in every epoch's
        pipeline (and one stat per file is a network call on remote storage).
        """
        try:
            size = sum(tf.io.gfile.stat(f).length for f in self.spec.files("train"))
            pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, tf.errors.OpError):
            return False
        return size < pages / 4

    def _distributed_dataset(self, mapping: str, epoch: int, skip_steps: int = 0, forever: bool = False):
        options = self._input_options(mapping, epoch)
        if forever:
            options = dataclasses.replace(options, repeat=0, cache=False)
        spec, batch = self.spec, self.config.global_batch_size
        local_replicas = self.strategy.num_replicas_in_sync // max(1, self.cluster.num_workers)

        def dataset_fn(context: tf.distribute.InputContext):
            ds = data.make_dataset(spec, mapping, batch, context, options, self._record_cache)
            if skip_steps:
                # Every global step consumes one per-replica batch per local replica of this worker.
                ds = ds.skip(skip_steps * max(1, local_replicas))
            return ds

        return self.strategy.distribute_datasets_from_function(dataset_fn)

    # ------------------------------------------------------------------ compiled functions
    def _make_train_loop(self):
        strategy, task = self.strategy, self.task
        multi_worker = self.cluster.num_workers > 1

        @tf.function
        def train_loop(iterator, steps, stop_requested):
            loss_sum = tf.constant(0.0, tf.float32)
            done = tf.constant(0, tf.int64)
            for _ in tf.range(steps):
                optional = iterator.get_next_as_optional()
                if not optional.has_value():
                    break
                per_replica = strategy.run(task.train_step, args=(optional.get_value(),))
                loss_sum += strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
                done += 1
            self.global_step.assign_add(done)
            self.step_in_epoch.assign_add(done)
            if multi_worker:
                # Every worker must stop at the same step, or the others would wait in a collective for
                # ever: agree on "anyone asked to stop" with one small all-reduce per inner loop.
                flag = tf.cast(stop_requested, tf.float32)
                votes = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.identity(flag)), axis=None)
                stop = votes > 0
            else:
                stop = tf.convert_to_tensor(stop_requested)
            return loss_sum, done, stop

        return train_loop

    def _make_predict(self):
        strategy, task = self.strategy, self.task

        @tf.function
        def predict(batch):
            per_replica = strategy.run(task.predict_step, args=(batch,))
            return tuple(strategy.gather(value, axis=0) for value in per_replica)

        return predict

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_dir(self) -> str | None:
        path = self.config.save_checkpoint_path
        if not path:
            return None
        if self.is_chief:
            return path
        # Every worker must take part in saving; non-chief workers write to a scratch folder.
        return os.path.join(tempfile.gettempdir(), f"sim_tf_worker_{self.cluster.task_index}_{os.getpid()}")

    def _checkpoint_manager(self):
        if self._manager is None and self._checkpoint_dir():
            self._manager = tf.train.CheckpointManager(
                self.checkpoint, self._checkpoint_dir(), max_to_keep=self.config.keep_checkpoints
            )
        return self._manager

    def save(self) -> str | None:
        manager = self._checkpoint_manager()
        if manager is None:
            return None
        path = manager.save(checkpoint_number=int(self.global_step.numpy()))
        if not self.is_chief:
            shutil.rmtree(self._checkpoint_dir(), ignore_errors=True)
            self._manager = None
            return None
        self.log.record("checkpoint", path=path, step=int(self.global_step.numpy()), epoch=int(self.epoch.numpy()))
        return path

    def restore(self) -> str | None:
        """Resumes from the newest checkpoint in --save_checkpoint_path, else loads --load_checkpoint_path.

        Training restores everything (model, optimizer and its loss scale, step, epoch); evaluation and
        inference restore the model only.
        """
        c = self.config
        candidates = []
        if c.save_checkpoint_path and c.mode == "train":
            candidates.append(tf.train.latest_checkpoint(c.save_checkpoint_path))
        if c.load_checkpoint_path:
            candidates.append(find_checkpoint(c.load_checkpoint_path))
        path = next((p for p in candidates if p), None)
        if path is None:
            return None
        if c.mode == "train":
            self.checkpoint.restore(path).assert_existing_objects_matched()
        else:
            restore_model_weights(self.model, path, c.model_type)
        self.log.say(f"restored {path} (step {int(self.global_step.numpy())}, epoch {int(self.epoch.numpy())})")
        self.log.record("restore", path=path, step=int(self.global_step.numpy()), epoch=int(self.epoch.numpy()))
        return path

    # ------------------------------------------------------------------ summaries
    def _writer(self, name: str):
        if not self.is_chief:
            return None
        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(os.path.join(self.config.tensorboard_path, name))
        return self._writers[name]

    def _scalars(self, name: str, step: int, values: dict[str, float]):
        writer = self._writer(name)
        if writer is None:
            return
        with writer.as_default(step=step):
            for key, value in values.items():
                if value is not None and np.isfinite(value):
                    tf.summary.scalar(key, value)
        writer.flush()

    def _maybe_profile(self, step: int):
        window = self.config.profile_steps
        if window is None or not self.is_chief:
            return
        start, end = window
        if not self._profiling and start <= step < end:
            tf.profiler.experimental.start(self.config.tensorboard_path)
            self._profiling = True
            self.log.say(f"profiling steps {start}..{end} into {self.config.tensorboard_path}")
        elif self._profiling and step >= end:
            tf.profiler.experimental.stop()
            self._profiling = False

    def _loss_scale(self) -> float | None:
        scale = getattr(self.optimizer, "dynamic_scale", None)
        return float(scale.numpy()) if scale is not None else None

    def _learning_rate(self) -> float:
        return float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))

    # ------------------------------------------------------------------ evaluation
    def predict(self, mapping: str = "test", timed: bool = False, batches: int | None = None):
        """Runs the model over a whole mapping, or over ``batches`` global batches of it repeated.

        Returns (probabilities, labels, users, [(seconds, samples) per global batch] when ``timed``).
        """
        if self._predict_fn is None:
            self._predict_fn = self._make_predict()
        iterator = iter(self._distributed_dataset(mapping, epoch=0, forever=batches is not None))
        probabilities, labels, users, latencies = [], [], [], []
        while batches is None or len(labels) < batches:
            started = time.perf_counter()
            optional = iterator.get_next_as_optional()
            if not bool(optional.has_value()):
                break
            p, y, u = self._predict_fn(optional.get_value())
            probabilities.append(p.numpy())
            labels.append(y.numpy())
            users.append(u.numpy())
            if timed:
                latencies.append((time.perf_counter() - started, int(y.shape[0])))
        if not labels:
            raise UserError(f"the {mapping!r} mapping produced no samples")
        return np.concatenate(probabilities), np.concatenate(labels), np.concatenate(users), latencies

    def evaluate(self, mapping: str = "test") -> dict:
        started = time.perf_counter()
        probabilities, labels, users, _ = self.predict(mapping)
        result = metrics.evaluate_predictions(labels, probabilities, users)
        result["roc"] = metrics.roc_curve(labels, probabilities)
        result["pr"] = metrics.pr_curve(labels, probabilities)
        result["seconds"] = time.perf_counter() - started
        return result

    def _curves(self, step: int, result: dict):
        writer = self._writer("validation")
        if writer is None:
            return
        with writer.as_default(step=step):
            tf.summary.image("roc_curve", metrics.curve_image(*result["roc"], diagonal=True)[None],
                             description="ROC curve on the test split (x: false positive rate, y: true positive rate)")
            tf.summary.image("pr_curve", metrics.curve_image(*result["pr"])[None],
                             description="precision (y) against recall (x) on the test split")
        writer.flush()

    def _evaluate_and_log(self, epoch: int):
        step = int(self.global_step.numpy())
        result = self.evaluate("test")
        values = {"test_auc": result["auc"], "test_loss": result["loss"], "test_gauc": result["gauc"]}
        if self.config.evaluate_train:
            train = self.evaluate("train")
            values.update(train_auc=train["auc"], train_eval_loss=train["loss"], train_gauc=train["gauc"])
        self.log.record("eval", step=step, epoch=epoch, samples=result["samples"], roc=result["roc"], **values)
        self._scalars("validation", step, {"auc": result["auc"], "loss": result["loss"], "gauc": result["gauc"]})
        self._curves(step, result)
        self.log.say(
            f"evaluation at step {step}: test AUC {result['auc']:.4f}, GAUC {result['gauc']:.4f}, "
            f"log loss {result['loss']:.4f} over {result['samples']:,} samples ({result['seconds']:.1f}s)"
        )
        return values

    # ------------------------------------------------------------------ training
    def steps_per_epoch(self) -> int:
        samples = self.samples["train"] * max(1, self.config.repeat_count)
        batch = self.config.global_batch_size
        return samples // batch if self.config.drop_remainder else math.ceil(samples / batch)

    def _next_chunk(self, step: int) -> int:
        """Steps to run in the next inner loop: up to steps_per_loop, stopping at every I/O boundary."""
        c = self.config
        chunk = c.steps_per_loop
        boundaries = [c.log_every_steps]
        if c.eval_every_steps:
            boundaries.append(c.eval_every_steps)
        if c.checkpoint_every_steps:
            boundaries.append(c.checkpoint_every_steps)
        for every in boundaries:
            chunk = min(chunk, every - step % every)
        if c.profile_steps:
            for edge in c.profile_steps:
                if edge > step:
                    chunk = min(chunk, edge - step)
        return max(1, chunk)

    def _request_stop(self, signum, frame):
        if self._stop_signal and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C does not wait
        self._stop_signal = signum
        self.log.say(f"received {signal.Signals(signum).name}: stopping after the current steps")

    def train(self) -> dict:
        c = self.config
        if self._train_loop_fn is None:
            self._train_loop_fn = self._make_train_loop()
        self.restore()
        handlers = {}
        if threading_is_main():
            handlers = {s: signal.signal(s, self._request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            return self._train()
        finally:
            for s, handler in handlers.items():
                signal.signal(s, handler)

    def weights_digest(self) -> str:
        """A short hash of every model weight: equal on all workers of a synchronous job."""
        digest = hashlib.sha256()
        for variable in self.model.variables:
            digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(variable)).tobytes())
        return digest.hexdigest()[:16]

    def _train(self) -> dict:
        c = self.config
        steps_per_epoch = self.steps_per_epoch()
        start_epoch = int(self.epoch.numpy())
        if start_epoch >= c.epochs:
            self.log.say(f"the checkpoint has already finished {start_epoch} epoch(s); nothing to train")
        self.log.record("start", steps_per_epoch=steps_per_epoch, epochs=c.epochs, start_epoch=start_epoch,
                        train_samples=self.samples["train"], test_samples=self.samples["test"],
                        replicas=self.strategy.num_replicas_in_sync, precision=self.policy,
                        cached_records=self._input_options("train", 0).cache)
        latencies: list[float] = []
        first_loop_seconds = None
        run_started = time.perf_counter()
        trained_samples = 0
        train_seconds = 0.0
        last_loss = float("nan")
        last_eval: dict = {}
        for epoch in range(start_epoch, c.epochs):
            resume_at = int(self.step_in_epoch.numpy())
            iterator = iter(self._distributed_dataset("train", epoch, skip_steps=resume_at))
            window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
            epoch_started = time.perf_counter()
            stop_now = False
            while True:
                step = int(self.global_step.numpy())
                self._maybe_profile(step)
                chunk = self._next_chunk(step)
                started = time.perf_counter()
                loss_sum, done, stop = self._train_loop_fn(
                    iterator, tf.constant(chunk, tf.int64), tf.constant(bool(self._stop_signal))
                )
                done = int(done.numpy())
                loss_sum = float(loss_sum.numpy())
                elapsed = time.perf_counter() - started
                if done:
                    if first_loop_seconds is None:
                        # Tracing and compilation happen in the first call; keep them out of throughput.
                        first_loop_seconds = elapsed
                    else:
                        latencies.extend([elapsed / done] * done)
                        trained_samples += done * c.global_batch_size
                        train_seconds += elapsed
                    window_loss += loss_sum
                    window_steps += done
                    step += done
                    if not math.isfinite(loss_sum):
                        raise UserError(
                            f"the training loss became {loss_sum} at step {step}; lower --lr, or use "
                            f"--amp_dtype bfloat16 if float16 overflows"
                        )
                epoch_done = done < chunk
                if window_steps and (step % c.log_every_steps == 0 or epoch_done):
                    last_loss = window_loss / window_steps
                    self._log_progress(epoch, step, last_loss, window_steps, time.perf_counter() - window_start,
                                       steps_per_epoch)
                    window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
                if done and c.eval_every_steps and step % c.eval_every_steps == 0:
                    last_eval = self._evaluate_and_log(epoch)
                if done and c.checkpoint_every_steps and step % c.checkpoint_every_steps == 0:
                    self.save()
                stop_now = bool(stop.numpy())
                if stop_now and not epoch_done:
                    path = self.save()
                    if path:
                        where = f"saved {path}"
                    elif c.save_checkpoint_path:
                        where = "the chief saved the checkpoint"
                    else:
                        where = "no --save_checkpoint_path, nothing saved"
                    self.log.record("interrupted", step=step, epoch=epoch, checkpoint=path)
                    raise Interrupted(
                        f"stopped at step {step} on request ({where}); run the same command again to resume"
                    )
                if epoch_done:
                    break
            self._maybe_profile(int(self.global_step.numpy()) + 10**9)
            self.epoch.assign(epoch + 1)
            self.step_in_epoch.assign(0)
            self.log.record("epoch", epoch=epoch, step=int(self.global_step.numpy()), train_loss=last_loss,
                            seconds=time.perf_counter() - epoch_started)
            last_eval = self._evaluate_and_log(epoch)
            path = self.save()
            if stop_now and epoch + 1 < c.epochs:
                self.log.record("interrupted", step=int(self.global_step.numpy()), epoch=epoch, checkpoint=path)
                raise Interrupted(f"stopped after epoch {epoch + 1} on request (saved {path}); run the same "
                                  f"command again to resume")
        summary = {
            "train_loss": last_loss,
            **{k: last_eval.get(k) for k in ("test_auc", "test_loss", "test_gauc")},
            "throughput": trained_samples / train_seconds if train_seconds else None,
            "time_to_train": time.perf_counter() - run_started,
            "first_loop_seconds": first_loop_seconds,
            **_percentiles(latencies),
        }
        return summary

    def _log_progress(self, epoch: int, step: int, loss: float, steps: int, seconds: float, steps_per_epoch: int):
        c = self.config
        rate = steps * c.global_batch_size / max(seconds, 1e-9)
        in_epoch = int(self.step_in_epoch.numpy())
        eta = max(0, steps_per_epoch - in_epoch) * c.global_batch_size / max(rate, 1e-9)
        self.log.say(
            f"epoch {epoch + 1}/{c.epochs} step {in_epoch}/{steps_per_epoch} loss {loss:.4f} "
            f"{rate:,.0f} samples/s ETA {format_duration(eta)}"
        )
        record = {"train_loss": loss, "samples_per_s": rate, "lr": self._learning_rate()}
        scale = self._loss_scale()
        if scale is not None:
            record["loss_scale"] = scale
        self.log.record("step", step=step, epoch=epoch, **record)
        self._scalars("train", step, {"loss": loss, "samples_per_s": rate, "lr": record["lr"],
                                      "loss_scale": scale})

    def benchmark_train(self) -> dict:
        """Times warm-up + benchmark steps on repeating data; warm-up and compilation are excluded."""
        c = self.config
        if self._train_loop_fn is None:
            self._train_loop_fn = self._make_train_loop()
        iterator = iter(self._distributed_dataset("train", epoch=0))
        total = c.benchmark_warmup_steps + c.benchmark_steps
        latencies = []
        step = 0
        while step < total:
            self._maybe_profile(step)
            chunk = min(c.steps_per_loop, total - step)
            if step < c.benchmark_warmup_steps:
                chunk = min(chunk, c.benchmark_warmup_steps - step)
            if c.profile_steps:
                chunk = min([chunk] + [edge - step for edge in c.profile_steps if edge > step])
            started = time.perf_counter()
            _, done, _ = self._train_loop_fn(iterator, tf.constant(chunk, tf.int64), tf.constant(False))
            done = int(done.numpy())
            elapsed = time.perf_counter() - started
            if step >= c.benchmark_warmup_steps:
                latencies.extend([elapsed / done] * done)
            step += done
        self._maybe_profile(10**12)
        seconds = float(np.sum(latencies))
        return {
            "throughput": c.global_batch_size * len(latencies) / seconds,
            "benchmark_steps": len(latencies),
            "warmup_steps": c.benchmark_warmup_steps,
            **_percentiles(latencies),
        }

    def inference(self) -> dict:
        """Predicts the test split once and reports its metrics and speed (the first batch, which pays for
        tracing, is not timed). With --benchmark it instead predicts warm-up + benchmark batches of the
        test split repeated, and times the benchmark batches only.
        """
        c = self.config
        started = time.perf_counter()
        batches = c.benchmark_warmup_steps + c.benchmark_steps if c.benchmark else None
        probabilities, labels, users, timings = self.predict("test", timed=True, batches=batches)
        total = time.perf_counter() - started
        skip = min(c.benchmark_warmup_steps if c.benchmark else 1, len(timings) - 1)
        measured = timings[skip:]
        seconds = sum(t for t, _ in measured)
        summary = {
            "samples": int(labels.size),
            "throughput": sum(n for _, n in measured) / seconds if seconds > 0 else None,
            "measured_batches": len(measured),
            "wall_seconds": total,
            **_percentiles([t for t, _ in measured]),
        }
        if not c.benchmark:
            result = metrics.evaluate_predictions(labels, probabilities, users)
            summary = {"test_auc": result["auc"], "test_loss": result["loss"], "test_gauc": result["gauc"], **summary}
        return summary

    def run(self) -> dict:
        c = self.config
        if self.is_chief:
            c.write(
                os.path.join(c.results_dir, "config.json"),
                {"resolved": {"strategy": dataclasses.asdict(self.choice), "precision": self.policy,
                              "replicas": self.strategy.num_replicas_in_sync,
                              "intra_op_threads": self.intra_op_threads,
                              "microbatches": self.microbatches}},
            )
        try:
            if c.mode == "train":
                summary = self.benchmark_train() if c.benchmark else self.train()
            else:
                restored = self.restore()
                if restored is None and not c.random_init:
                    raise UserError(
                        f"--mode {c.mode} needs a trained model: pass --load_checkpoint_path (a checkpoint or a "
                        f"folder of them), or --random_init to measure speed with random weights"
                    )
                if c.mode == "inference":
                    summary = self.inference()
                else:
                    result = self.evaluate("test")
                    summary = {"test_auc": result["auc"], "test_loss": result["loss"], "test_gauc": result["gauc"],
                               "samples": result["samples"]}
        except tf.errors.InvalidArgumentError as e:
            explained = data.explain_data_error(e)
            if explained is not None:
                raise explained from None
            raise
        except (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.DeadlineExceededError,
                tf.errors.CancelledError, tf.errors.InternalError) as e:
            if self.cluster.num_workers <= 1:
                raise
            lines = [line.strip() for line in (e.message or "").splitlines() if line.strip()]
            detail = " ".join(lines[:2])[:300]
            raise UserError(
                f"worker {self.cluster.task_index} lost contact with the other workers ({type(e).__name__}: {detail}); "
                f"the job stops here: relaunch it to resume from the last checkpoint"
            ) from None
        finally:
            if self._profiling:
                tf.profiler.experimental.stop()
                self._profiling = False
        summary = {"mode": c.mode, "model_type": c.model_type, "benchmark": c.benchmark, **summary,
                   "peak_rss_bytes": peak_rss_bytes()}
        if c.mode == "train":
            summary["weights_digest"] = self.weights_digest()
            if self.cluster.num_workers > 1:
                print(f"worker {self.cluster.task_index}: model weights digest {summary['weights_digest']}", flush=True)
        self.log.record("summary", **summary)
        for writer in self._writers.values():
            writer.close()
        self.log.close()
        return summary
