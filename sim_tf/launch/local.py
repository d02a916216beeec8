"""Starting N workers on this machine, each with its own TF_CONFIG.

:func:`run_local` starts N workers on 127.0.0.1 with free ports and the right TF_CONFIG each, prefixes
every output line with ``[worker i]``, and when a worker fails stops the others and reports which
worker failed and how (no orphans: each worker runs in its own process group, which is killed).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque

from sim_tf.errors import UserError
from sim_tf.launch.cluster import tf_config
from sim_tf.launch.isolation import IsolationError, enter_private_network


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports the OS reports free right now (held open together, so they are distinct)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def host_gpus(environ=None, query=None) -> list[str]:
    """The GPUs this launcher may hand out, as CUDA device ids: CUDA_VISIBLE_DEVICES when it is set (its
    entries, "" meaning none), else the GPUs `nvidia-smi -L` lists (none when it is missing or fails).
    ``query`` replaces the nvidia-smi call (tests)."""
    environ = os.environ if environ is None else environ
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    if query is None:
        def query():
            try:
                result = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                return ""
            return result.stdout if result.returncode == 0 else ""
    return [str(i) for i, line in enumerate(query().splitlines()) if line.startswith("GPU ")]


def gpu_assignment(num_workers: int, gpus: list[str], gpus_per_worker: int = 0) -> tuple[list[str | None], bool]:
    """(CUDA_VISIBLE_DEVICES of each worker, whether workers share a GPU).

    Every worker that sees every GPU would put two NCCL ranks on one device ("Duplicate GPU detected"),
    so each worker gets its own slice: ``gpus_per_worker`` GPUs (0: the GPUs split evenly, at least one
    each). With more workers than GPUs, worker i shares GPU i mod n (development only: memory growth must
    then be on). Without GPUs the workers' environment is left alone (None).
    """
    if gpus_per_worker < 0:
        raise UserError(f"--gpus_per_worker must be >= 0 (0: split the GPUs evenly), got {gpus_per_worker}")
    if not gpus:
        if gpus_per_worker:
            raise UserError(f"--gpus_per_worker {gpus_per_worker}: this machine has no GPU to give the workers "
                            f"(CUDA_VISIBLE_DEVICES and nvidia-smi list none)")
        return [None] * num_workers, False
    per = gpus_per_worker or max(1, len(gpus) // num_workers)
    if per * num_workers <= len(gpus):
        return [",".join(gpus[i * per:(i + 1) * per]) for i in range(num_workers)], False
    if gpus_per_worker > 1:
        raise UserError(f"--gpus_per_worker {gpus_per_worker} x {num_workers} workers needs "
                        f"{gpus_per_worker * num_workers} GPUs; this machine has {len(gpus)} ({','.join(gpus)})")
    return [gpus[i % len(gpus)] for i in range(num_workers)], True


class _Worker:
    def __init__(self, index: int, process: subprocess.Popen):
        self.index = index
        self.process = process
        self.last_lines: deque[str] = deque(maxlen=20)
        self.threads: list[threading.Thread] = []


def _pump(worker: _Worker, stream, out, lock):
    for line in iter(stream.readline, ""):
        worker.last_lines.append(line.rstrip("\n"))
        with lock:
            out.write(f"[worker {worker.index}] {line}")
            out.flush()
    stream.close()


_NOISE = re.compile(r"^(?:[IW]\d{4} |WARNING: All log messages|To enable the following instructions)")


def _error_line(lines) -> str:
    """The most telling of a failed worker's last lines (TensorFlow's start-up chatter is skipped)."""
    lines = [line.strip() for line in lines if line.strip() and not _NOISE.match(line.strip())]
    for line in reversed(lines):
        if re.search(r"(error|Error|Exception|Killed|Aborted)", line):
            return line
    return lines[-1] if lines else "(no output)"


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def run_local(
    num_workers: int,
    command: list[str],
    grace_s: float = 15.0,
    timeout_s: float = 0.0,
    out=None,
    env=None,
    private_network: bool = True,
    gpus_per_worker: int = 0,
    gpus: list[str] | None = None,
) -> int:
    """Runs ``python -m sim_tf COMMAND`` as ``num_workers`` local workers; returns the exit status.

    With ``private_network`` (the default) this process first moves into a network namespace of its own
    (see isolation.py), so the workers' ports are reachable from nothing but each other.
    SIGINT/SIGTERM to the launcher are forwarded to the workers (so they can checkpoint and exit).
    Each worker sees its own GPUs (:func:`gpu_assignment`); ``num_workers`` 0 starts one per GPU, the
    recipe's layout (``gpus`` overrides :func:`host_gpus`, for tests).
    """
    base_env = dict(os.environ if env is None else env)
    gpus = host_gpus(base_env) if gpus is None else gpus
    if num_workers == 0:
        if not gpus:
            raise UserError("--num_workers 0 starts one worker per GPU, but this machine has none "
                            "(CUDA_VISIBLE_DEVICES and nvidia-smi list none); give a number of workers")
        num_workers = len(gpus)
    if num_workers < 1:
        raise UserError(f"--num_workers must be >= 1, got {num_workers}")
    visible, shared = gpu_assignment(num_workers, gpus, gpus_per_worker)
    if not command:
        raise UserError("nothing to run: put the trainer's arguments after `--`, e.g. "
                        "`sim-tf launch local --num_workers 2 -- train --dataset_dir DIR`")
    from sim_tf.cli import COMMANDS

    if command[0] not in COMMANDS or command[0] in ("launch",):
        raise UserError(f"unknown command {command[0]!r} after `--`: the workers run a sim-tf command such as "
                        f"train, evaluate or inference")
    out = out or sys.stdout
    if shared and command[0] in ("train", "evaluate", "inference") and not any(
            a.split("=")[0] in ("--gpu_memory_growth", "--nogpu_memory_growth") for a in command):
        command = [*command, "--gpu_memory_growth"]  # several workers on one GPU must not each take all of it
    if private_network:
        try:
            enter_private_network()
        except IsolationError as e:
            raise IsolationError(
                f"cannot give the workers a private network ({e}); `--network host` runs them on this "
                f"machine's network instead, where their ports are reachable from other machines") from None
        where = "a private network namespace (reachable only from each other)"
    else:
        where = "this machine's network: their ports listen on every interface, reachable from other machines"
    addresses = [f"127.0.0.1:{port}" for port in free_ports(num_workers)]
    lock = threading.Lock()
    workers: list[_Worker] = []
    for index in range(num_workers):
        worker_env = {**base_env, "TF_CONFIG": json.dumps(tf_config(addresses, index))}
        if visible[index] is not None:
            worker_env["CUDA_VISIBLE_DEVICES"] = visible[index]
        process = subprocess.Popen(
            [sys.executable, "-u", "-m", "sim_tf", *command],
            env=worker_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: the launcher can kill everything it started
        )
        worker = _Worker(index, process)
        thread = threading.Thread(target=_pump, args=(worker, process.stdout, out, lock), daemon=True)
        thread.start()
        worker.threads.append(thread)
        workers.append(worker)
    with lock:
        out.write(f"[launcher] started {num_workers} worker(s) on {', '.join(addresses)} "
                  f"(pids {', '.join(str(w.process.pid) for w in workers)}) in {where}\n")
        if visible[0] is not None:
            out.write(f"[launcher] GPUs per worker (CUDA_VISIBLE_DEVICES): {'; '.join(visible)}"
                      + (" (shared: memory growth on)" if shared else "") + "\n")
        out.flush()

    stop_requested = []

    def forward(signum, frame):
        stop_requested.append(signum)
        for w in workers:
            _signal_group(w.process, signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    started = time.monotonic()
    failed: _Worker | None = None
    try:
        while True:
            running = [w for w in workers if w.process.poll() is None]
            for w in workers:
                code = w.process.poll()
                if code not in (None, 0) and failed is None and not stop_requested and code != 75:
                    failed = w
            if failed is not None or not running:
                break
            if timeout_s and time.monotonic() - started > timeout_s:
                with lock:
                    out.write(f"[launcher] the job ran past --timeout_s {timeout_s:g}; stopping it\n")
                _stop_all(workers, grace_s)
                return 124
            time.sleep(0.2)
        if failed is not None:
            others = [w for w in workers if w is not failed and w.process.poll() is None]
            # A peer that was suspended (or stuck in the kernel) is why the others' collectives time out.
            stuck = [w.index for w in others if _state(w.process.pid) in ("T", "t", "D")]
            _stop_all(others, grace_s)
            for t in failed.threads:
                t.join(timeout=5)
            message = (f"[launcher] worker {failed.index} {_describe_exit(failed.process.returncode)}: "
                       f"{_error_line(list(failed.last_lines))}; stopped the other worker(s)")
            if stuck:
                message += (f". Worker(s) {', '.join(map(str, stuck))} had stopped running (suspended or stuck in "
                            f"I/O): worker {failed.index} most likely failed waiting for them")
            with lock:
                out.write(message + "\n")
                out.flush()
            return failed.process.returncode if failed.process.returncode > 0 else 1
        for w in workers:
            for t in w.threads:
                t.join(timeout=5)
        codes = [w.process.returncode for w in workers]
        if stop_requested:
            with lock:
                out.write(f"[launcher] stopped on signal {signal.Signals(stop_requested[0]).name}; worker exit "
                          f"statuses {codes}\n")
        if all(c == 0 for c in codes):
            return 0
        if all(c in (0, 75) for c in codes):
            return 75  # the workers saved a checkpoint and asked to be run again
        return 1
    finally:
        _stop_all([w for w in workers if w.process.poll() is None], grace_s)
        for s, handler in previous.items():
            signal.signal(s, handler)


def _state(pid: int) -> str:
    """The process's state letter from /proc (R running, S sleeping, T stopped, D in I/O, ...), "" if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def _signal_group(process: subprocess.Popen, sig) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop_all(workers: list[_Worker], grace_s: float) -> None:
    """SIGTERM each worker's process group, then SIGKILL whatever is left after ``grace_s``."""
    for w in workers:
        _signal_group(w.process, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for w in workers:
        try:
            w.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for w in workers:
        # A hung TensorFlow process may ignore SIGTERM; the group kill also takes its children.
        _signal_group(w.process, signal.SIGKILL)
        try:
            w.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
