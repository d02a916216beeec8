import numpy as np
import tensorflow as tf

from sim_tf.bench import table_update
from sim_tf.train.optimizers import densify


def test_zero_step_then_fixed_rows_equals_the_dense_adam_step():
    """The exact alternative the benchmark times is Adam's update: every row moves, touched rows by g."""
    rng = np.random.default_rng(3)
    rows, dim = 50, 4
    start = rng.uniform(-0.1, 0.1, (rows, dim)).astype(np.float32)
    m0 = rng.uniform(-1e-3, 1e-3, (rows, dim)).astype(np.float32)
    v0 = rng.uniform(1e-8, 1e-6, (rows, dim)).astype(np.float32)
    ids = tf.constant([3, 7, 3, 49, 0, 7, 7], tf.int64)  # duplicates sum, as in a batch's look-ups
    gradient = tf.IndexedSlices(tf.constant(rng.normal(0, 1e-3, (7, dim)).astype(np.float32)), ids,
                                tf.constant([rows, dim], tf.int64))
    beta_1, beta_2, epsilon, lr, step = 0.9, 0.999, 1e-7, 0.01, 3

    def dense_kernel(grad, w, m, v):
        tf.raw_ops.ResourceApplyAdam(var=w.handle, m=m.handle, v=v.handle, beta1_power=beta_1 ** step,
                                     beta2_power=beta_2 ** step, lr=lr, beta1=beta_1, beta2=beta_2,
                                     epsilon=epsilon, grad=grad)

    expected = [tf.Variable(x) for x in (start, m0, v0)]
    dense_kernel(densify(gradient), *expected)
    got = [tf.Variable(x) for x in (start, m0, v0)]
    dense_kernel(tf.zeros([rows, dim]), *got)
    table_update.fix_touched_rows(*got, gradient, step, lr, beta_1, beta_2, epsilon)
    for name, e, g in zip(("weights", "m", "v"), expected, got):
        np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-5, atol=1e-9, err_msg=name)
    # Untouched rows moved too (decayed moments), so a lazy update would not be this one.
    assert not np.allclose(got[0].numpy()[1], start[1])


def test_main_reports_every_way_and_the_memory_yardstick(capsys):
    result = table_update.main(["--rows", "3000", "--dim", "8", "--lookups", "2000", "--repeats", "2"])
    for key in ("densify+fused_ms", "zero+fix_rows_ms", "lazy_ms", "copy_ms", "copy_gb_per_s",
                "six_passes_at_copy_speed_ms"):
        assert result[key] >= 0, key
    assert 0 < result["distinct_ids"] <= 2000
    out = capsys.readouterr().out
    assert "CPU(s)" in out and '"densify+fused_ms"' in out
