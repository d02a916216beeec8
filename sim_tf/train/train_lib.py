"""One run of the trainer, as Model Garden's train_lib: config -> trainer -> the mode's result.

Writes config.json (with what the run resolved to), turns TensorFlow faults that a user can cause into
one message, and records the summary in the run log.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import tensorflow as tf

from sim_tf.data import feature_spec as fs
from sim_tf.data.atomic import ensure_writable_folder
from sim_tf.data import dataset as data
from sim_tf.errors import UserError, brief
from sim_tf.train.config import TrainConfig
from sim_tf.train.measure import gpu_peak_bytes, peak_rss_bytes, weights_digest
from sim_tf.train.run_log import RunLog
from sim_tf.train.trainer import Trainer

SUMMARY_FIELDS = [
    ("test_auc", "test AUC", "{:.4f}"),
    ("test_gauc", "test GAUC", "{:.4f}"),
    ("test_loss", "test log loss", "{:.4f}"),
    ("train_loss", "final train loss", "{:.4f}"),
    ("throughput", "throughput (samples/s)", "{:,.0f}"),
    ("time_to_train", "time to train (s)", "{:.1f}"),
    ("latency_mean_ms", "step latency mean (ms)", "{:.1f}"),
    ("latency_p99_ms", "step latency p99 (ms)", "{:.1f}"),
    ("peak_rss_bytes", "peak host memory (GiB)", "{:.2f}"),
    ("gpu_peak_bytes", "peak GPU memory (GiB)", "{:.2f}"),
]
_GIB_FIELDS = ("peak_rss_bytes", "gpu_peak_bytes")


def format_summary(summary: dict) -> str:
    return "\n".join(f"  {label:<24} {fmt.format(summary[key] / 2**30 if key in _GIB_FIELDS else summary[key])}"
                     for key, label, fmt in SUMMARY_FIELDS if summary.get(key) is not None)


def create_trainer(config: TrainConfig, echo: Callable[[str], None] | None = print) -> Trainer:
    """The trainer for ``config``; its log goes to RESULTS_DIR/LOG_FILENAME (chief only) and ``echo``."""
    from sim_tf import distribute

    spec = fs.FeatureSpec.from_yaml(os.path.join(config.dataset_dir, config.feature_spec))
    is_chief = distribute.read_tf_config().is_chief
    ensure_writable_folder(config.results_dir, "--results_dir")
    log = os.path.join(config.results_dir, config.log_filename)
    resuming = bool(config.save_checkpoint_path) and tf.train.latest_checkpoint(config.save_checkpoint_path)
    if is_chief and config.mode == "train" and os.path.exists(log) and os.path.getsize(log) and not resuming:
        raise UserError(f"--results_dir {config.results_dir!r} already holds another run's log ({log}); its log, "
                        f"config.json and TensorBoard events would mix with this one's: pass a new --results_dir "
                        f"(a run resumes into its own folder from --save_checkpoint_path)")
    if is_chief and config.mode == "train":
        ensure_writable_folder(config.tensorboard_path, "--tensorboard_dir" if config.tensorboard_dir else
                               "--results_dir (its tensorboard folder)")
        ensure_writable_folder(config.save_checkpoint_path, "--save_checkpoint_path")
    return Trainer(config, spec, RunLog(log if is_chief else None, echo if is_chief else None))


def run_mode(trainer: Trainer) -> dict:
    """Trains, evaluates or infers as ``config.mode`` says; returns the summary (also logged)."""
    c = trainer.config
    if trainer.is_chief:
        c.write(os.path.join(c.results_dir, "config.json"),
                {"resolved": {"strategy": dataclasses.asdict(trainer.choice), "precision": trainer.policy,
                              "devices": dataclasses.asdict(trainer.plan),
                              "replicas": trainer.strategy.num_replicas_in_sync,
                              "intra_op_threads": trainer.intra_op_threads, "microbatches": trainer.microbatches}})
    try:
        if c.mode == "train":
            summary = trainer.train()
        else:
            if trainer.restore() is None and not c.random_init:
                raise UserError(f"--mode {c.mode} needs a trained model: pass --load_checkpoint_path (a checkpoint or "
                                f"a folder of them), or --random_init to measure speed with random weights")
            if c.mode == "inference":
                summary = trainer.evaluator.inference(c.benchmark, c.benchmark_warmup_steps, c.benchmark_steps,
                                                     profiler=trainer.profiler)
            else:
                result = trainer.evaluator.evaluate("test", profiler=trainer.profiler)
                summary = {"test_auc": result["auc"], "test_loss": result["loss"], "test_gauc": result["gauc"],
                           "samples": result["samples"]}
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
        explained = data.explain_pipeline_error(e, trainer.task.spec)
        if explained is None:
            raise
        raise explained from None
    except (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.DeadlineExceededError,
            tf.errors.CancelledError, tf.errors.InternalError) as e:
        if trainer.cluster.num_workers <= 1:
            raise
        lines = [line.strip() for line in (e.message or "").splitlines() if line.strip()]
        raise UserError(
            f"worker {trainer.cluster.task_index} lost contact with the other workers ({type(e).__name__}: "
            f"{brief(' '.join(lines[:2]))}); the job stops here: relaunch it to resume from the last checkpoint"
        ) from None
    finally:
        trainer.profiler.stop()
    summary = {"mode": c.mode, "model_type": c.model_type, "benchmark": c.benchmark, **summary,
               "peak_rss_bytes": peak_rss_bytes()}
    gpu_peak = gpu_peak_bytes(trainer.choice.num_gpus)
    if gpu_peak is not None:
        summary["gpu_peak_bytes"] = gpu_peak
    if c.mode == "train":
        summary["weights_digest"] = weights_digest(trainer.model.variables)
        if trainer.task.loss_scaling:
            # A scale below where it started at the end of a run means steps overflowed and it never grew back.
            summary["loss_scale_initial"] = float(trainer.optimizer.initial_scale)
            summary["loss_scale_final"] = float(trainer.optimizer.dynamic_scale.numpy())
            summary["loss_scale_growth_steps"] = int(trainer.optimizer.dynamic_growth_steps)
        if trainer.cluster.num_workers > 1:
            print(f"worker {trainer.cluster.task_index}: model weights digest {summary['weights_digest']}", flush=True)
    trainer.log.record("summary", **summary)
    trainer.summaries.close()
    trainer.log.close()
    return summary


def run(config: TrainConfig) -> dict:
    """Runs ``config`` and prints the summary block on the chief."""
    trainer = create_trainer(config)
    summary = run_mode(trainer)
    if trainer.is_chief:
        print(f"{config.mode} finished ({config.model_type}{', benchmark' if config.benchmark else ''}):")
        print(format_summary(summary))
        print(f"  results in {config.results_dir} (log {config.log_filename}, config.json); "
              f"TensorBoard: tensorboard --logdir {config.tensorboard_path}")
    return summary
