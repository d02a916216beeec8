"""Reading the trainer's JSON-lines log (RESULTS_DIR/log.json), without importing TensorFlow."""

from __future__ import annotations

import json
import os

from sim_tf.errors import UserError


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
