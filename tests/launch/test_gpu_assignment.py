"""`sim-tf launch local` on GPU hosts: every worker sees its own GPUs (simulated device lists)."""

import io
import sys

import pytest

from sim_tf.errors import UserError
from sim_tf.launch import local


@pytest.mark.parametrize(
    "workers,gpus,per,expected,shared",
    [
        (2, [], 0, [None, None], False),                               # CPU host: environment untouched
        (2, ["0", "1"], 0, ["0", "1"], False),                         # one GPU each
        (2, list("01234567"), 0, ["0,1,2,3", "4,5,6,7"], False),       # split evenly
        (8, list("01234567"), 0, list("01234567"), False),             # the recipe's one process per GPU
        (3, list("01234567"), 0, ["0,1", "2,3", "4,5"], False),        # 8 // 3 each, two left idle
        (2, list("01234567"), 1, ["0", "1"], False),                   # --gpus_per_worker 1
        (2, ["4", "6"], 0, ["4", "6"], False),                         # ids from CUDA_VISIBLE_DEVICES kept
        (3, ["0", "1"], 0, ["0", "1", "0"], True),                     # more workers than GPUs: shared
    ],
)
def test_each_worker_gets_its_own_gpus(workers, gpus, per, expected, shared):
    visible, is_shared = local.gpu_assignment(workers, gpus, per)
    assert visible == expected and is_shared == shared
    if not shared and gpus:
        ids = [d for v in visible for d in v.split(",")]
        assert len(ids) == len(set(ids))  # no GPU in two workers: NCCL's "Duplicate GPU detected"


def test_impossible_gpu_requests_are_named():
    with pytest.raises(UserError, match="needs 6 GPUs; this machine has 4"):
        local.gpu_assignment(3, list("0123"), 2)
    with pytest.raises(UserError, match="no GPU to give the workers"):
        local.gpu_assignment(2, [], 1)


def test_host_gpus_reads_cuda_visible_devices_then_nvidia_smi():
    assert local.host_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
    assert local.host_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert local.host_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    listing = "GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-1)\nGPU 1: NVIDIA A100-SXM4-80GB (UUID: GPU-2)\n"
    assert local.host_gpus({}, query=lambda: listing) == ["0", "1"]
    assert local.host_gpus({}, query=lambda: "") == []


def test_launcher_gives_each_worker_its_gpus_and_memory_growth_when_shared(tmp_path, monkeypatch):
    # Workers that print what they were given, instead of training: `sim-tf inspect --help` stands in.
    seen = []
    real_popen = local.subprocess.Popen

    def fake_popen(args, env=None, **kwargs):
        seen.append((env.get("CUDA_VISIBLE_DEVICES"), list(args)))
        return real_popen([sys.executable, "-c", "print('ok')"], env=env, **kwargs)

    monkeypatch.setattr(local.subprocess, "Popen", fake_popen)
    out = io.StringIO()
    code = local.run_local(3, ["train", "--dataset_dir", "x"], out=out, private_network=False, gpus=["0", "1"])
    assert code == 0
    assert [v for v, _ in seen] == ["0", "1", "0"]
    assert all(args[-1] == "--gpu_memory_growth" for _, args in seen)
    assert "GPUs per worker (CUDA_VISIBLE_DEVICES): 0; 1; 0 (shared: memory growth on)" in out.getvalue()
    seen.clear()
    assert local.run_local(0, ["train", "--dataset_dir", "x"], out=io.StringIO(), private_network=False,
                           gpus=list("0123")) == 0
    assert [v for v, _ in seen] == ["0", "1", "2", "3"] and all(a[-1] == "x" for _, a in seen)
    with pytest.raises(UserError, match="one worker per GPU, but this machine has none"):
        local.run_local(0, ["train"], out=io.StringIO(), private_network=False, gpus=[])


def test_launchers_leave_the_collective_timeout_off():
    # A collective timeout makes TensorFlow start a thread per collective: launchers must not set it.
    import os

    root = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "launch")
    for name in ("slurm.sbatch", "ssh_start.sh", "k8s/indexed-job.yaml", "k8s/tfjob.yaml"):
        assert "collective_timeout" not in open(os.path.join(root, name)).read(), name
