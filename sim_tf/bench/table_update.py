"""What one optimizer step costs an embedding table, apart from the model: the answer to "why does a
larger vocabulary slow training down under ``adam``?".

``adam`` (FusedAdam) updates every row at every step, as Adam's formula does: rows a batch did not touch
still move, by their decayed moments. That is a pass over the table, its two moments and a dense
gradient, whatever the batch. The ways of doing it measured here, on one table of ``--rows`` x ``--dim``
float32 and the gradient of ``--lookups`` zipf-distributed ids (an item table's look-ups in a batch):

* ``densify+fused``: what training does: the IndexedSlices gradient summed into a dense tensor
  (optimizers.densify), then FusedAdam's one ResourceApplyAdam kernel;
* ``zero+fix_rows``: the same update without a dense gradient: the fused kernel with a zero gradient
  moves every row as if untouched, then the touched rows are set to what the real gradient gives
  (:func:`fix_touched_rows`); equal to the first up to float rounding;
* ``lazy``: LazyAdam, which updates only the touched rows (a different optimizer: untouched rows stay);
* ``copy``: one copy of a table-sized array (numpy), the machine's memory-speed yardstick: the dense
  update reads and writes the weights and both moments at least once, six table-sized passes.

    python -m sim_tf.bench.table_update [--rows 1209081] [--dim 16] [--lookups 413696] [--threads 1]

Each figure is the minimum of --repeats timings (ms); one JSON line, after the CPU's name.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def fix_touched_rows(weights, m, v, gradient, step: int, lr: float, beta_1: float, beta_2: float,
                     epsilon: float) -> None:
    """After a zero-gradient Adam step (m = b1 m0, v = b2 v0, w = w0 - a m / (sqrt(v) + eps) on every row),
    gives the rows of the IndexedSlices ``gradient`` what the real gradient g gives: m + (1 - b1) g,
    v + (1 - b2) g^2, and w with the zero step's move undone and the real one applied."""
    import tensorflow as tf

    from sim_tf.train.optimizers import sum_rows

    rows, position = tf.unique(gradient.indices)
    g = sum_rows(gradient.values, position, tf.shape(rows)[0])
    alpha = lr * np.sqrt(1.0 - beta_2 ** step) / (1.0 - beta_1 ** step)
    m_rows, v_rows, w_rows = tf.gather(m, rows), tf.gather(v, rows), tf.gather(weights, rows)
    new_m = m_rows + (1.0 - beta_1) * g
    new_v = v_rows + (1.0 - beta_2) * tf.square(g)
    new_w = w_rows + alpha * m_rows / (tf.sqrt(v_rows) + epsilon) - alpha * new_m / (tf.sqrt(new_v) + epsilon)
    for variable, value in ((m, new_m), (v, new_v), (weights, new_w)):
        variable.scatter_update(tf.IndexedSlices(value, rows))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_209_081, help="table rows (default: the amazon preset's items)")
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--lookups", type=int, default=4096 * 101, help="ids in the gradient (batch x positions)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (training on <= 2 cores uses 1)")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    from sim_tf.bench.suite import machine_line
    from sim_tf.train.optimizers import FusedAdam, LazyAdam, densify

    try:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    except RuntimeError:
        pass  # TensorFlow already started in this process (a test): its setting stands, and is reported
    rng = np.random.default_rng(0)
    ids = tf.constant(np.minimum(rng.zipf(1.1, args.lookups), args.rows - 1).astype(np.int64))
    values = tf.constant(rng.normal(0.0, 1e-3, (args.lookups, args.dim)).astype(np.float32))
    gradient = tf.IndexedSlices(values, ids, tf.constant([args.rows, args.dim], tf.int64))
    start = rng.uniform(-0.01, 0.01, (args.rows, args.dim)).astype(np.float32)

    def optimizer_step(optimizer_class, dense: bool):
        table = keras.Variable(start)
        optimizer = optimizer_class(learning_rate=0.01)
        optimizer.build([table])
        return tf.function(lambda: optimizer.apply([densify(gradient) if dense else gradient], [table]))

    plain = FusedAdam(learning_rate=0.01)
    weights, m, v = (tf.Variable(np.zeros_like(start) if i else start) for i in range(3))

    @tf.function
    def zero_and_fix():
        tf.raw_ops.ResourceApplyAdam(var=weights.handle, m=m.handle, v=v.handle, beta1_power=plain.beta_1,
                                     beta2_power=plain.beta_2, lr=0.01, beta1=plain.beta_1, beta2=plain.beta_2,
                                     epsilon=plain.epsilon, grad=tf.zeros_like(weights))
        fix_touched_rows(weights, m, v, gradient, 1, 0.01, plain.beta_1, plain.beta_2, plain.epsilon)

    target = np.empty_like(start)
    cases = {
        "densify+fused": optimizer_step(FusedAdam, dense=True),
        "zero+fix_rows": zero_and_fix,
        "lazy": optimizer_step(LazyAdam, dense=False),
        "copy": lambda: np.copyto(target, start),
    }
    result = {"rows": args.rows, "dim": args.dim, "lookups": args.lookups,
              "threads": tf.config.threading.get_intra_op_parallelism_threads(),
              "distinct_ids": int(np.unique(ids.numpy()).size)}
    best = {}
    for name, fn in cases.items():
        fn()  # trace and warm up
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
        best[name] = float(np.min(times))
        result[f"{name}_ms"] = round(best[name] * 1000, 2)
    table_bytes = args.rows * args.dim * 4
    result["copy_gb_per_s"] = round(2 * table_bytes / max(best["copy"], 1e-9) / 1e9, 1)
    # Reading and writing the weights and both moments once: the least any exact dense update can move.
    result["six_passes_at_copy_speed_ms"] = round(3 * best["copy"] * 1000, 2)
    print(machine_line())
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
