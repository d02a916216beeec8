"""The top TensorFlow ops of a `--profile_steps` trace, read without the TensorBoard profile plugin.

The profiler writes ``<logdir>/plugins/profile/<run>/<host>.xplane.pb``. Every op the executor ran is
an event named ``"<op name>:<op type>"`` on a host thread; this sums their durations by op type and by
op name. Durations are wall time per op summed over threads: on a busy 2-core machine two ops running
at once both count, so shares are of "op time", not of elapsed time.

On a GPU the trace also has device planes (``/device:GPU:N``), whose events are the kernels the GPU ran.
Those are summed apart, by kernel name: host op time (which includes the time an op spends launching its
kernels) and device kernel time overlap, so adding them would count a GPU op twice.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import os

from sim_tf.errors import UserError


@dataclasses.dataclass
class OpTimes:
    trace: str
    by_type: collections.Counter
    by_name: collections.Counter
    total_ms: float
    # Device planes (GPUs): kernel time by kernel name, and in all; empty on CPU-only traces.
    device_kernels: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    device_ms: float = 0.0
    device_counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # events by name


def find_trace(logdir: str) -> str:
    """The newest ``*.xplane.pb`` under ``logdir`` (a TensorBoard folder or a profile run folder)."""
    traces = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    if not traces:
        raise UserError(
            f"no profiler trace (*.xplane.pb) under {logdir!r}: run train, evaluate or inference with --profile_steps "
            f"START,END and pass the run's TensorBoard folder (--tensorboard_dir, default RESULTS_DIR/tensorboard)"
        )
    return max(traces, key=os.path.getmtime)


def op_times(trace: str) -> OpTimes:
    try:
        from tensorflow.tsl.profiler.protobuf import xplane_pb2
    except ImportError as e:  # the module moved between TensorFlow releases
        raise UserError(f"this TensorFlow build does not expose the profiler's XPlane format ({e}); open the "
                        f"trace in TensorBoard's Profile tab instead (pip install -e '.[profile]')") from None
    space = xplane_pb2.XSpace()
    with open(trace, "rb") as f:
        space.ParseFromString(f.read())
    by_type: collections.Counter = collections.Counter()
    by_name: collections.Counter = collections.Counter()
    kernels: collections.Counter = collections.Counter()
    counts: collections.Counter = collections.Counter()
    for plane in space.planes:
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        if is_device_plane(plane.name):
            for line in plane.lines:
                for event in line.events:
                    kernels[names.get(event.metadata_id, "?")] += event.duration_ps / 1e9
                    counts[names.get(event.metadata_id, "?")] += 1
            continue
        for line in plane.lines:
            for event in line.events:
                name = names.get(event.metadata_id, "")
                op, sep, kind = name.rpartition(":")
                # TF ops only: "scope/op:Type"; skips executor and function-call frames, which nest ops.
                # ("ExecutorState::Process"-style C++ frames also contain a colon.)
                if not sep or not op or not kind or " " in kind or "::" in name or name.startswith("__inference"):
                    continue
                ms = event.duration_ps / 1e9
                by_type[kind] += ms
                by_name[name] += ms
    if not by_type:
        raise UserError(f"the trace {trace!r} holds no TensorFlow op events")
    return OpTimes(trace, by_type, by_name, sum(by_type.values()), kernels, sum(kernels.values()), counts)


def is_device_plane(name: str) -> bool:
    """Whether an XPlane holds an accelerator's events ("/device:GPU:0") rather than the host's ("/host:CPU")."""
    return name.startswith("/device:") and not name.startswith("/device:CPU")


def format_top(times: OpTimes, top: int = 20) -> str:
    lines = [f"trace: {times.trace}", f"op time in all: {times.total_ms:,.1f} ms (summed over threads)", "",
             f"top {top} op types:"]
    for kind, ms in times.by_type.most_common(top):
        lines.append(f"  {ms:10,.1f} ms  {100 * ms / times.total_ms:5.1f}%  {kind}")
    lines += ["", f"top {top} ops:"]
    for name, ms in times.by_name.most_common(top):
        lines.append(f"  {ms:10,.1f} ms  {100 * ms / times.total_ms:5.1f}%  {name}")
    if times.device_ms:
        lines += ["", f"device kernel time in all: {times.device_ms:,.1f} ms (GPU kernels; not part of the op "
                      f"time above)", f"top {top} kernels:"]
        for name, ms in times.device_kernels.most_common(top):
            lines.append(f"  {ms:10,.1f} ms  {100 * ms / times.device_ms:5.1f}%  {name}")
    return "\n".join(lines)
