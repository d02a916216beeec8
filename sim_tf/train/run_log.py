"""What a run leaves behind: the JSON-lines log (RESULTS_DIR/log.json), written and read here, and its
TensorBoard summaries.

Only the chief writes. :func:`read_log` does not import TensorFlow, so `sim-tf report` and the
benchmark read logs without it.
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable

import numpy as np

from sim_tf.errors import UserError


class RunLog:
    """JSON-lines log (chief only) plus progress lines on stdout."""

    def __init__(self, path: str | None, echo: Callable[[str], None] | None = print):
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


def read_log(path: str, skip_bad_lines: bool = False) -> list[dict]:
    """The log's records in order. A line that is not JSON is an error, or, with ``skip_bad_lines``
    (a run killed mid-write), left out."""
    if not os.path.exists(path):
        raise UserError(f"{path!r} does not exist: pass the --results_dir of a training run")
    records = []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    if not skip_bad_lines:
                        raise UserError(f"{path}, line {number}: not a JSON record") from None
    return records


class Summaries:
    """TensorBoard writers ("train", "validation") under ``logdir``; a no-op where ``enabled`` is False."""

    def __init__(self, logdir: str, enabled: bool):
        self.logdir = logdir
        self.enabled = enabled
        self._writers: dict = {}

    def _writer(self, name: str):
        import tensorflow as tf

        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(os.path.join(self.logdir, name))
        return self._writers[name]

    def scalars(self, name: str, step: int, values: dict[str, float | None]):
        if not self.enabled:
            return
        import tensorflow as tf

        writer = self._writer(name)
        with writer.as_default(step=step):
            for key, value in values.items():
                if value is not None and np.isfinite(value):
                    tf.summary.scalar(key, value)
        writer.flush()

    def curves(self, step: int, roc, pr):
        """The ROC and precision-recall curves of an evaluation, as images."""
        if not self.enabled:
            return
        import tensorflow as tf

        from sim_tf.train.metrics import curve_image

        writer = self._writer("validation")
        with writer.as_default(step=step):
            tf.summary.image("roc_curve", curve_image(*roc, diagonal=True)[None],
                             description="ROC curve on the test split (x: false positive rate, y: true positive rate)")
            tf.summary.image("pr_curve", curve_image(*pr)[None],
                             description="precision (y) against recall (x) on the test split")
        writer.flush()

    def close(self):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


class Profiler:
    """Runs the TensorBoard profiler over the steps [start, end) of ``window`` (None: never)."""

    def __init__(self, logdir: str, window: tuple[int, int] | None, enabled: bool, say: Callable[[str], None]):
        self.logdir = logdir
        self.window = window if enabled else None
        self.say = say
        self.active = False

    def at_step(self, step: int):
        """Called before each inner loop with the step it starts at."""
        if self.window is None:
            return
        start, end = self.window
        if not self.active and start <= step < end:
            import tensorflow as tf

            tf.profiler.experimental.start(self.logdir)
            self.active = True
            self.say(f"profiling steps {start}..{end} into {self.logdir}")
        elif self.active and step >= end:
            self.stop()

    def stop(self):
        if self.active:
            import tensorflow as tf

            tf.profiler.experimental.stop()
            self.active = False
