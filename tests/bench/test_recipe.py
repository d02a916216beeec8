"""sim-tf benchmark --recipe: the recipe's command line, its RESULT line, and the ratio table, with a fake
runner standing in for the recipe (the real one needs its own 1.6 GB environment)."""

import os
import stat

import pytest
import yaml

from sim_tf.bench import recipe
from sim_tf.bench import suite as bench
from sim_tf.errors import UserError


def _dataset(tmp_path, prebatch=32, train=200_000):
    folder = tmp_path / "data"
    folder.mkdir(parents=True)
    spec = {"metadata": {"prebatch_size": prebatch, "samples": {"train": train, "test": 20_000}}}
    (folder / "feature_spec.yaml").write_text(yaml.safe_dump(spec))
    return str(folder)


def _runner(tmp_path, body):
    folder = tmp_path / "recipe"
    folder.mkdir(parents=True)
    path = folder / "run.sh"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(folder)


def test_recipe_cases_come_first_and_only_where_the_recipe_can_run():
    all_cases = bench.cases(["sim", "din"], ["small"], ["train"], ["fp32", "amp"], recipe=True)
    assert [c.config for c in all_cases] == ["recipe", "fp32", "amp", "recipe", "fp32", "amp"]
    with pytest.raises(UserError, match="the recipe runs only"):
        bench.cases(["sim"], ["lifelong"], ["train"], ["fp32"], gsus=["soft"], long_histories=[100], recipe=True)


def test_recipe_args_mirror_our_run_of_the_case(tmp_path):
    data = _dataset(tmp_path)
    settings = bench.Settings(global_batch_size=4096, warmup_steps=10, steps=30)
    train = recipe.recipe_args(bench.Case("sim", "small", "train", "recipe"), settings, data, 90)
    text = " ".join(train)
    assert "--mode train --model_type sim --global_batch_size 4096 --embedding_dim 16 --lr 0.01 --optimizer adam" in text
    assert "--long_seq_length 90" in text and "--prebatch_train_size 32 --prebatch_test_size 32" in text
    assert "--benchmark --benchmark_warmup_steps 10 --benchmark_steps 30" in text
    # 200,000 samples / 4096 = 48 steps an epoch; 41 steps fit in one epoch.
    assert train[-3:] == ["--drop_remainder", "--epochs", "1"]
    tiny = recipe.recipe_args(bench.Case("sim", "small", "train", "recipe"), settings, _dataset(tmp_path / "t", 1, 8192), 90)
    assert tiny[-1] == "21" and "--prebatch_train_size" not in tiny  # 2 steps an epoch -> 21 epochs for 41 steps
    infer = recipe.recipe_args(bench.Case("din", "small", "inference", "recipe"), settings, data, None)
    assert infer[:2] == ["--mode", "inference"] and "--epochs" not in infer and "--long_seq_length" not in infer
    auc = recipe.recipe_args(bench.Case("dien", "small", "auc", "recipe"), bench.Settings(warmup_steps=60), data, 90, repeat=3)
    assert "--seed 3" in " ".join(auc) and auc[-4:] == ["--epochs", "1", "--benchmark_warmup_steps", "47"]
    # --first_seed moves the recipe's seeds with ours, so its runs still pair with ours by seed.
    fresh = recipe.recipe_args(bench.Case("dien", "small", "auc", "recipe"), bench.Settings(first_seed=5), data, 90,
                               repeat=3)
    assert "--seed 8" in " ".join(fresh)
    assert "--benchmark" not in auc


def test_parse_result_reads_the_last_result_line():
    out = "noise\nRESULT a throughput=1.0 test_auc=- exit=1\nRESULT run throughput=6106.2 test_auc=0.8123 peak_rss_gib=2.30 wall_s=51.0 exit=0\n"
    assert recipe.parse_result(out) == {"throughput": 6106.2, "test_auc": 0.8123, "peak_rss_gib": 2.30,
                                        "wall_s": 51.0, "exit": 0.0}
    assert recipe.parse_result("Traceback ...\n") is None


def test_run_once_reports_the_result_or_the_reason(tmp_path):
    data = _dataset(tmp_path)
    case = bench.Case("din", "small", "inference", "recipe")
    good = _runner(tmp_path / "good", 'echo "fix=$REF_DIN_INFER_FIX results=$RECIPE_RESULTS name=$1"\n'
                   'echo "RESULT $1 throughput=5000.5 test_auc=- peak_rss_gib=1.50 wall_s=9.0 exit=0"\n')
    result = recipe.run_once(recipe.runner_path(good), case, ["--mode", "inference"], data, str(tmp_path / "r"), 60)
    assert result["throughput"] == 5000.5 and result["peak_rss_bytes"] == int(1.5 * 2**30) and "error" not in result
    log = (tmp_path / "r" / "output.txt").read_text()
    assert "fix=1" in log and f"results={tmp_path / 'r'}" in log and "--mode inference" in log
    bad = _runner(tmp_path / "bad", 'echo "TypeError: boom"\necho "RESULT $1 throughput=- exit=1"\nexit 1\n')
    failed = recipe.run_once(recipe.runner_path(bad), case, [], data, str(tmp_path / "r2"), 60)
    assert failed["error"] == "recipe exit status 1: TypeError: boom" and "throughput" not in failed
    slow = _runner(tmp_path / "slow", "sleep 30\n")
    assert recipe.run_once(recipe.runner_path(slow), case, [], data, str(tmp_path / "r3"), 1)["error"] == "timed out after 1s"
    with pytest.raises(UserError, match="no run.sh in it"):
        recipe.runner_path(str(tmp_path))


def test_the_table_shows_each_config_as_a_multiple_of_the_recipe(tmp_path):
    data = _dataset(tmp_path)
    runner = _runner(tmp_path, 'echo "RESULT $1 throughput=4000 test_auc=- peak_rss_gib=1.0 wall_s=1 exit=0"\n')
    settings = bench.Settings(repeats=1, recipe=recipe.runner_path(runner))
    all_cases = [bench.Case("sim", data, "train", "recipe")]
    results = bench.run_suite(all_cases, settings, str(tmp_path / "d"), str(tmp_path / "w"), echo=lambda _: None)
    ours = {"case": {**results[0]["case"], "config": "fp32"}, "result": bench.aggregate([
        {"throughput": 8000.0, "peak_rss_bytes": 2**30}, {"throughput": 10000.0, "peak_rss_bytes": 2**30},
        {"throughput": 9000.0, "peak_rss_bytes": 2**30}])}
    results.append(ours)
    bench.add_recipe_ratios(results)
    assert results[0]["result"]["vs_recipe"] == 1.0 and ours["result"]["vs_recipe"] == 9000.0 / 4000.0
    table = bench.format_table(results)
    assert "vs recipe" in table.splitlines()[0] and "2.25x" in table and "1.00x" in table
    with pytest.raises(UserError, match="need its runner"):
        bench.run_suite(all_cases, bench.Settings(), str(tmp_path / "d"), str(tmp_path / "w"))


def test_machine_line_names_the_vector_features():
    line = bench.machine_line()
    assert f"{os.cpu_count()} CPU(s)" in line and "AVX-512" in line and "AVX512-BF16" in line and "AMX-BF16" in line
