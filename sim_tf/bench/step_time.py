"""Compute-only step times on one fixed batch: forward, forward + backward, and a full train step.

No input pipeline and no host loop, so a change to the model or the optimizer shows up without the
noise of parsing; the figures in BUILD_NOTES.md's lever table come from here. The machine's speed
drifts by several percent from minute to minute, so each figure is the *minimum* of --repeats timings.

    python -m sim_tf.bench.step_time --dataset_dir DIR [--model_type sim] [--amp] [--xla] [--optimizer adam]
        [--gsu soft|hard --max_long_history N]   (behaviour-store datasets)
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from sim_tf.models import GSU_KINDS, MODEL_TYPES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--model_type", default="sim", choices=MODEL_TYPES)
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--global_batch_size", type=int, default=4096)
    parser.add_argument("--long_seq_length", type=int, default=90)
    parser.add_argument("--gsu", default="soft", choices=GSU_KINDS)
    parser.add_argument("--max_long_history", type=int, default=1000)
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--xla", action="store_true")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    import tensorflow as tf

    from sim_tf.train import train_lib
    from sim_tf.models.config import default_head_batch_norm
    from sim_tf.models.models import ModelConfig
    from sim_tf.train.config import TrainConfig

    config = TrainConfig(
        mode="train", model_type=args.model_type, dataset_dir=args.dataset_dir, optimizer=args.optimizer,
        global_batch_size=args.global_batch_size, long_seq_length=args.long_seq_length, amp=args.amp,
        xla=args.xla, benchmark=True, results_dir="/tmp/sim_tf.bench.step_time",
        model=ModelConfig(gsu=args.gsu, top_k=min(50, args.max_long_history),
                          head_batch_norm=default_head_batch_norm(args.model_type, args.gsu)), max_long_history=args.max_long_history,
    )
    trainer = train_lib.create_trainer(config, echo=None)
    features, labels = batch = next(iter(trainer.datasets("train", 0)))
    counts = trainer.task.local_counts(features, labels)

    def timed(fn) -> float:
        fn(), fn()  # trace and warm up
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            tf.nest.map_structure(lambda t: t.numpy(), fn())
            times.append(time.perf_counter() - started)
        return float(np.min(times) * 1000)

    forward = tf.function(lambda f: trainer.model(f, training=False)["prediction"], jit_compile=args.xla)

    @tf.function
    def forward_backward(f, y):
        loss, grads = trainer.task.forward_backward(f, y, counts)
        return loss, [g.values if isinstance(g, tf.IndexedSlices) else g for g in grads]

    step = tf.function(lambda b: trainer.strategy.run(trainer.task.train_step, args=(b,)))
    result = {
        "model": args.model_type, "amp": args.amp, "xla": args.xla, "optimizer": args.optimizer,
        "forward_ms": timed(lambda: forward(features)),
        "forward_backward_ms": timed(lambda: forward_backward(features, labels)),
        "train_step_ms": timed(lambda: step(batch)),
    }
    print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    main()
