"""Prediction over a whole split under the strategy: evaluation metrics and inference speed."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import tensorflow as tf

from sim_tf.data.dataset import PADDING_LABEL, lost_samples
from sim_tf.errors import UserError
from sim_tf.train.measure import percentiles


class Evaluator:
    """Runs the task's prediction step over distributed batches.

    ``datasets(mapping, forever)`` returns the distributed dataset of ``mapping`` (repeated without end
    when ``forever``).
    """

    def __init__(self, strategy, task, datasets: Callable, expected_samples: dict[str, int] | None = None):
        self.strategy = strategy
        self.task = task
        self.datasets = datasets
        self.expected_samples = expected_samples or {}
        self._predict_fn = None

    def _compiled_predict(self):
        strategy, task = self.strategy, self.task

        @tf.function
        def predict(batch):
            per_replica = strategy.run(task.predict_step, args=(batch,))
            return tuple(strategy.gather(value, axis=0) for value in per_replica)

        return predict

    def predict(self, mapping: str = "test", timed: bool = False, batches: int | None = None, profiler=None):
        """Runs the model over a whole mapping, or over ``batches`` global batches of it repeated.

        Returns (probabilities, labels, users, [(seconds, samples) per global batch] when ``timed``).
        ``profiler`` (run_log.Profiler) is told each global batch's index before it runs.
        """
        if self._predict_fn is None:
            self._predict_fn = self._compiled_predict()
        iterator = iter(self.datasets(mapping, forever=batches is not None))
        probabilities, labels, users, latencies = [], [], [], []
        while batches is None or len(labels) < batches:
            if profiler is not None:
                profiler.at_step(len(labels))
            started = time.perf_counter()
            optional = iterator.get_next_as_optional()
            if not bool(optional.has_value()):
                break
            p, y, u = (t.numpy() for t in self._predict_fn(optional.get_value()))
            real = y != PADDING_LABEL  # the padding of a last batch under XLA (InputOptions.pad_final_batch)
            if not real.all():
                p, y, u = p[real], y[real], u[real]
            probabilities.append(p)
            labels.append(y)
            users.append(u)
            if timed:
                latencies.append((time.perf_counter() - started, int(y.shape[0])))
        if not labels:
            raise UserError(f"the {mapping!r} mapping produced no samples")
        read, expected = sum(len(y) for y in labels), self.expected_samples.get(mapping)
        if batches is None and expected is not None and read != expected:
            raise lost_samples(f"the {mapping} split delivered {read:,} samples but holds {expected:,}",
                               "no metrics are reported on part of a split")
        return np.concatenate(probabilities), np.concatenate(labels), np.concatenate(users), latencies

    def evaluate(self, mapping: str = "test", profiler=None) -> dict:
        """AUC, GAUC, log loss, ROC and PR curves of ``mapping``, with the sample count and seconds taken;
        ``profiler`` as in :meth:`predict`."""
        started = time.perf_counter()
        probabilities, labels, users, _ = self.predict(mapping, profiler=profiler)
        result = self.task.evaluate_predictions(labels, probabilities, users, curves=True)
        result["seconds"] = time.perf_counter() - started
        return result

    def inference(self, benchmark: bool, warmup_batches: int, batches: int, profiler=None) -> dict:
        """Predicts the test split once and reports its metrics and speed (the first batch, which pays for
        tracing, is not timed). With ``benchmark`` it instead predicts ``warmup_batches + batches`` batches of
        the test split repeated, and times the last ``batches`` only. ``profiler`` traces the batches of its
        window (batches counted from 0, warm-up included).
        """
        started = time.perf_counter()
        probabilities, labels, users, timings = self.predict(
            "test", timed=True, batches=warmup_batches + batches if benchmark else None, profiler=profiler)
        total = time.perf_counter() - started
        skip = min(warmup_batches if benchmark else 1, len(timings) - 1)
        measured = timings[skip:]
        seconds = sum(t for t, _ in measured)
        summary = {
            "samples": int(labels.size),
            "throughput": sum(n for _, n in measured) / seconds if seconds > 0 else None,
            "measured_batches": len(measured),
            "wall_seconds": total,
            **percentiles([t for t, _ in measured]),
        }
        if not benchmark:
            result = self.task.evaluate_predictions(labels, probabilities, users)
            summary = {"test_auc": result["auc"], "test_loss": result["loss"], "test_gauc": result["gauc"], **summary}
        return summary
