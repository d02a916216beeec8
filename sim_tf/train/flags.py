"""The trainer's flags (shared by `sim-tf train|evaluate|inference`, `demo` and `export`) and the one
function that turns them into a validated :class:`~sim_tf.train.config.TrainConfig`.

Every flag of the NVIDIA recipe's parameter table keeps its name and default, so the recipe's README
commands run unchanged (minus `mpiexec`: distribution comes from tf.distribute). Flag files work with
`--flagfile=configs/NAME.cfg`.
"""

from __future__ import annotations

import os

from absl import flags

from sim_tf.distribute import STRATEGIES
from sim_tf.errors import UserError
from sim_tf.models import ATTENTION_KINDS, GSU_KINDS, MODEL_TYPES
from sim_tf.models.config import ModelConfig, default_head_batch_norm
from sim_tf.train.config import AMP_DTYPES, MODES, OPTIMIZERS, TrainConfig

FLAGS = flags.FLAGS

# --- the recipe's parameters (names and defaults kept) ---
flags.DEFINE_enum("model_type", "sim", list(MODEL_TYPES), "Model type.")
flags.DEFINE_integer("embedding_dim", 16, "Embedding dimension for different entities (users, items & categories).")
flags.DEFINE_list("stage_one_mlp_dims", ["200"], "MLP hidden dimensions for the stage one component.")
flags.DEFINE_list("stage_two_mlp_dims", ["200", "80"], "MLP hidden dimensions for the stage two component (and the DIN/DIEN heads).")
flags.DEFINE_list("aux_mlp_dims", ["100", "50"], "MLP hidden dimensions for the auxiliary loss.")
flags.DEFINE_string("dataset_dir", None, "Path to the directory containing feature specification file and dataset splits.")
flags.DEFINE_string("feature_spec", "feature_spec.yaml", "Name of the feature spec file in the dataset directory.")
flags.DEFINE_enum("optimizer", "adam", list(OPTIMIZERS), "Optimizer to use: adam (dense updates of every row, like the recipe, in one fused kernel), lazy_adam (sparse row updates for embedding tables), sgd, adagrad.")
flags.DEFINE_float("lr", 0.01, "Learning rate for the optimizer selected.")
flags.DEFINE_float("weight_decay", 0.0, "Decoupled weight decay of the optimizer selected (0 disables it).")
flags.DEFINE_integer("epochs", 3, "Train for the following number of epochs.")
flags.DEFINE_integer("global_batch_size", 131072, "Batch size used for training, evaluation and inference (summed over all replicas).")
flags.DEFINE_float("dropout_rate", -1.0, "Dropout rate for all the classification MLPs (-1 disables dropout).")
flags.DEFINE_boolean("amp", False, "Enable automatic mixed precision: float16 with dynamic loss scaling on GPU, bfloat16 on CPU. Matmuls run in that dtype; embedding tables, GRU/AUGRU states and gates, attention scores and softmaxes (SIM's top-k scores too), logits and losses stay float32.")
flags.DEFINE_boolean("xla", None, "Compile the forward and backward pass, and the prediction step, with XLA (jit_compile); batches then keep one shape (training drops its last partial batch, evaluation pads its last). Default: on with GPUs, off on CPUs, where it speeds up inference and DIN training but slows SIM and DIEN training (docs/performance.md).")
flags.DEFINE_boolean("drop_remainder", False, "Drop remainder batch for training set.")
flags.DEFINE_boolean("disable_cache", False, "Do not keep the training records in memory between epochs, and shuffle the file order at each epoch. Without it, files are read in the FeatureSpec's order and the records are kept in memory when the run reads them more than once (over a quarter of the RAM, files are shuffled as with it).")
flags.DEFINE_integer("repeat_count", 0, "Repeat training dataset this number of times per epoch (0 or 1: once).")
flags.DEFINE_integer("prefetch_train_size", -1, "Number of batches to prefetch in training (-1: AUTOTUNE).")
flags.DEFINE_integer("prefetch_test_size", -1, "Number of batches to prefetch in evaluation (-1: AUTOTUNE).")
flags.DEFINE_integer("train_dataset_size", 11796480, "Recipe compatibility only: sim-tf reads sample counts from the FeatureSpec metadata or by counting records.")
flags.DEFINE_integer("long_seq_length", 90, "Determines the long history - short history split of history features.")
flags.DEFINE_string("results_dir", "/tmp/sim", "Path to the model result files storage (log, config.json, TensorBoard).")
flags.DEFINE_string("log_filename", "log.json", "Name of the JSON-lines log file in --results_dir.")
flags.DEFINE_string("save_checkpoint_path", "", "Directory to save model checkpoints; training resumes from the newest one found there.")
flags.DEFINE_string("load_checkpoint_path", "", "Checkpoint (or directory of checkpoints) to restore from.")
flags.DEFINE_enum("mode", "train", list(MODES), "One of: train, evaluate, inference.")
flags.DEFINE_boolean("benchmark", False, "Perform benchmark measurements for, e.g., throughput calculation.")
flags.DEFINE_integer("benchmark_warmup_steps", 20, "Number of warmup steps to use for performance benchmarking.")
flags.DEFINE_integer("benchmark_steps", 200, "Number of steps to use for performance benchmarking.")
flags.DEFINE_string("affinity", "socket_unique_interleaved", "Recipe compatibility only (Horovod CPU affinity); ignored.")
flags.DEFINE_integer("inter_op_parallelism", 0, "Number of inter op threads (0: TensorFlow's default).")
flags.DEFINE_integer("intra_op_parallelism", 0, "Number of intra op threads (0: automatic: 1 when training, or predicting "
                     "with SIM or DIEN, without --xla on a CPU-only host of at most 2 cores, where it is faster, else "
                     "TensorFlow's default of one per core).")
flags.DEFINE_integer("microbatches", 0, "Split each replica's batch into this many parts, whose forward and "
                     "backward passes are independent until their gradients are summed (same loss and update as the "
                     "whole batch; prediction concatenates the parts' outputs). 0: automatic: one per core when the "
                     "run uses one thread per op (see --intra_op_parallelism: training, and SIM/DIEN prediction, on "
                     "CPU hosts of up to 2 cores), so the cores work on the parts side by side, else 1.")
flags.DEFINE_integer("seed", -1, "Random seed (-1: pick one and record it in config.json).")
flags.DEFINE_integer("prebatch_train_size", 0, "Samples per training record (0: detect from the data).")
flags.DEFINE_integer("prebatch_test_size", 0, "Samples per test record (0: detect from the data).")

# --- sim-tf's additions ---
flags.DEFINE_enum("strategy", "auto", list(STRATEGIES), "Distribution strategy; auto: multi_worker when TF_CONFIG names several workers, mirrored with several GPUs (or --cpu_replicas > 1), else default.")
flags.DEFINE_integer("cpu_replicas", 1, "Split the CPU into this many logical devices (to exercise MirroredStrategy without GPUs).")
flags.DEFINE_float("collective_timeout_s", 0.0, "Fail a collective (all-reduce) that takes longer than this, so a hung worker ends the job (0: no timeout).")
flags.DEFINE_enum("amp_dtype", "auto", list(AMP_DTYPES), "Reduced precision used by --amp (auto: float16 on GPU, bfloat16 on CPU).")
flags.DEFINE_integer("top_k", 50, "Long-history behaviours SIM's search keeps for the exact search unit.")
flags.DEFINE_enum("gsu", "soft", list(GSU_KINDS), "SIM's search unit: soft (attention over the whole long history, then "
                  "--top_k); hard (behaviour-store datasets: the --top_k most recent behaviours of the target's "
                  "category, chosen in the input pipeline, so the model never embeds the rest); or a successor: eta "
                  "(SimHash + Hamming top-k), sdim (hash-bucket averages, no top-k), twin (the ESU's own multi-head "
                  "attention scores the whole history). docs/models.md compares them.")
flags.DEFINE_integer("hash_bits", 32, "--gsu eta: bits of the SimHash signature (at most 62).", lower_bound=1)
flags.DEFINE_integer("sdim_rounds", 4, "--gsu sdim: hash functions (rounds) averaged.", lower_bound=1)
flags.DEFINE_integer("sdim_bits", 3, "--gsu sdim: hyperplanes per hash function and item feature (rounds x bits <= 31).", lower_bound=1)
flags.DEFINE_integer("twin_heads", 4, "--gsu twin: attention heads, each --embedding_dim wide.", lower_bound=1)
flags.DEFINE_integer("max_long_history", 1000, "Behaviour-store datasets: the long history spans at most this many "
                     "behaviours before the recent ones (soft: all are embedded; hard: searched).", lower_bound=1)
flags.DEFINE_boolean("head_batch_norm", None, "Batch-normalise the input of every CTR head (SIM's stage one and two, "
                     "the DIN and DIEN heads), where the DIN and DIEN authors' code has one (theirs never runs in training "
                     "mode, so it acts as a fixed affine map). Default (auto): on for SIM with --gsu hard, eta, sdim or "
                     "twin, which it raised on the lifelong preset; off for soft, which it lowered, and for DIN and DIEN, "
                     "as in the recipe (docs/models.md). --head_batch_norm / --nohead_batch_norm decide it.")
flags.DEFINE_enum("attention", "dot", list(ATTENTION_KINDS), "Target attention: dot (the recipe's) or din (the DIN paper's activation unit).")
flags.DEFINE_integer("steps_per_loop", 0, "Training steps run inside one tf.function call between host-side logging (0: 50 with GPUs, which would idle during the host's syncs between calls; 1 on CPUs).", lower_bound=0)
flags.DEFINE_integer("num_parallel_reads", 0, "Data files read in parallel per input pipeline (0: one per core, 4 to 32).", lower_bound=0)
flags.DEFINE_boolean("gpu_memory_growth", False, "Allocate GPU memory as it is needed instead of all at start (for several processes on one GPU; `sim-tf launch local` sets it when workers share GPUs).")
flags.DEFINE_integer("eval_every_steps", 0, "Also evaluate every this many steps (0: only at epoch ends).")
flags.DEFINE_integer("log_every_steps", 100, "Log the training loss and throughput every this many steps.")
flags.DEFINE_string("tensorboard_dir", "", "TensorBoard log directory (default: RESULTS_DIR/tensorboard).")
flags.DEFINE_string("profile_steps", "", "Profile training steps START..END-1 (in --mode inference or evaluate: prediction batches, from 0, warm-up counted) with the TensorBoard profiler; `sim-tf profile` lists the top ops (the `profile` extra views it in TensorBoard).")
flags.DEFINE_integer("shuffle_buffer", 0, "Records in the training shuffle buffer (0: 8 batches' worth, at most 65,536).")
flags.DEFINE_boolean("deterministic", False, "Deterministic ops (TensorFlow's op determinism) and input order: bit-identical results across runs. Without it, input order is still kept on CPUs; on GPUs tf.data may hand out whichever batch is ready first.")
flags.DEFINE_boolean("evaluate_train", False, "Also evaluate on the training split at each evaluation.")
flags.DEFINE_boolean("random_init", False, "Evaluate or infer with random weights (pure speed tests).")
flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept in --save_checkpoint_path.")
flags.DEFINE_integer("checkpoint_every_steps", 0, "Also save a checkpoint every this many steps (0: only at epoch ends).")


def _int_list(name: str, values) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in values)
    except ValueError:
        raise UserError(f"--{name} must be a comma-separated list of integers, got {','.join(values)!r}") from None


def _profile_steps(text: str):
    if not text:
        return None
    try:
        start, end = (int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--profile_steps must be START,END (two integers), got {text!r}") from None
    return start, end


def _seed(seed: int) -> int:
    if seed >= 0:
        return seed
    return int.from_bytes(os.urandom(4), "little") % (2**31 - 1)


def config_from_flags(mode: str | None = None) -> TrainConfig:
    """Builds and validates the TrainConfig; every problem is one UserError naming the flag."""
    try:
        model = ModelConfig(
            embedding_dim=FLAGS.embedding_dim,
            stage_one_mlp_dims=_int_list("stage_one_mlp_dims", FLAGS.stage_one_mlp_dims),
            stage_two_mlp_dims=_int_list("stage_two_mlp_dims", FLAGS.stage_two_mlp_dims),
            aux_mlp_dims=_int_list("aux_mlp_dims", FLAGS.aux_mlp_dims),
            dropout_rate=FLAGS.dropout_rate,
            head_batch_norm=(FLAGS.head_batch_norm if FLAGS.head_batch_norm is not None
                             else default_head_batch_norm(FLAGS.model_type, FLAGS.gsu)),
            top_k=FLAGS.top_k,
            attention=FLAGS.attention,
            gsu=FLAGS.gsu,
            hash_bits=FLAGS.hash_bits,
            sdim_rounds=FLAGS.sdim_rounds,
            sdim_bits=FLAGS.sdim_bits,
            twin_heads=FLAGS.twin_heads,
        )
    except ValueError as e:
        if isinstance(e, UserError):
            raise
        raise UserError(f"--{e}") from None
    return TrainConfig(
        mode=mode or FLAGS.mode,
        model_type=FLAGS.model_type,
        model=model,
        dataset_dir=FLAGS.dataset_dir,
        feature_spec=FLAGS.feature_spec,
        optimizer=FLAGS.optimizer,
        lr=FLAGS.lr,
        weight_decay=FLAGS.weight_decay,
        epochs=FLAGS.epochs,
        global_batch_size=FLAGS.global_batch_size,
        amp=FLAGS.amp,
        amp_dtype=FLAGS.amp_dtype,
        xla=FLAGS.xla,
        drop_remainder=FLAGS.drop_remainder,
        cache=not FLAGS.disable_cache,
        repeat_count=FLAGS.repeat_count,
        prefetch_train_size=FLAGS.prefetch_train_size,
        prefetch_test_size=FLAGS.prefetch_test_size,
        long_seq_length=FLAGS.long_seq_length,
        max_long_history=FLAGS.max_long_history,
        shuffle_buffer=FLAGS.shuffle_buffer,
        prebatch_train_size=FLAGS.prebatch_train_size,
        prebatch_test_size=FLAGS.prebatch_test_size,
        results_dir=FLAGS.results_dir,
        log_filename=FLAGS.log_filename,
        save_checkpoint_path=FLAGS.save_checkpoint_path,
        load_checkpoint_path=FLAGS.load_checkpoint_path,
        keep_checkpoints=FLAGS.keep_checkpoints,
        checkpoint_every_steps=FLAGS.checkpoint_every_steps,
        tensorboard_dir=FLAGS.tensorboard_dir,
        benchmark=FLAGS.benchmark,
        benchmark_warmup_steps=FLAGS.benchmark_warmup_steps,
        benchmark_steps=FLAGS.benchmark_steps,
        random_init=FLAGS.random_init,
        evaluate_train=FLAGS.evaluate_train,
        seed=_seed(FLAGS.seed),
        deterministic=FLAGS.deterministic,
        steps_per_loop=FLAGS.steps_per_loop,
        num_parallel_reads=FLAGS.num_parallel_reads,
        gpu_memory_growth=FLAGS.gpu_memory_growth,
        eval_every_steps=FLAGS.eval_every_steps,
        log_every_steps=FLAGS.log_every_steps,
        profile_steps=_profile_steps(FLAGS.profile_steps),
        strategy=FLAGS.strategy,
        cpu_replicas=FLAGS.cpu_replicas,
        collective_timeout_s=FLAGS.collective_timeout_s,
        inter_op_parallelism=FLAGS.inter_op_parallelism,
        intra_op_parallelism=FLAGS.intra_op_parallelism,
        microbatches=FLAGS.microbatches,
    )
