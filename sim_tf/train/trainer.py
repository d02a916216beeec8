"""The training loop, in the Orbit manner: the trainer owns the strategy, the loop, checkpoints, summaries
and profiling, and knows the model family only through the task (:class:`~sim_tf.train.task.CtrTask`).

I/O (logging, summaries, evaluation, checkpoints) happens between inner loops of ``steps_per_loop``
steps, each a single ``tf.function`` call. ``--benchmark`` is a mode of the same loop: warm-up plus
timed steps on endlessly repeating data, without evaluation or checkpoints.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import threading
import time

import keras
import tensorflow as tf

from sim_tf import distribute
from sim_tf.data import feature_spec as fs
from sim_tf.data.dataset import lost_samples
from sim_tf.errors import Interrupted, UserError
from sim_tf.progress import format_duration
from sim_tf.train.checkpoints import TrainingCheckpoints
from sim_tf.train.config import TrainConfig
from sim_tf.train.evaluation import Evaluator
from sim_tf.train import optimizers
from sim_tf.train.measure import percentiles
from sim_tf.train.precision import global_dtype_policy, resolve_precision
from sim_tf.train.run_log import Profiler, RunLog, Summaries
from sim_tf.train.task import CtrTask


def steps_per_epoch(config: TrainConfig, train_samples: int) -> int:
    """Global steps in one epoch of ``train_samples`` (times --repeat_count), the last one partial unless
    --drop_remainder."""
    samples = train_samples * max(1, config.repeat_count)
    batch = config.global_batch_size
    return samples // batch if config.drop_remainder else math.ceil(samples / batch)


def next_chunk(config: TrainConfig, step: int) -> int:
    """Steps in the inner loop that starts at ``step``: up to --steps_per_loop, ending at every I/O boundary
    (log, evaluation, checkpoint) or, under --benchmark, at the end of warm-up and of the timed steps; and
    at the profiler window's edges."""
    chunk = config.steps_per_loop
    if config.benchmark:
        edges = [config.benchmark_warmup_steps, config.benchmark_warmup_steps + config.benchmark_steps]
    else:
        edges = []
        for every in (config.log_every_steps, config.eval_every_steps, config.checkpoint_every_steps):
            if every:
                chunk = min(chunk, every - step % every)
    edges += list(config.profile_steps or ())
    return max(1, min([chunk] + [edge - step for edge in edges if edge > step]))


def check_epoch_samples(config: TrainConfig, train_samples: int, declared: bool, epoch: int, read: int,
                        skipped_steps: int) -> None:
    """Stops the run when an epoch trained on another number of samples than the dataset holds (a truncated
    or missing file loses whole records without any read error)."""
    batch = config.global_batch_size
    total = train_samples * max(1, config.repeat_count)
    expected = (steps_per_epoch(config, train_samples) * batch if config.drop_remainder else total) - skipped_steps * batch
    if read != expected:
        source = "the FeatureSpec's metadata" if declared else "counting its records"
        raise lost_samples(f"epoch {epoch + 1} read {read:,} training samples but the train split holds {expected:,} "
                           f"(from {source})", f"check it with `sim-tf inspect --dataset_dir {config.dataset_dir}`")


# Models whose prediction is a chain of small ops (the GRU/AUGRU over the short history): on small CPU
# hosts they predict in microbatches, one thread per op (distribute.auto_microbatches).
RECURRENT_MODELS = ("sim", "dien")


class StopRequest:
    """While active, SIGTERM and SIGINT only set ``signum``, which the loop polls between inner loops, so
    every worker can agree on a step and save; a second SIGINT stops at once."""

    def __init__(self, say):
        self.say = say
        self.signum = 0
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.signum and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        self.say(f"received {signal.Signals(signum).name}: stopping after the current steps")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}


class Trainer:
    def __init__(self, config: TrainConfig, spec: fs.FeatureSpec, log: RunLog):
        self.log = log
        self.cluster = distribute.read_tf_config()
        self.plan = distribute.plan_devices(
            distribute.visible_gpus(), distribute.usable_cores(), xla=config.xla,
            steps_per_loop=config.steps_per_loop, drop_remainder=config.drop_remainder,
            deterministic=config.deterministic, num_parallel_reads=config.num_parallel_reads,
            gpu_memory_growth=config.gpu_memory_growth)
        # From here on the config holds what the devices decided (recorded in config.json).
        config = dataclasses.replace(config, xla=self.plan.xla, steps_per_loop=self.plan.steps_per_loop,
                                     drop_remainder=self.plan.drop_remainder,
                                     num_parallel_reads=self.plan.num_parallel_reads)
        self.config = config
        num_gpus = distribute.configure_devices(
            config.cpu_replicas, config.inter_op_parallelism, config.intra_op_parallelism,
            training=config.mode == "train", xla=config.xla, gpu_memory_growth=self.plan.gpu_memory_growth,
            recurrent=config.model_type in RECURRENT_MODELS,
        )
        optimizers.set_row_sum(self.plan.row_sum)
        self.choice = distribute.choose_strategy(config.strategy, num_gpus, self.cluster, config.cpu_replicas)
        self.strategy = distribute.create_strategy(self.choice, config.collective_timeout_s)
        self.is_chief = self.cluster.is_chief
        self.policy, loss_scaling = resolve_precision(config.amp, config.amp_dtype, num_gpus)
        keras.utils.set_random_seed(config.seed)
        if config.deterministic:
            tf.config.experimental.enable_op_determinism()
        replicas = self.strategy.num_replicas_in_sync
        config.validate_for(spec, replicas)
        # The resolved thread count (0: TensorFlow's default, one per core), recorded in config.json.
        self.intra_op_threads = tf.config.threading.get_intra_op_parallelism_threads()
        self.microbatches = config.microbatches or min(config.global_batch_size // replicas, distribute.auto_microbatches(
            num_gpus, distribute.usable_cores(), config.mode == "train", self.intra_op_threads, config.xla,
            config.model_type in RECURRENT_MODELS))
        self.task = CtrTask(config, spec, replicas, loss_scaling, self.microbatches, self.plan)
        self.log.say(distribute.describe(self.choice, self.strategy) + f", precision {self.policy}"
                     + (", XLA" if config.xla else ""))
        self.log.say(f"devices decided: {self.plan.describe()} (docs/gpu.md)")

        with global_dtype_policy(self.policy), self.strategy.scope():
            self.model = self.task.build_model()
            self.optimizer = self.task.create_optimizer(self._planned_steps())
            aggregation = tf.VariableAggregation.ONLY_FIRST_REPLICA
            self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, aggregation=aggregation)
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, aggregation=aggregation)
            self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, aggregation=aggregation)
        self.checkpoints = TrainingCheckpoints(
            self.model, self.optimizer,
            {"global_step": self.global_step, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch},
            config.save_checkpoint_path, config.keep_checkpoints, self.is_chief, self.cluster.task_index)
        self.summaries = Summaries(config.tensorboard_path, enabled=self.is_chief)
        self.profiler = Profiler(config.tensorboard_path, config.profile_steps, self.is_chief, log.say)
        self.samples = {m: self.task.sample_count(m) for m in ("train", "test")}
        self.evaluator = Evaluator(self.strategy, self.task, lambda mapping, forever: self.datasets(mapping, 0, forever=forever),
                                   self.samples)
        self._train_loop_fn = None
        self.stop_request = StopRequest(log.say)

    def _planned_steps(self) -> int | None:
        """Training steps this run plans (None when it does not train or the count is unknown)."""
        c = self.config
        if c.mode != "train":
            return None
        if c.benchmark:
            return c.benchmark_warmup_steps + c.benchmark_steps
        declared = self.task.declared_count("train")
        if declared is None:
            return None
        return steps_per_epoch(c, declared) * c.epochs

    def datasets(self, mapping: str, epoch: int, skip_steps: int = 0, forever: bool = False):
        """The distributed dataset of ``mapping`` in ``epoch``, without its first ``skip_steps`` global steps."""
        local_replicas = self.strategy.num_replicas_in_sync // max(1, self.cluster.num_workers)

        def dataset_fn(context: tf.distribute.InputContext):
            ds = self.task.build_inputs(mapping, context, epoch, forever)
            # Every global step consumes one per-replica batch per local replica of this worker.
            return ds.skip(skip_steps * max(1, local_replicas)) if skip_steps else ds

        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def _make_train_loop(self):
        strategy, task = self.strategy, self.task
        multi_worker = self.cluster.num_workers > 1

        @tf.function
        def train_loop(iterator, steps, stop_requested):
            loss_sum = tf.constant(0.0, tf.float32)
            done = tf.constant(0, tf.int64)
            samples = tf.constant(0, tf.int64)
            for _ in tf.range(steps):
                optional = iterator.get_next_as_optional()
                if not optional.has_value():
                    break
                loss, step_samples = strategy.run(task.train_step, args=(optional.get_value(),))
                loss_sum += strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
                # Every replica holds the same global count: take the first replica's.
                samples += tf.cast(strategy.experimental_local_results(step_samples)[0], tf.int64)
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
            return loss_sum, done, stop, samples

        return train_loop

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> str | None:
        path = self.checkpoints.save(int(self.global_step.numpy()))
        if path:
            self.checkpoints.write_signature(self.config.resume_signature(self.samples["train"]))
            self.log.record("checkpoint", path=path, step=int(self.global_step.numpy()), epoch=int(self.epoch.numpy()))
        return path

    def restore(self) -> str | None:
        """Resumes from --save_checkpoint_path, else loads --load_checkpoint_path (see TrainingCheckpoints)."""
        c = self.config
        path = self.checkpoints.restore_latest_or(c.load_checkpoint_path, self.model, c.model_type, c.mode == "train",
                                                  c.resume_signature(self.samples["train"]))
        if path is not None:
            step, epoch = int(self.global_step.numpy()), int(self.epoch.numpy())
            self.log.say(f"restored {path} (step {step}, epoch {epoch})")
            self.log.record("restore", path=path, step=step, epoch=epoch)
        return path

    # ------------------------------------------------------------------ loop pieces
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(self.config, self.samples["train"])

    def next_chunk(self, step: int) -> int:
        return next_chunk(self.config, step)

    def evaluate_and_log(self, epoch: int) -> dict:
        step = int(self.global_step.numpy())
        result = self.evaluator.evaluate("test")
        values = {"test_auc": result["auc"], "test_loss": result["loss"], "test_gauc": result["gauc"]}
        if self.config.evaluate_train:
            train = self.evaluator.evaluate("train")
            values.update(train_auc=train["auc"], train_eval_loss=train["loss"], train_gauc=train["gauc"])
        self.log.record("eval", step=step, epoch=epoch, samples=result["samples"], roc=result["roc"], **values)
        self.summaries.scalars("validation", step, {"auc": result["auc"], "loss": result["loss"], "gauc": result["gauc"]})
        self.summaries.curves(step, result["roc"], result["pr"])
        self.log.say(f"evaluation at step {step}: test AUC {result['auc']:.4f}, GAUC {result['gauc']:.4f}, "
                     f"log loss {result['loss']:.4f} over {result['samples']:,} samples ({result['seconds']:.1f}s)")
        return values

    def _log_progress(self, epoch: int, step: int, loss: float, steps: int, seconds: float, steps_per_epoch: int):
        c = self.config
        rate = steps * c.global_batch_size / max(seconds, 1e-9)
        in_epoch = int(self.step_in_epoch.numpy())
        eta = max(0, steps_per_epoch - in_epoch) * c.global_batch_size / max(rate, 1e-9)
        self.log.say(f"epoch {epoch + 1}/{c.epochs} step {in_epoch}/{steps_per_epoch} loss {loss:.4f} "
                     f"{rate:,.0f} samples/s ETA {format_duration(eta)}")
        scale = getattr(self.optimizer, "dynamic_scale", None)
        scale = float(scale.numpy()) if scale is not None else None
        lr = float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))
        self.log.record("step", step=step, epoch=epoch, train_loss=loss, samples_per_s=rate, lr=lr,
                        **({"loss_scale": scale} if scale is not None else {}))
        self.summaries.scalars("train", step, {"loss": loss, "samples_per_s": rate, "lr": lr, "loss_scale": scale})

    def _stop(self, step: int, epoch: int, epoch_done: bool, path: str | None = None):
        """Raises Interrupted for a requested stop, saving first within an epoch (at its end, ``path`` is
        the checkpoint just saved); a benchmark saves nothing."""
        if not epoch_done and not self.config.benchmark:
            path = self.save()
        self.log.record("interrupted", step=step, epoch=epoch, checkpoint=path)
        when = f"after epoch {epoch + 1}" if epoch_done else f"at step {step}"
        if not self.config.save_checkpoint_path or self.config.benchmark:
            raise Interrupted(f"stopped {when} on request; nothing was saved (no --save_checkpoint_path), so running "
                              f"the command again starts over", exit_code=128 + (self.stop_request.signum or signal.SIGTERM))
        where = f"saved {path}" if path else "the chief saved the checkpoint"
        raise Interrupted(f"stopped {when} on request ({where}); run the same command again to resume")

    # ------------------------------------------------------------------ the loop
    def train(self) -> dict:
        with self.stop_request:
            return self._train()

    def _train(self) -> dict:
        c = self.config
        if self._train_loop_fn is None:
            self._train_loop_fn = self._make_train_loop()
        if not c.benchmark:
            self.restore()
        total = c.benchmark_warmup_steps + c.benchmark_steps
        steps_per_epoch = total if c.benchmark else self.steps_per_epoch()
        start_epoch = int(self.epoch.numpy())
        last_epoch = start_epoch + 1 if c.benchmark else c.epochs
        if start_epoch >= last_epoch:
            self.log.say(f"the checkpoint has already finished {start_epoch} epoch(s); nothing to train")
        if not c.benchmark:
            self.log.record("start", steps_per_epoch=steps_per_epoch, epochs=c.epochs, start_epoch=start_epoch,
                            train_samples=self.samples["train"], test_samples=self.samples["test"],
                            replicas=self.strategy.num_replicas_in_sync, precision=self.policy,
                            cached_records=self.task.input_options("train", 0).cache)
        latencies: list[float] = []
        first_loop_seconds, run_started, last_loss, last_eval = None, time.perf_counter(), float("nan"), {}
        for epoch in range(start_epoch, last_epoch):
            skipped = int(self.step_in_epoch.numpy())
            iterator = iter(self.datasets("train", epoch, skip_steps=skipped))
            epoch_samples = 0
            window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
            epoch_started, stop_now = time.perf_counter(), False
            while True:
                step = int(self.global_step.numpy())
                self.profiler.at_step(step)
                chunk = self.next_chunk(step)
                started = time.perf_counter()
                loss_sum, done, stop, samples = self._train_loop_fn(
                    iterator, tf.constant(chunk, tf.int64), tf.constant(bool(self.stop_request.signum)))
                done, loss_sum = int(done.numpy()), float(loss_sum.numpy())
                epoch_samples += int(samples.numpy())
                elapsed = time.perf_counter() - started
                if done:
                    # Untimed: the warm-up steps of a benchmark, or the first call (tracing, compilation).
                    if step >= c.benchmark_warmup_steps if c.benchmark else first_loop_seconds is not None:
                        latencies.extend([elapsed / done] * done)
                    elif not c.benchmark:
                        first_loop_seconds = elapsed
                    window_loss, window_steps, step = window_loss + loss_sum, window_steps + done, step + done
                    if not math.isfinite(loss_sum):
                        raise UserError(f"the training loss became {loss_sum} at step {step}; lower --lr, or use "
                                        f"--amp_dtype bfloat16 if float16 overflows")
                epoch_done = done < chunk or (c.benchmark and step >= total)
                stop_now = bool(stop.numpy())
                if not c.benchmark:
                    if window_steps and (step % c.log_every_steps == 0 or epoch_done):
                        last_loss = window_loss / window_steps
                        self._log_progress(epoch, step, last_loss, window_steps, time.perf_counter() - window_start,
                                           steps_per_epoch)
                        window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
                    if done and c.eval_every_steps and step % c.eval_every_steps == 0:
                        last_eval = self.evaluate_and_log(epoch)
                    if done and c.checkpoint_every_steps and step % c.checkpoint_every_steps == 0:
                        self.save()
                if stop_now and not epoch_done:
                    self._stop(step, epoch, epoch_done=False)
                if epoch_done:
                    break
            self.profiler.stop()
            if c.benchmark:
                break
            check_epoch_samples(c, self.samples["train"], self.task.declared_count("train") is not None, epoch,
                                epoch_samples, skipped)
            self.epoch.assign(epoch + 1)
            self.step_in_epoch.assign(0)
            self.log.record("epoch", epoch=epoch, step=int(self.global_step.numpy()), train_loss=last_loss,
                            seconds=time.perf_counter() - epoch_started)
            # Save before evaluating: an evaluation that fails must not cost the epoch.
            path = self.save()
            last_eval = self.evaluate_and_log(epoch)
            if stop_now and epoch + 1 < c.epochs:
                self._stop(int(self.global_step.numpy()), epoch, epoch_done=True, path=path)
        throughput = c.global_batch_size * len(latencies) / sum(latencies) if latencies else None
        if c.benchmark:
            return {"throughput": throughput, "benchmark_steps": len(latencies),
                    "warmup_steps": c.benchmark_warmup_steps, **percentiles(latencies)}
        return {"train_loss": last_loss, **{k: last_eval.get(k) for k in ("test_auc", "test_loss", "test_gauc")},
                "throughput": throughput, "time_to_train": time.perf_counter() - run_started,
                "first_loop_seconds": first_loop_seconds, **percentiles(latencies)}
