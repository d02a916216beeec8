"""A private network for local workers: a new network namespace whose only interface is its own loopback.

TensorFlow's gRPC server binds every interface (the wildcard address; it has no option to bind
127.0.0.1), and a worker's port accepts unauthenticated requests that run graph ops, file writes
included. `sim-tf launch local` therefore moves itself into a fresh network namespace before it starts
the workers: they reach each other over that namespace's loopback, and nothing outside it, this
machine's other processes and its external addresses included, can connect to them. Ports picked there
cannot be taken by another process in the meantime either.

Root gets the namespace directly; other users get it inside a user namespace (where they map to root
only for the namespace's own network). Either way it is Linux's unshare(2), as `unshare --net` does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import socket
import struct
import threading

from sim_tf.errors import UserError

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


class IsolationError(UserError):
    """The private network could not be set up."""


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _loopback_up() -> None:
    """Sets the namespace's `lo` up (a new network namespace starts with it down)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | _IFF_UP))


def interfaces() -> list[str]:
    """The network interfaces this process sees (from /proc/net/dev)."""
    with open("/proc/net/dev") as f:
        return [line.split(":", 1)[0].strip() for line in f.readlines()[2:] if ":" in line]


def enter_private_network() -> None:
    """Moves this process, and every process it starts afterwards, into a new network namespace with
    only a loopback interface; raises IsolationError (naming the reason) if the system does not allow it."""
    if not os.path.exists("/proc/self/ns/net"):
        raise IsolationError("this system has no Linux network namespaces")
    if threading.active_count() > 1:
        raise IsolationError("the launcher must enter the private network before it starts any thread")
    uid, gid = os.getuid(), os.getgid()
    flags = CLONE_NEWNET | (0 if uid == 0 else CLONE_NEWUSER)
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    if libc.unshare(flags) != 0:
        raise IsolationError(f"unshare(2) failed: {os.strerror(ctypes.get_errno())}")
    try:
        if uid != 0:
            _write("/proc/self/setgroups", "deny")
            _write("/proc/self/uid_map", f"0 {uid} 1")
            _write("/proc/self/gid_map", f"0 {gid} 1")
        _loopback_up()
    except OSError as e:
        raise IsolationError(f"setting up the namespace failed: {e}") from None
    if interfaces() != ["lo"]:
        raise IsolationError(f"the new namespace has interfaces {interfaces()}, expected only lo")
