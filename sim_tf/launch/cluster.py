"""TF_CONFIG for real clusters: from a host list and an index, or from SLURM's environment (one task per node)."""

from __future__ import annotations

import os
import re

from sim_tf.errors import UserError


def tf_config(workers: list[str], index: int) -> dict:
    """TF_CONFIG for worker ``index`` of ``workers`` ("host:port" each); worker 0 is the chief."""
    if not workers:
        raise UserError("the worker list is empty")
    for address in workers:
        if not re.fullmatch(r"[^\s:,]+:\d{1,5}", address):
            raise UserError(f"worker address {address!r} is not HOST:PORT")
        if not 1 <= int(address.rsplit(":", 1)[1]) <= 65535:
            raise UserError(f"worker address {address!r}: the port must be between 1 and 65535")
    if len(set(workers)) != len(workers):
        raise UserError(f"worker addresses must be distinct, got {workers}")
    if not 0 <= index < len(workers):
        raise UserError(f"worker index {index} is out of range for {len(workers)} worker(s)")
    return {"cluster": {"worker": list(workers)}, "task": {"type": "worker", "index": index}}


def expand_hostlist(text: str) -> list[str]:
    """Expands SLURM's compressed host lists: "gpu[01-03,07],login1" -> gpu01 gpu02 gpu03 gpu07 login1."""
    hosts = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", text):
        match = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", part)
        if not match:
            hosts.append(part)
            continue
        prefix, ranges, suffix = match.groups()
        for item in ranges.split(","):
            if "-" in item:
                low, high = item.split("-", 1)
                width = len(low)
                hosts.extend(f"{prefix}{n:0{width}d}{suffix}" for n in range(int(low), int(high) + 1))
            else:
                hosts.append(f"{prefix}{item}{suffix}")
    return hosts


def slurm_tf_config(environ=None, port: int = 23456) -> dict:
    """TF_CONFIG from SLURM's environment, one task (worker) per node."""
    environ = os.environ if environ is None else environ
    nodes = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
    if not nodes:
        raise UserError("SLURM_JOB_NODELIST is not set: run inside an allocation (sbatch/srun)")
    rank = environ.get("SLURM_NODEID", environ.get("SLURM_PROCID"))
    if rank is None:
        raise UserError("neither SLURM_NODEID nor SLURM_PROCID is set: start one task per node with srun")
    hosts = expand_hostlist(nodes)
    return tf_config([f"{host}:{port}" for host in hosts], int(rank))
