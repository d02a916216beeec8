"""Forked preprocessing workers: default signal handling, so closing a pool never hangs."""

import signal
import time

from sim_tf import faults


def _handlers(_):
    return signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)


def test_workers_die_on_sigterm_even_under_the_commands_handlers():
    # Every command runs under faults.guard, whose SIGTERM handler raises; forked workers must not inherit
    # it, or a pool's terminate() (SIGTERM to idle workers) can leave a worker hung on the task queue's lock.
    previous = {s: signal.signal(s, faults._raise_stopped) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        started = time.monotonic()
        for _ in range(20):
            with faults.fork_pool(2) as pool:
                seen = pool.map(_handlers, range(4))
        assert time.monotonic() - started < 60
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    assert set(seen) == {(signal.SIG_DFL, signal.SIG_IGN)}
