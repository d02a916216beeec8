"""Multi-worker training on loopback: the local launcher, MultiWorkerMirroredStrategy and faults."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from sim_tf.launch import cluster as launch
from sim_tf.errors import UserError


def test_tf_config_from_a_host_list():
    config = launch.tf_config(["a:2222", "b:2222"], 1)
    assert config == {"cluster": {"worker": ["a:2222", "b:2222"]}, "task": {"type": "worker", "index": 1}}
    with pytest.raises(UserError, match="index 2 is out of range for 2"):
        launch.tf_config(["a:2222", "b:2222"], 2)
    with pytest.raises(UserError, match="'a' is not HOST:PORT"):
        launch.tf_config(["a", "b:2222"], 0)
    with pytest.raises(UserError, match="must be distinct"):
        launch.tf_config(["a:1", "a:1"], 0)


def test_slurm_host_lists_and_tf_config():
    assert launch.expand_hostlist("gpu[01-03,07],login1") == ["gpu01", "gpu02", "gpu03", "gpu07", "login1"]
    assert launch.expand_hostlist("n7") == ["n7"]
    assert launch.expand_hostlist("a[8-10]-ib") == ["a8-ib", "a9-ib", "a10-ib"]
    env = {"SLURM_JOB_NODELIST": "node[1-2]", "SLURM_NODEID": "1", "SLURM_PROCID": "1"}
    config = launch.slurm_tf_config(env, port=3000)
    assert config["cluster"]["worker"] == ["node1:3000", "node2:3000"] and config["task"]["index"] == 1
    with pytest.raises(UserError, match="SLURM_JOB_NODELIST is not set"):
        launch.slurm_tf_config({})


def test_tf_config_command_prints_json():
    out = subprocess.run([sys.executable, "-m", "sim_tf", "launch", "tf-config", "--workers", "h1:5,h2:5", "--index",
                          "1"], capture_output=True, text=True, timeout=120)
    assert json.loads(out.stdout)["task"]["index"] == 1


@pytest.fixture(scope="module")
def one_file_dataset(tmp_path_factory):
    """`tiny` in one TFRecord file: with fewer files than workers, each worker reads every 2nd record."""
    from sim_tf.data import synthetic

    path = tmp_path_factory.mktemp("tiny1")
    return synthetic.synthesize(synthetic.PRESETS["tiny"], str(path), num_files=1, log=None)


def trainer_args(dataset, results, **extra):
    args = {"dataset_dir": dataset.base_directory, "results_dir": str(results), "model_type": "din",
            "long_seq_length": 15, "top_k": 8, "embedding_dim": 8, "global_batch_size": 128, "epochs": 2,
            "shuffle_buffer": 1, "seed": 3, "log_every_steps": 32, "collective_timeout_s": 60}
    args.update(extra)
    return [f"--{k}={v}" for k, v in args.items()]


def sim_tf(*args, timeout=600, check=True):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, "-m", "sim_tf", *args], capture_output=True, text=True, timeout=timeout,
                            env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"sim-tf {' '.join(args)} exited {result.returncode}:\n{result.stdout[-5000:]}\n"
                             f"{result.stderr[-5000:]}")
    return result


def model_weights(path):
    latest = tf.train.latest_checkpoint(path)
    reader = tf.train.load_checkpoint(latest)
    return {n: reader.get_tensor(n) for n, _ in tf.train.list_variables(latest) if n.startswith("model/")}, latest


def digests(output):
    return dict(re.findall(r"worker (\d+): model weights digest ([0-9a-f]+)", output))


def test_two_workers_match_one_process_and_agree(one_file_dataset, tmp_path):
    # SGD: the update is linear in the gradient, so the runs differ only by the order of floating-point sums.
    # (Adam divides by sqrt(v): on rows whose gradients nearly cancel it turns rounding noise into steps of
    # size lr, and two exact-maths runs drift apart chaotically; measured 0.34 after 256 steps.)
    sgd = {"optimizer": "sgd", "lr": 0.05}
    sim_tf("train", *trainer_args(one_file_dataset, tmp_path / "one", save_checkpoint_path=tmp_path / "c1", **sgd))
    multi = sim_tf("launch", "local", "--num_workers", "2", "--",
                   "train", *trainer_args(one_file_dataset, tmp_path / "two", save_checkpoint_path=tmp_path / "c2", **sgd))
    assert "strategy multi_worker (2 replica(s) on CPU, ring all-reduce, worker 0 of 2)" in multi.stdout
    found = digests(multi.stdout)
    assert set(found) == {"0", "1"} and found["0"] == found["1"]  # both workers hold exactly the same weights
    one, path_one = model_weights(tmp_path / "c1")
    two, path_two = model_weights(tmp_path / "c2")
    assert path_one.endswith("ckpt-256") and path_two.endswith("ckpt-256")  # 2 epochs x 128 steps each
    assert one.keys() == two.keys()
    for name in one:  # 256 steps; measured max difference 3e-8
        np.testing.assert_allclose(two[name], one[name], atol=1e-6, err_msg=name)
    log = [json.loads(line) for line in open(tmp_path / "two" / "log.json")]
    evals = [r for r in log if r["type"] == "eval"]
    assert [r["samples"] for r in evals] == [2048, 2048]  # every test sample once, across both workers


def _start_launcher(args):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen([sys.executable, "-m", "sim_tf", "launch", "local", "--num_workers", "2", "--", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)


def _read_until(process, pattern, deadline_s):
    lines = []
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if re.search(pattern, line):
            return lines
    raise AssertionError(f"{pattern!r} not seen within {deadline_s}s:\n{''.join(lines[-40:])}")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def test_a_killed_worker_stops_the_job_with_a_clear_message(one_file_dataset, tmp_path):
    process = _start_launcher(["train", *trainer_args(one_file_dataset, tmp_path, epochs=50, log_every_steps=8)])
    try:
        lines = _read_until(process, r"\[launcher\] started", 60)
        pids = [int(p) for p in re.search(r"pids (\d+), (\d+)", lines[-1]).groups()]
        _read_until(process, r"step \d+/128", 120)
        killed = time.monotonic()
        os.kill(pids[1], signal.SIGKILL)
        rest, _ = process.communicate(timeout=90)
        elapsed = time.monotonic() - killed
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode != 0
    assert "[launcher] worker 1 was killed by signal SIGKILL" in rest, rest[-3000:]
    assert elapsed < 60
    assert not any(_alive(pid) for pid in pids)


def test_sigterm_checkpoints_and_a_relaunch_resumes_to_the_end(one_file_dataset, tmp_path):
    ckpt = tmp_path / "ckpt"
    args = ["train", *trainer_args(one_file_dataset, tmp_path / "r1", save_checkpoint_path=ckpt, log_every_steps=8)]
    process = _start_launcher(args)
    try:
        _read_until(process, r"epoch 1/2 step 40/128", 180)
        os.killpg(process.pid, signal.SIGTERM)  # what a scheduler does on preemption
        rest, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 75, rest[-3000:]
    stopped = int(re.search(r"stopped at step (\d+) on request \(saved", rest).group(1))
    assert 40 <= stopped < 256
    _, latest = model_weights(ckpt)
    assert latest.endswith(f"ckpt-{stopped}")
    again = sim_tf("launch", "local", "--num_workers", "2", "--",
                   "train", *trainer_args(one_file_dataset, tmp_path / "r2", save_checkpoint_path=ckpt))
    assert f"restored {ckpt}/ckpt-{stopped} (step {stopped}" in again.stdout
    found = digests(again.stdout)
    assert found["0"] == found["1"]
    _, latest = model_weights(ckpt)
    assert latest.endswith("ckpt-256")  # finished with the right number of steps
    summary = [json.loads(line) for line in open(tmp_path / "r2" / "log.json")][-1]
    evaluation = [json.loads(line) for line in open(tmp_path / "r2" / "log.json") if '"eval"' in line][-1]
    assert summary["type"] == "summary" and summary["test_auc"] == evaluation["test_auc"]


def test_cluster_scripts_parse():
    import yaml

    root = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "launch")
    for script in ("slurm.sbatch", "ssh_start.sh"):
        subprocess.run(["bash", "-n", os.path.join(root, script)], check=True)
    job = list(yaml.safe_load_all(open(os.path.join(root, "k8s", "indexed-job.yaml"))))
    assert [d["kind"] for d in job] == ["Service", "Job", "NetworkPolicy"]
    assert job[1]["spec"]["completionMode"] == "Indexed"
    # Only the job's own pods may reach a worker's port.
    policy = job[2]["spec"]
    assert policy["podSelector"]["matchLabels"] == {"job-name": "sim-tf"}
    assert policy["ingress"] == [{"from": [{"podSelector": {"matchLabels": {"job-name": "sim-tf"}}}],
                                  "ports": [{"protocol": "TCP", "port": 23456}]}]
    tfjob, tf_policy = yaml.safe_load_all(open(os.path.join(root, "k8s", "tfjob.yaml")))
    assert tfjob["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] == 2
    own = {"training.kubeflow.org/job-name": "sim-tf"}
    assert tf_policy["spec"]["podSelector"]["matchLabels"] == own
    assert tf_policy["spec"]["ingress"] == [{"from": [{"podSelector": {"matchLabels": own}}]}]


@pytest.mark.parametrize("script", ["ssh_start.sh", "slurm.sbatch"])
def test_cluster_scripts_pass_each_argument_whole_and_run_nothing_from_it(tmp_path, script):
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "launch")
    bin_dir, record, canary = tmp_path / "bin", tmp_path / "args.json", tmp_path / "pwned"
    bin_dir.mkdir()
    stubs = {
        # ssh HOST COMMAND runs COMMAND through the remote user's shell: so does this stand-in.
        "ssh": '#!/bin/bash\nwhile [ "$1" = -o ]; do shift 2; done\nshift\nexec bash -c "$1"\n',
        # srun runs its command once per task; its own options come first.
        "srun": '#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n',
        "sim-tf": '#!/bin/bash\nif [ "$1" = launch ]; then echo \'{"task": {"index": 0}}\'; exit 0; fi\n'
                  f'exec {sys.executable} -c "import json, sys; json.dump(sys.argv[1:], open(\'{record}\', \'w\'))" "$@"\n',
    }
    for name, text in stubs.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    hostile = ["--dataset_dir", "/data/with space", f"--results_dir=$(touch {canary})", "a;b", "`id`"]
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "7"}
    args = ["bash", os.path.join(root, script)] + (["h1", "--"] if script == "ssh_start.sh" else []) + hostile
    subprocess.run(args, env=env, check=True, timeout=60, capture_output=True)
    received = json.loads(record.read_text())
    for arg in hostile:
        assert arg in received, (arg, received)
    assert not canary.exists()


def _external_addresses():
    """This machine's own non-loopback IPv4 addresses (no traffic is sent to find them)."""
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return []
    return [a for a in out if "." in a and not a.startswith("127.")]


def _connects(host, port):
    import socket

    with socket.socket() as s:
        s.settimeout(2)
        try:
            s.connect((host, port))
            return True
        except OSError:
            return False


@pytest.mark.parametrize("network", ["private", "host"])
def test_local_workers_are_reachable_only_from_each_other(one_file_dataset, tmp_path, network):
    """With the default private network, a running job's worker ports refuse connections from this
    machine's own external address (and from its loopback, which is another namespace's); with
    `--network host` (the control) the same probe gets through, so the probe can see an open port."""
    external = _external_addresses()
    if not external:
        pytest.skip("this machine has no non-loopback IPv4 address to probe from")
    args = ["train", *trainer_args(one_file_dataset, tmp_path, epochs=50, log_every_steps=8)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    process = subprocess.Popen([sys.executable, "-m", "sim_tf", "launch", "local", "--num_workers", "2",
                                f"--network={network}", "--", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    try:
        lines = _read_until(process, r"\[worker 0\] epoch 1/50", 120)
        started = [line for line in lines if line.startswith("[launcher] started")]
        assert started, lines
        ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", started[0])]
        assert len(ports) == 2
        reached = {(host, port): _connects(host, port) for host in external + ["127.0.0.1"] for port in ports}
        if network == "private":
            assert "private network namespace" in started[0]
            assert not any(reached.values()), reached
        else:
            assert all(reached[(host, port)] for host in external for port in ports), reached
    finally:
        process.send_signal(signal.SIGTERM)  # forwarded: the workers stop after their current step
        try:
            process.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def test_a_suspended_worker_is_named_as_the_cause_of_the_timeout(one_file_dataset, tmp_path):
    """Worker 1 is suspended (SIGSTOP): worker 0's collective times out, and the launcher says worker 1 had
    stopped running rather than blaming worker 0 alone."""
    process = _start_launcher(["train", *trainer_args(one_file_dataset, tmp_path, epochs=50, log_every_steps=8,
                                                      collective_timeout_s=10)])
    lines = _read_until(process, r"\[worker 0\] epoch 1/50", 120)
    pids = [int(p) for p in re.search(r"\(pids (\d+), (\d+)\)", "".join(lines)).groups()]
    os.kill(pids[1], signal.SIGSTOP)
    out, _ = process.communicate(timeout=180)
    assert process.returncode != 0
    verdict = [line for line in out.splitlines() if line.startswith("[launcher] worker")][-1]
    assert "Worker(s) 1 had stopped running" in verdict and "worker 0 most likely failed waiting for them" in verdict
