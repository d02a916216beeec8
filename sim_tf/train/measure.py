"""Measurements a run reports: latency percentiles, peak memory and a digest of the weights."""

from __future__ import annotations

import hashlib
import sys

import numpy as np


def percentiles(latencies_s: list[float]) -> dict[str, float]:
    """Mean and p50/p90/p95/p99 of per-step (or per-batch) latencies, in milliseconds."""
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


def gpu_peak_bytes(num_gpus: int, memory_info=None) -> int | None:
    """The largest peak memory TensorFlow's allocator reached on any of this process's GPUs (None
    without GPUs). ``memory_info`` replaces tf.config.experimental.get_memory_info (tests)."""
    if num_gpus <= 0:
        return None
    if memory_info is None:
        import tensorflow as tf

        memory_info = tf.config.experimental.get_memory_info
    peaks = []
    for index in range(num_gpus):
        try:
            peaks.append(int(memory_info(f"GPU:{index}")["peak"]))
        except (ValueError, KeyError):
            pass  # a device TensorFlow does not track
    return max(peaks) if peaks else None


def weights_digest(variables) -> str:
    """A short hash of every weight: equal on all workers of a synchronous job, and across runs that
    compute the same thing."""
    digest = hashlib.sha256()
    for variable in variables:
        digest.update(np.ascontiguousarray(np.asarray(variable)).tobytes())
    return digest.hexdigest()[:16]
