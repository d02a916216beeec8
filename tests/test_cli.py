"""The console script end to end, as a user runs it."""

import os
import subprocess
import sys

import pytest

from sim_tf.data import feature_spec as fs


def run(*args, check=True, timeout=300):
    result = subprocess.run([sys.executable, "-m", "sim_tf", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"sim-tf {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def test_usage_and_unknown_command():
    assert "synthesize" in run("--help").stdout
    result = run("frobnicate", check=False)
    assert result.returncode == 2 and "unknown command 'frobnicate'" in result.stderr


def test_synthesize_then_inspect(tmp_path):
    out = str(tmp_path / "tiny")
    result = run("synthesize", "--preset", "tiny", "--output", out, "--train_samples", "600", "--seed", "3")
    assert "dataset written to" in result.stdout
    spec = fs.FeatureSpec.from_yaml(os.path.join(out, "feature_spec.yaml"))
    assert spec.metadata["samples"] == {"train": 600, "test": 2048}
    assert not [p for p in os.listdir(tmp_path) if "partial" in p]
    info = run("inspect", "--dataset_dir", out).stdout
    assert "train: 600 samples" in info and "prebatched, 32 samples per record" in info
    again = run("synthesize", "--preset", "tiny", "--output", out, check=False)
    assert again.returncode == 1 and "already exists and is not empty; pass --overwrite" in again.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["synthesize", "--preset", "huge", "--output", "x"], "flag --preset=huge"),
        (["synthesize"], "Flag --output must have a value other than None"),
        (["synthesize", "--output", "x", "--num_files", "0"], "--num_files"),
        (["synthesize", "--preset", "tiny", "--output", "x", "--categories", "5000"], "need at least as many items"),
        (["inspect", "--dataset_dir", "/nonexistent"], "does not exist"),
    ],
)
def test_bad_flags_give_one_clear_message(args, message, tmp_path):
    result = run(*args, check=False)
    assert result.returncode in (1, 2)
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_runs_the_whole_pipeline(tmp_path):
    """README's main job (reduced: DIN, the fastest model): raw files -> parquet -> TFRecord -> train."""
    work = tmp_path / "demo"
    out = run("demo", "--workdir", str(work), "--model_type", "din", timeout=900).stdout
    for stage in ("1/3 synthesizing raw reviews", "2/3 sim-tf preprocess amazon", "3/3 sim-tf convert", "test AUC"):
        assert stage in out, out
    data = work / "data" / "amazon-raw-seed0"
    assert sorted(os.listdir(data)) == ["parquet", "raw", "tfrecord"]
    again = run("demo", "--workdir", str(work), "--model_type", "din", "--epochs", "1", timeout=900).stdout
    assert "1/3" not in again and "test AUC" in again  # every stage's output is reused


def _clean_env():
    """The environment a user has: no TF_CPP_MIN_LOG_LEVEL from the test session."""
    return {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}


# `sim-tf NAME --help`, then whether TensorFlow was imported (its last line on stderr).
_HELP_PROBE = ("import sys\nfrom sim_tf import cli\ntry:\n    cli.main(['sim-tf', sys.argv[1], '--help'])\n"
               "except SystemExit as e:\n    code = e.code\n"
               "print('TensorFlow imported' if 'tensorflow' in sys.modules else 'no TensorFlow', file=sys.stderr)\n"
               "sys.exit(code)")


def test_every_command_help_lists_its_own_flags_without_importing_tensorflow():
    """`--help` lists the command's flags and answers at once: no command's flags import TensorFlow,
    which takes seconds to load."""
    from sim_tf import docs
    from sim_tf.cli import COMMANDS

    names = list(COMMANDS)
    processes = {name: subprocess.Popen([sys.executable, "-c", _HELP_PROBE, name], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=_clean_env()) for name in names}
    outputs = {name: p.communicate(timeout=300) + (p.returncode,) for name, p in processes.items()}
    for name in names:
        stdout, stderr, code = outputs[name]
        assert code == 0, (name, stderr)
        assert stderr.strip().endswith("no TensorFlow"), (name, stderr[-2000:])
        assert stdout.startswith(f"sim-tf {name}: "), name
        module = COMMANDS[name][0]
        owners = [docs.TRAINER_FLAGS] if module == "sim_tf.commands.train" else [module]
        if name in ("demo", "export"):
            owners.append(docs.TRAINER_FLAGS)
        expected = [row[0] for owner in owners for row in docs.command_flags(owner)]
        if name != "profile":  # every command but `profile LOGDIR` has flags of its own
            assert expected, name
        for flag in expected:
            assert f"--{flag}:" in stdout or f"--[no]{flag}:" in stdout, (name, flag)
        assert "oneDNN" not in stderr and "InitializeLog" not in stderr, (name, stderr)


def test_a_normal_run_prints_no_tensorflow_start_up_lines(tmp_path):
    result = subprocess.run([sys.executable, "-m", "sim_tf", "synthesize", "--preset", "tiny", "--output",
                             str(tmp_path / "d"), "--train_samples", "300"], capture_output=True, text=True,
                            env=_clean_env(), timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    verbose = subprocess.run([sys.executable, "-m", "sim_tf", "synthesize", "--tf_log_level=0", "--preset", "tiny",
                              "--output", str(tmp_path / "e"), "--train_samples", "300"], capture_output=True, text=True,
                             env=_clean_env(), timeout=300)
    assert verbose.returncode == 0 and "oneDNN" in verbose.stderr  # still there when asked for


@pytest.mark.parametrize(
    "args,normalised",
    [
        ([], False),  # SIM soft: the recipe's head
        (["--gsu=hard"], True),
        (["--gsu=eta"], True),
        (["--gsu=sdim"], True),
        (["--gsu=twin"], True),
        (["--gsu=eta", "--nohead_batch_norm"], False),
        (["--head_batch_norm"], True),
        (["--model_type=din", "--gsu=eta"], False),
        (["--model_type=dien"], False),
    ],
)
def test_head_batch_norm_defaults_by_search_unit_and_the_flag_overrides_it(args, normalised):
    """Unset, --head_batch_norm is on for SIM's hard search and the successors and off for soft, DIN and
    DIEN; given either way, the flag decides."""
    from absl import flags

    from sim_tf.train import flags as trainer_flags

    values = flags.FLAGS
    values.unparse_flags()
    values(["sim-tf", "--dataset_dir=unused", *args])
    try:
        assert trainer_flags.config_from_flags("train").model.head_batch_norm is normalised
    finally:
        values.unparse_flags()
