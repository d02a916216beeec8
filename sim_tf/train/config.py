"""The trainer's typed, frozen configuration: built once from flags, validated, written next to results."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

from sim_tf.distribute import STRATEGIES
from sim_tf.errors import UserError
from sim_tf.models import MODEL_TYPES
from sim_tf.models.config import ModelConfig

OPTIMIZERS = ("adam", "lazy_adam", "sgd", "adagrad")  # built by sim_tf.train.optimizers.make_optimizer

MODES = ("train", "evaluate", "inference")
MAX_SHUFFLE_BUFFER = 10_000_000  # records held in memory; TensorFlow crashes allocating far larger buffers
MAX_THREADS = 1024
MAX_BATCH = 2**24  # sample counts are summed in float32, exact up to 2**24
AMP_DTYPES = ("auto", "float16", "bfloat16")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    mode: str = "train"
    model_type: str = "sim"
    model: ModelConfig = ModelConfig()
    dataset_dir: str = ""
    feature_spec: str = "feature_spec.yaml"
    # optimisation
    optimizer: str = "adam"
    lr: float = 0.01
    weight_decay: float = 0.0
    epochs: int = 3
    global_batch_size: int = 131072
    # precision and compilation
    amp: bool = False
    amp_dtype: str = "auto"
    xla: bool | None = False  # None: decided by the devices (distribute.plan_devices)
    # input
    drop_remainder: bool = False
    cache: bool = True
    repeat_count: int = 0
    prefetch_train_size: int = -1
    prefetch_test_size: int = -1
    long_seq_length: int = 90
    max_long_history: int = 1000
    shuffle_buffer: int = 0
    prebatch_train_size: int = 0
    prebatch_test_size: int = 0
    # results
    results_dir: str = "/tmp/sim"
    log_filename: str = "log.json"
    save_checkpoint_path: str = ""
    load_checkpoint_path: str = ""
    keep_checkpoints: int = 3
    checkpoint_every_steps: int = 0
    tensorboard_dir: str = ""
    # run
    benchmark: bool = False
    benchmark_warmup_steps: int = 20
    benchmark_steps: int = 200
    random_init: bool = False
    evaluate_train: bool = False
    seed: int = 0
    deterministic: bool = False
    steps_per_loop: int = 1  # 0: decided by the devices
    num_parallel_reads: int = 0  # 0: decided by the cores
    gpu_memory_growth: bool = False
    eval_every_steps: int = 0
    log_every_steps: int = 100
    profile_steps: tuple[int, int] | None = None
    # distribution
    strategy: str = "auto"
    cpu_replicas: int = 1
    collective_timeout_s: float = 0.0
    inter_op_parallelism: int = 0
    intra_op_parallelism: int = 0
    microbatches: int = 0

    def __post_init__(self):
        def need(condition: bool, message: str):
            if not condition:
                raise UserError(message)

        need(self.mode in MODES, f"--mode must be one of {list(MODES)}, got {self.mode!r}")
        need(self.model_type in MODEL_TYPES, f"--model_type must be one of {list(MODEL_TYPES)}, got {self.model_type!r}")
        need(bool(self.dataset_dir), "--dataset_dir is required: the folder with feature_spec.yaml and the TFRecords")
        need(self.optimizer in OPTIMIZERS, f"--optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}")
        need(math.isfinite(self.lr) and self.lr > 0, f"--lr must be a finite number > 0, got {self.lr}")
        need(math.isfinite(self.weight_decay) and self.weight_decay >= 0,
             f"--weight_decay must be a finite number >= 0, got {self.weight_decay}")
        need(self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}")
        need(self.global_batch_size >= 1, f"--global_batch_size must be >= 1, got {self.global_batch_size}")
        need(self.amp_dtype in AMP_DTYPES, f"--amp_dtype must be one of {list(AMP_DTYPES)}, got {self.amp_dtype!r}")
        need(self.repeat_count >= 0, f"--repeat_count must be >= 0, got {self.repeat_count}")
        need(self.long_seq_length >= 1, f"--long_seq_length must be >= 1, got {self.long_seq_length}")
        need(self.max_long_history >= 1, f"--max_long_history must be >= 1, got {self.max_long_history}")
        need(0 <= self.shuffle_buffer <= MAX_SHUFFLE_BUFFER,
             f"--shuffle_buffer must be between 0 and {MAX_SHUFFLE_BUFFER:,} records, got {self.shuffle_buffer}")
        need(self.keep_checkpoints >= 1, f"--keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        need(self.checkpoint_every_steps >= 0, f"--checkpoint_every_steps must be >= 0, got {self.checkpoint_every_steps}")
        need(self.benchmark_warmup_steps >= 0, f"--benchmark_warmup_steps must be >= 0, got {self.benchmark_warmup_steps}")
        need(self.benchmark_steps >= 1, f"--benchmark_steps must be >= 1, got {self.benchmark_steps}")
        need(self.steps_per_loop >= 0, f"--steps_per_loop must be >= 0 (0: automatic), got {self.steps_per_loop}")
        need(self.num_parallel_reads >= 0, f"--num_parallel_reads must be >= 0 (0: automatic), got {self.num_parallel_reads}")
        need(self.eval_every_steps >= 0, f"--eval_every_steps must be >= 0, got {self.eval_every_steps}")
        need(self.log_every_steps >= 1, f"--log_every_steps must be >= 1, got {self.log_every_steps}")
        need(self.strategy in STRATEGIES, f"--strategy must be one of {list(STRATEGIES)}, got {self.strategy!r}")
        need(self.cpu_replicas >= 1, f"--cpu_replicas must be >= 1, got {self.cpu_replicas}")
        need(self.microbatches >= 0, f"--microbatches must be >= 0 (0: automatic), got {self.microbatches}")
        need(math.isfinite(self.collective_timeout_s) and self.collective_timeout_s >= 0,
             f"--collective_timeout_s must be a finite number >= 0, got {self.collective_timeout_s}")
        for name in ("inter_op_parallelism", "intra_op_parallelism"):
            value = getattr(self, name)
            need(0 <= value <= MAX_THREADS, f"--{name} must be between 0 (TensorFlow's default) and {MAX_THREADS}, "
                                            f"got {value}")
        need(0 <= self.seed < 2**31, f"--seed must be between 0 and 2**31 - 1 (or -1: random), got {self.seed}")
        need(self.global_batch_size <= MAX_BATCH, f"--global_batch_size must be at most {MAX_BATCH:,}, "
                                                  f"got {self.global_batch_size}")
        need(self.prebatch_train_size >= 0 and self.prebatch_test_size >= 0, "--prebatch_*_size must be >= 0")
        if self.profile_steps is not None:
            start, end = self.profile_steps
            need(0 <= start < end, f"--profile_steps START,END needs 0 <= START < END, got {start},{end}")
        need(not (self.random_init and self.mode == "train"), "--random_init is for --mode inference or evaluate")

    def validate_for(self, spec, replicas: int = 1) -> None:
        """The checks that need the dataset (its history length) and the replica count."""
        per_replica = self.global_batch_size // max(1, replicas)
        if self.microbatches > per_replica:
            raise UserError(f"--microbatches {self.microbatches} is more than the {per_replica} samples each replica "
                            f"gets per step (--global_batch_size {self.global_batch_size} over {replicas} replica(s))")
        if spec.store is not None:
            self._validate_for_store(spec)
        elif self.model.gsu == "hard":
            raise UserError("--gsu hard needs a behaviour-store dataset (a FeatureSpec with a behavior_store section, "
                            "e.g. `sim-tf synthesize --preset lifelong`); padded datasets use the soft search")
        elif not 0 < self.long_seq_length < spec.history_length:
            raise UserError(
                f"--long_seq_length {self.long_seq_length} must be between 1 and {spec.history_length - 1}: "
                f"the dataset's histories have {spec.history_length} positions (L) and the short history "
                f"is the last L - long_seq_length"
            )
        if self.global_batch_size % replicas:
            raise UserError(f"--global_batch_size {self.global_batch_size} is not divisible by the {replicas} replicas")

    def _validate_for_store(self, spec) -> None:
        if self.model_type == "sim" and self.model.gsu != "sdim" and self.model.top_k > self.max_long_history:
            raise UserError(f"--top_k {self.model.top_k} is larger than --max_long_history {self.max_long_history}: "
                            f"the search keeps at most the behaviours its window holds")
        if spec.history_length < 2 and self.model_type in ("sim", "dien"):
            raise UserError(f"the dataset's recent history has {spec.history_length} position(s); DIEN's part needs "
                            f"at least 2 (the history features' dimensions in the FeatureSpec)")

    @property
    def long_history_positions(self) -> int:
        """Long-history positions a store-backed pipeline hands the model."""
        return self.model.top_k if self.model.gsu == "hard" else self.max_long_history

    def resume_signature(self, train_samples: int) -> dict[str, Any]:
        """What a resumed run must keep equal for its steps to continue the same training."""
        return {"model_type": self.model_type, "model": dataclasses.asdict(self.model), "optimizer": self.optimizer,
                "global_batch_size": self.global_batch_size, "long_seq_length": self.long_seq_length,
                "max_long_history": self.max_long_history,
                "drop_remainder": self.drop_remainder, "repeat_count": self.repeat_count, "seed": self.seed,
                "train_samples": train_samples, "amp": self.amp, "amp_dtype": self.amp_dtype}

    @property
    def tensorboard_path(self) -> str:
        return self.tensorboard_dir or os.path.join(self.results_dir, "tensorboard")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["model"] = dataclasses.asdict(self.model)
        return out

    def write(self, path: str, extra: dict[str, Any] | None = None) -> None:
        """Writes the config (plus ``extra``) as JSON, atomically: readers never see half a file."""
        from sim_tf.data.atomic import atomic_write_text

        atomic_write_text(path, json.dumps({**self.to_dict(), **(extra or {})}, indent=2, sort_keys=True))
