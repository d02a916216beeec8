"""sim-tf benchmark-compare: seed pairing, the interval and verdict, matching cases, and bad inputs."""

import json
import math
import statistics
import subprocess
import sys

import pytest

from sim_tf.bench import compare as bench_compare
from sim_tf.errors import UserError


def _run(seed, auc=None, throughput=1000.0, error=None):
    run = {"command": f"sim-tf train --dataset_dir=/d --epochs=1 --seed={seed}", "throughput": throughput,
           "peak_rss_bytes": 2**30}
    if auc is not None:
        run["test_auc"] = auc
    if error:
        run["error"] = error
    return run


def _report(*cases):
    return {"settings": {}, "machine": {}, "seconds": 1.0, "results": [
        {"case": {"model": m, "preset": p, "mode": mode, "config": c}, "result": {}, "runs": runs}
        for m, p, mode, c, runs in cases
    ]}


def test_pairs_by_seed_and_computes_the_interval_by_hand():
    base = [_run(0, 0.80, 100.0), _run(1, 0.82, 120.0), _run(2, 0.81, 110.0), _run(3, 0.79, 90.0)]
    # Listed out of order: pairing must follow the seed, not the position.
    new = [_run(2, 0.812, 200.0), _run(0, 0.801, 210.0), _run(1, 0.818, 190.0), _run(3, 0.793, 220.0)]
    (c,) = bench_compare.compare_configs(_report(("dien", "small", "auc", "fp32", base),
                                                 ("dien", "small", "auc", "amp", new)), "fp32")
    assert (c.base, c.new) == ("fp32", "amp")
    assert c.seeds == (0, 1, 2, 3)
    assert c.auc_differences == pytest.approx((0.001, -0.002, 0.002, 0.003))
    assert c.mean_difference == pytest.approx(0.001)
    sd = statistics.stdev([0.001, -0.002, 0.002, 0.003])  # 0.0021602
    half = 3.182 * sd / 2.0  # t(0.975, 3 df), tabled to three decimals, * sd / sqrt(4)
    assert c.interval == pytest.approx((0.001 - half, 0.001 + half), abs=1e-6)
    assert c.within(0.002) == 3  # |0.003| is the one outside
    assert c.base_auc_sd == pytest.approx(statistics.stdev([0.80, 0.82, 0.81, 0.79]))
    assert c.throughput_ratio == pytest.approx(statistics.median([200, 210, 190, 220]) / statistics.median([100, 120, 110, 90]))
    assert c.verdict(0.002) == "undecided: more seeds needed"  # interval ~[-0.0024, +0.0044]
    assert c.verdict(0.01) == "mean within +-0.01"


def test_verdict_says_moved_when_the_whole_interval_is_outside():
    base = [_run(s, 0.80) for s in range(5)]
    new = [_run(s, 0.80 - 0.01 + 0.0005 * s) for s in range(5)]
    (c,) = bench_compare.compare_configs(_report(("sim", "small", "auc", "fp32", base),
                                                 ("sim", "small", "auc", "amp", new)), "fp32")
    assert c.interval[1] < -0.002
    assert c.verdict(0.002) == "mean moved by more than 0.002"
    (single,) = bench_compare.compare_configs(_report(("sim", "small", "auc", "fp32", base[:1]),
                                                      ("sim", "small", "auc", "amp", new[:1])), "fp32")
    assert single.interval is None and single.verdict(0.002) == "too few pairs"


def test_failed_runs_and_unmatched_seeds_are_left_out():
    base = [_run(0, 0.80), _run(1, 0.81), _run(2, error="exit status 1")]
    new = [_run(0, 0.805), _run(1, 0.80), _run(2, 0.9), _run(3, 0.7)]
    (c,) = bench_compare.compare_reports(_report(("din", "tiny", "auc", "fp32", base)),
                                         _report(("din", "tiny", "auc", "fp32", new), ("sim", "tiny", "auc", "fp32", new)))
    assert c.seeds == (0, 1)
    assert c.auc_differences == pytest.approx((0.005, -0.01))
    assert (c.base, c.new) == ("base fp32", "new fp32")


def test_throughput_cases_compare_without_auc():
    base = [_run(0, throughput=t) for t in (100.0, 110.0, 90.0)]
    new = [_run(0, throughput=t) for t in (150.0, 160.0, 140.0)]
    (c,) = bench_compare.compare_reports(_report(("sim", "small", "train", "fp32", base)),
                                         _report(("sim", "small", "train", "fp32", new)))
    assert c.throughput_ratio == pytest.approx(1.5)
    assert c.auc_differences == () and c.mean_difference is None
    table = bench_compare.format_comparisons([c], 0.002)
    assert "100 -> 150" in table and "1.500" in table


def test_seed_comes_from_the_command_or_the_repeat_index():
    assert bench_compare.seed_of({"command": "sim-tf train --seed=7 --epochs=1"}, 0) == 7
    assert bench_compare.seed_of({"command": "run.sh --mode train --seed 8 --epochs 1"}, 0) == 8  # the recipe's
    assert bench_compare.seed_of({}, 4) == 4


# Published two-sided 95% quantiles of Student's t, 1..30 degrees of freedom (three decimals).
_TABLE_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
               2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
               2.045, 2.042)


def test_t_quantiles_match_the_table_and_closed_forms():
    for df, tabled in enumerate(_TABLE_T975, 1):
        assert bench_compare.t_quantile(0.975, df) == pytest.approx(tabled, abs=5e-4), df
    # Beyond the table: 40 and 120 degrees of freedom (published 2.021, 1.980), then the normal's 1.960.
    assert bench_compare.t_quantile(0.975, 40) == pytest.approx(2.021, abs=5e-4)
    assert bench_compare.t_quantile(0.975, 120) == pytest.approx(1.980, abs=5e-4)
    assert bench_compare.t_quantile(0.975, 10**7) == pytest.approx(1.95996, abs=1e-4)
    # Other levels: 99% at 10 df (3.169), 99.9% at 5 df (6.869).
    assert bench_compare.t_quantile(0.995, 10) == pytest.approx(3.169, abs=5e-4)
    assert bench_compare.t_quantile(0.9995, 5) == pytest.approx(6.869, abs=5e-4)
    # Closed forms: 1 df is Cauchy, tan(pi (p - 1/2)); 2 df is (2p - 1) / sqrt(2 p (1 - p)).
    for p in (0.6, 0.975, 0.9986842, 0.99999):
        assert bench_compare.t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)
        assert bench_compare.t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9)
    assert bench_compare.t_quantile(0.5, 7) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError):
        bench_compare.t_quantile(0.975, 0)
    with pytest.raises(ValueError):
        bench_compare.t_quantile(1.0, 5)


def test_a_stricter_confidence_widens_the_interval_by_its_quantile():
    differences = (0.001, -0.002, 0.002, 0.003)
    c = bench_compare.Comparison("sim", "small", "auc", "fp32", "amp", seeds=(0, 1, 2, 3),
                                 auc_differences=differences, confidence=0.99)
    half = 5.841 * statistics.stdev(differences) / 2.0  # t(0.995, 3 df) * sd / sqrt(4)
    assert c.interval == pytest.approx((0.001 - half, 0.001 + half), abs=1e-6)
    assert bench_compare.confidence_label(0.99) == "99%"
    assert "mean [99% CI]" in bench_compare.format_comparisons([c], 0.002)


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        bench_compare.load_report(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="not a readable JSON file"):
        bench_compare.load_report(str(tmp_path / "bad.json"))
    (tmp_path / "other.json").write_text(json.dumps({"results": [{"case": {"model": "sim"}, "runs": []}]}))
    with pytest.raises(UserError, match="lacks"):
        bench_compare.load_report(str(tmp_path / "other.json"))
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="not a `sim-tf benchmark` report"):
        bench_compare.load_report(str(tmp_path / "list.json"))
    only_fp32 = _report(("sim", "small", "auc", "fp32", [_run(0, 0.8)]))
    with pytest.raises(UserError, match=r"needs config 'fp32' and another one.*\['fp32'\]"):
        bench_compare.compare_configs(only_fp32, "fp32")
    with pytest.raises(UserError, match="no case in common"):
        bench_compare.compare_reports(only_fp32, _report(("din", "small", "auc", "fp32", [_run(0, 0.8)])))


def test_command_prints_the_table_and_writes_json(tmp_path):
    report = _report(("dien", "/data/demo/tfrecord", "auc", "fp32", [_run(s, 0.85 + 0.001 * s) for s in range(3)]),
                     ("dien", "/data/demo/tfrecord", "auc", "amp", [_run(s, 0.851 + 0.001 * s) for s in range(3)]))
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report))
    out = tmp_path / "cmp.json"
    result = subprocess.run([sys.executable, "-m", "sim_tf", "benchmark-compare", str(path), f"--json_output={out}"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "demo_tfrecord" in result.stdout and "+0.0010 +0.0010 +0.0010" in result.stdout
    (row,) = json.loads(out.read_text())["comparisons"]
    assert row["mean_auc_difference"] == pytest.approx(0.001) and row["within_tolerance"] == 3
    assert row["interval"] == pytest.approx([0.001, 0.001], abs=1e-9) and row["confidence"] == 0.95
    assert row["verdict"] == "mean within +-0.002"
    assert not math.isnan(row["base_auc_sd"])
    bad = subprocess.run([sys.executable, "-m", "sim_tf", "benchmark-compare", str(path), "--baseline_config=fp16"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "unknown config 'fp16'" in bad.stderr
    none = subprocess.run([sys.executable, "-m", "sim_tf", "benchmark-compare"], capture_output=True, text=True,
                          timeout=120)
    assert none.returncode == 1 and "got 0 argument(s)" in none.stderr
    strict = subprocess.run([sys.executable, "-m", "sim_tf", "benchmark-compare", str(path), "--confidence=0.99"],
                            capture_output=True, text=True, timeout=120)
    assert strict.returncode == 0 and "mean [99% CI]" in strict.stdout, strict.stderr
    for level in ("1.5", "0"):
        wrong = subprocess.run([sys.executable, "-m", "sim_tf", "benchmark-compare", str(path), f"--confidence={level}"],
                               capture_output=True, text=True, timeout=120)
        assert wrong.returncode == 1 and "--confidence: a level between 0 and 1" in wrong.stderr, wrong.stderr


def test_search_units_pair_by_seed_within_the_same_history_only():
    def case(gsu, history, runs):
        return {"case": {"model": "sim", "preset": "lifelong", "mode": "auc", "config": "fp32", "gsu": gsu,
                         "long_history": history}, "result": {}, "runs": runs}

    soft = [_run(0, 0.70), _run(1, 0.72)]
    report = {"results": [case("soft", 1000, soft), case("twin", 1000, [_run(1, 0.75), _run(0, 0.71)]),
                          case("eta", 100, [_run(0, 0.9), _run(1, 0.9)])]}
    (c,) = bench_compare.compare_search_units(report, "soft")  # eta has no soft run at 100: not compared
    assert (c.base, c.new) == ("fp32 soft 1,000", "fp32 twin 1,000")
    assert c.auc_differences == pytest.approx((0.01, 0.03))
    with pytest.raises(UserError, match="needs search unit 'hard'"):
        bench_compare.compare_search_units(report, "hard")
