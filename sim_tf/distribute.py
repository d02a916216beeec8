"""The one place that reads TF_CONFIG, sets up devices and creates tf.distribute strategies.

Choosing is a pure function (:func:`choose_strategy`) so the rules can be tested on a machine without
GPUs or a cluster; :func:`create_strategy` turns a choice into a strategy.

* ``default``: TensorFlow's default strategy (one device, no replication).
* ``one_device``: OneDeviceStrategy on the first GPU, else the CPU.
* ``mirrored``: MirroredStrategy over the local GPUs (NCCL all-reduce), or over ``--cpu_replicas``
  logical CPU devices (NCCL has no CPU kernel, so gradients are reduced on one device).
* ``multi_worker``: MultiWorkerMirroredStrategy from TF_CONFIG, NCCL collectives on GPU and ring
  collectives on CPU, with a collective timeout so a hung peer ends the job instead of blocking it.
* ``auto``: multi_worker when TF_CONFIG names more than one worker, mirrored when more than one GPU
  (or more than one CPU replica) is present, one_device on one GPU, else default.

:func:`plan_devices` makes the other choices that depend on the devices found (XLA, steps per loop,
fixed shapes, the kernel that sums embedding-gradient rows, input readers and order, GPU memory growth),
also as a pure function of the device count and flags.
"""

from __future__ import annotations

import dataclasses
import json
import os

from sim_tf.errors import UserError

STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker")


@dataclasses.dataclass(frozen=True)
class ClusterInfo:
    """What TF_CONFIG says about the cluster (one worker and index 0 when it is unset)."""

    num_workers: int = 1
    task_type: str = "worker"
    task_index: int = 0

    @property
    def is_chief(self) -> bool:
        # With only workers listed, worker 0 is the chief; an explicit "chief" task is also chief.
        return self.task_type == "chief" or (self.task_type == "worker" and self.task_index == 0)


@dataclasses.dataclass(frozen=True)
class StrategyChoice:
    kind: str  # default | one_device | mirrored | multi_worker
    collective: str  # none | nccl | ring | reduce_to_one_device
    num_gpus: int
    cpu_replicas: int
    cluster: ClusterInfo


def read_tf_config(environ=None) -> ClusterInfo:
    """Parses TF_CONFIG; a malformed value is a UserError naming what is wrong."""
    environ = os.environ if environ is None else environ
    raw = environ.get("TF_CONFIG", "").strip()
    if not raw:
        return ClusterInfo()
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as e:
        raise UserError(f"TF_CONFIG is not valid JSON ({e.msg} at position {e.pos})") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict):
        raise UserError('TF_CONFIG must be {"cluster": {"worker": ["host:port", ...]}, "task": {...}}')
    cluster = config["cluster"]
    workers = sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))
    if workers == 0:
        raise UserError("TF_CONFIG's cluster lists no chief or worker addresses")
    task = config.get("task") or {}
    task_type = task.get("type", "worker")
    task_index = task.get("index", 0)
    if task_type not in cluster:
        raise UserError(f"TF_CONFIG's task type {task_type!r} is not a job in its cluster {sorted(cluster)}")
    if not isinstance(task_index, int) or not 0 <= task_index < len(cluster[task_type]):
        raise UserError(
            f"TF_CONFIG's task index {task_index!r} is out of range for the {len(cluster[task_type])} "
            f"{task_type!r} address(es)"
        )
    return ClusterInfo(num_workers=workers, task_type=task_type, task_index=task_index)


def choose_strategy(requested: str, num_gpus: int, cluster: ClusterInfo, cpu_replicas: int = 1) -> StrategyChoice:
    """Decides the strategy and its collective implementation; no TensorFlow calls. ``requested`` and
    ``cpu_replicas`` are validated by TrainConfig; what is checked here depends on the devices and cluster."""
    if cpu_replicas > 1 and num_gpus > 0:
        raise UserError("--cpu_replicas splits the CPU for testing; it cannot be combined with GPUs")
    kind = requested
    if kind == "auto":
        if cluster.num_workers > 1:
            kind = "multi_worker"
        elif num_gpus > 1 or cpu_replicas > 1:
            kind = "mirrored"
        elif num_gpus == 1:
            # The default strategy does not prefetch to the device: every step would copy its ids from
            # pageable host memory inside the step. OneDeviceStrategy prefetches the next batch to the GPU.
            kind = "one_device"
        else:
            kind = "default"
    if kind != "multi_worker" and cluster.num_workers > 1:
        raise UserError(
            f"TF_CONFIG names {cluster.num_workers} workers but --strategy={requested} is single-process; "
            f"use --strategy=multi_worker (or auto), or unset TF_CONFIG"
        )
    if kind in ("default", "one_device") and cpu_replicas > 1:
        raise UserError(f"--cpu_replicas={cpu_replicas} needs --strategy=mirrored (or auto)")
    if kind == "multi_worker" and cpu_replicas > 1:
        raise UserError("--cpu_replicas is for single-process mirrored runs; multi_worker uses one CPU device per worker")
    if kind == "multi_worker":
        collective = "nccl" if num_gpus > 0 else "ring"
    elif kind == "mirrored":
        collective = "nccl" if num_gpus > 1 else "reduce_to_one_device"
    else:
        collective = "none"
    return StrategyChoice(kind, collective, num_gpus, cpu_replicas, cluster)


# Steps per tf.function call on GPUs when --steps_per_loop is 0: each call ends in a few host syncs
# (loss, step counters), during which a GPU that finishes a step in a few milliseconds would idle.
GPU_STEPS_PER_LOOP = 50
# Input readers (files read in parallel) when --num_parallel_reads is 0: at least 4, one per core up to 32.
MIN_READS, MAX_READS = 4, 32
ROW_SUM_KERNELS = ("sparse_matmul", "segment_sum")


@dataclasses.dataclass(frozen=True)
class DevicePlan:
    """What a run does differently because of the devices it found (see :func:`plan_devices`)."""

    xla: bool  # compile the steps with XLA
    steps_per_loop: int  # training steps per tf.function call
    drop_remainder: bool  # training drops its last partial batch
    pad_last_eval_batch: bool  # evaluation pads its last batch to full size with zero-weight samples
    row_sum: str  # kernel that sums embedding-gradient rows: ROW_SUM_KERNELS
    num_parallel_reads: int  # files read in parallel per input pipeline
    deterministic_input: bool  # tf.data keeps the element order (else the fastest element goes first)
    gpu_memory_growth: bool  # allocate GPU memory as needed instead of all at start
    # Sparse gradients cross replicas compacted (small tables dense, duplicate rows summed): GPUs only
    compact_sparse_exchange: bool = False

    def describe(self) -> str:
        return (f"xla {'on' if self.xla else 'off'}, {self.steps_per_loop} step(s) per loop, "
                f"{self.num_parallel_reads} reader(s), gradient rows summed by {self.row_sum}"
                + (", fixed batch shapes" if self.pad_last_eval_batch else ""))


def plan_devices(num_gpus: int, cores: int, *, xla: bool | None = None, steps_per_loop: int = 0,
                 drop_remainder: bool = False, deterministic: bool = False, num_parallel_reads: int = 0,
                 gpu_memory_growth: bool | None = None) -> DevicePlan:
    """The device-dependent choices of a run, from the GPU count, the usable cores and the flags (None or
    0 meaning "choose"); no TensorFlow calls, so every rule is tested with simulated device counts.

    * XLA: on with GPUs, off on CPUs. On a GPU the unrolled GRU/AUGRU is ~1,000 small kernels a step,
      launched one by one from the host; XLA fuses them. On a CPU XLA slowed SIM and DIEN training
      (docs/performance.md), so it stays opt-in there.
    * Under XLA every batch has one shape, or XLA compiles the step again for each new one: training
      drops its last partial batch and evaluation pads its last batch with zero-weight samples.
    * Steps per loop: GPU_STEPS_PER_LOOP on GPUs, 1 on CPUs (a CPU step is long enough that the host's
      syncs between calls cost nothing, and a loss per step keeps progress and faults prompt).
    * Gradient rows (embedding tables' IndexedSlices, densified or summed per row): on CPUs a sparse
      0/1 matrix times the rows, which is multi-threaded and bit-identical to a segment sum; on GPUs
      ``unsorted_segment_sum``, which has a deterministic GPU kernel (the sparse matmul has none, so it
      fails under --deterministic) and needs no [N, 2] int64 index matrix.
    * Readers: one per core, at least MIN_READS, at most MAX_READS. Input order: kept on CPU hosts,
      whose steps are compute-bound (so keeping it is free and a seed reproduces a run); on GPU hosts,
      where the input pipeline sets the pace, tf.data may hand out whichever batch is ready first unless
      --deterministic is given.
    * GPU memory growth: off unless asked for (TensorFlow's default: one process per GPU takes its memory
      once, without fragmentation). `sim-tf launch local` turns it on when workers share a GPU.
    * Sparse gradients (lazy_adam, sgd) are compacted before they cross replicas on GPUs, where NCCL
      cannot all-reduce them (task.for_exchange). CPU replicas keep exchanging them as they come: that
      path reproduces a one-process run's SGD weights to 3e-8 after 256 steps, the compacted one only to
      5e-4 (docs/gpu.md, item 4).
    """
    use_xla = num_gpus > 0 if xla is None else bool(xla)
    loop = steps_per_loop or (GPU_STEPS_PER_LOOP if num_gpus > 0 else 1)
    reads = num_parallel_reads or max(MIN_READS, min(MAX_READS, cores))
    return DevicePlan(
        xla=use_xla,
        steps_per_loop=loop,
        drop_remainder=drop_remainder or use_xla,
        pad_last_eval_batch=use_xla,
        row_sum="segment_sum" if num_gpus > 0 else "sparse_matmul",
        num_parallel_reads=reads,
        deterministic_input=deterministic or num_gpus == 0,
        gpu_memory_growth=bool(gpu_memory_growth),
        compact_sparse_exchange=num_gpus > 0,
    )


def visible_gpus() -> int:
    """Physical GPUs TensorFlow sees (listing them does not start the runtime)."""
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which honours taskset and cpusets)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def auto_intra_op_threads(num_gpus: int, cores: int, training: bool, xla: bool = False,
                          recurrent: bool = False) -> int:
    """Intra-op threads when --intra_op_parallelism is 0: 1 for training, and for prediction with a
    recurrent model (SIM, DIEN), without XLA on a CPU-only host of at most two cores, else 0 (TensorFlow's
    default, one per core).

    On the 2-core machines we measure on, a training step's ops are small (a GRU step's matmul is
    [4096, 96] x [96, 96]) and its backward pass has enough independent ops to keep both inter-op threads
    busy, so one thread per op beats splitting each op over both cores: SIM trained 2-12% faster
    (BUILD_NOTES, Performance work). Prediction has no backward pass to overlap and ran 10-22% slower
    with one thread per op, unless its batch is split too (:func:`auto_microbatches`): for SIM and DIEN,
    whose GRU steps are a chain of small ops, two halves on one thread each beat one batch on two
    (docs/performance.md, issue 23); DIN's prediction has no such chain and keeps the default. XLA's
    compiled clusters parallelise inside themselves (SIM training with `--xla` fell from 8.4k to 4.9k
    samples/s), so they keep the default; so do larger hosts, which were not measured.
    """
    return 1 if (training or recurrent) and not xla and num_gpus == 0 and cores <= 2 else 0


def auto_microbatches(num_gpus: int, cores: int, training: bool, intra_op_threads: int, xla: bool = False,
                      recurrent: bool = False) -> int:
    """Parts per batch when --microbatches is 0: one per core when training (or predicting with a recurrent
    model) runs one thread per op on a CPU-only host without XLA (``intra_op_threads`` is the resolved
    count, 0 meaning TensorFlow's default), else 1.

    With one thread per op, the ops of one batch leave a core idle whenever the step is a chain of
    dependent ops (a GRU's time steps, the layers of an MLP). Two halves of the batch are two independent
    chains, so both cores stay busy; the half-size matmuls ([2048, 96] x [96, 96]) lose little per FLOP.
    Measured train step (same process, alternating, min of 15): DIEN 278 -> 263 ms, SIM 390 -> 364,
    DIN 72 -> 61 (BUILD_NOTES, Performance work). GPUs run a batch's ops in one stream and XLA fuses the
    step into its own parallel clusters, so neither is split.
    """
    if not (training or recurrent) or xla or num_gpus > 0 or intra_op_threads != 1:
        return 1
    return max(1, cores)


def configure_devices(cpu_replicas: int = 1, inter_op_threads: int = 0, intra_op_threads: int = 0,
                      training: bool = False, xla: bool = False, gpu_memory_growth: bool = False,
                      recurrent: bool = False) -> int:
    """Sets threading and logical CPU devices; must run before TensorFlow executes any op.

    Returns the number of visible GPUs. With ``gpu_memory_growth`` each GPU's memory is allocated as
    needed, so several processes can share a GPU. ``intra_op_threads`` 0 means
    :func:`auto_intra_op_threads`; that automatic choice is skipped if TensorFlow has already started (a
    second trainer in one process).
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
    automatic = auto_intra_op_threads(len(gpus), usable_cores(), training, xla, recurrent)
    if intra_op_threads:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
    elif automatic:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(automatic)
        except RuntimeError:
            pass  # TensorFlow already runs with its threads; a performance default is not worth failing for
    for gpu in gpus if gpu_memory_growth else ():
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:
            pass  # already initialised (e.g. a second call in one process)
    if cpu_replicas > 1:
        cpus = tf.config.list_physical_devices("CPU")
        try:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(cpu_replicas)]
            )
        except RuntimeError:
            existing = len(tf.config.list_logical_devices("CPU"))
            if existing != cpu_replicas:
                raise UserError(
                    f"cannot split the CPU into {cpu_replicas} devices: TensorFlow is already initialised "
                    f"with {existing}"
                ) from None
    return len(gpus)


def create_strategy(choice: StrategyChoice, collective_timeout_s: float = 0.0):
    """Creates the strategy described by ``choice`` (call :func:`configure_devices` first)."""
    import tensorflow as tf

    if choice.kind == "default":
        return tf.distribute.get_strategy()
    if choice.kind == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if choice.num_gpus else "/cpu:0")
    if choice.kind == "mirrored":
        if choice.num_gpus > 0:
            devices = [f"/gpu:{i}" for i in range(choice.num_gpus)]
        else:
            devices = [d.name for d in tf.config.list_logical_devices("CPU")][: choice.cpu_replicas]
        if choice.collective == "nccl":
            ops = tf.distribute.NcclAllReduce()
        else:
            ops = tf.distribute.ReductionToOneDevice(reduce_to_device=devices[0])
        return tf.distribute.MirroredStrategy(devices=devices, cross_device_ops=ops)
    implementation = (
        tf.distribute.experimental.CommunicationImplementation.NCCL
        if choice.collective == "nccl"
        else tf.distribute.experimental.CommunicationImplementation.RING
    )
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=implementation, timeout_seconds=collective_timeout_s or None
    )
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    except (tf.errors.OpError, RuntimeError) as e:
        if "Could not start gRPC server" not in str(e):
            raise
        raise UserError(f"worker {choice.cluster.task_index} could not listen on {own_address()}: the port is taken or "
                        f"not allowed; free it or give this worker another port in TF_CONFIG") from None


def own_address(environ=None) -> str:
    """This task's HOST:PORT from TF_CONFIG ("?" when it cannot be read)."""
    environ = os.environ if environ is None else environ
    try:
        config = json.loads(environ.get("TF_CONFIG", "{}"))
        task = config["task"]
        return config["cluster"][task["type"]][int(task["index"])]
    except (ValueError, KeyError, IndexError, TypeError):
        return "?"


def describe(choice: StrategyChoice, strategy) -> str:
    where = f"{choice.num_gpus} GPU(s)" if choice.num_gpus else "CPU"
    text = f"strategy {choice.kind} ({strategy.num_replicas_in_sync} replica(s) on {where}"
    if choice.collective != "none":
        text += f", {choice.collective} all-reduce"
    if choice.cluster.num_workers > 1:
        text += f", worker {choice.cluster.task_index} of {choice.cluster.num_workers}"
    return text + ")"
