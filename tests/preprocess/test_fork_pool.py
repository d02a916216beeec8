"""Forked preprocessing workers: default signal handling, so closing a pool never hangs."""

import multiprocessing
import signal
import time

import pytest

from sim_tf import faults

_BARRIER = None  # set before each pool forks, so its workers inherit it


def _handlers(_):
    return signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)


def _meet(_):
    _BARRIER.wait(timeout=30)  # returns only once both workers run a task: both are started


@pytest.fixture
def commands_handlers():
    # Every command runs under faults.guard, whose SIGTERM handler raises; forked workers must not inherit
    # it, or a pool's terminate() (SIGTERM to idle workers) can leave a worker hung on the task queue's lock.
    previous = {s: signal.signal(s, faults._raise_stopped) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for s, handler in previous.items():
        signal.signal(s, handler)


def test_pools_end_without_signals_and_workers_have_default_handlers(commands_handlers):
    # Pools whose work ends while a worker may still be starting: stopped through the task queue, they end.
    started = time.monotonic()
    for _ in range(20):
        with faults.fork_pool(2) as pool:
            seen = pool.map(_handlers, range(4))
    assert time.monotonic() - started < 60
    assert set(seen) == {(signal.SIG_DFL, signal.SIG_IGN)}


def test_an_error_terminates_started_workers_at_once(commands_handlers):
    global _BARRIER
    started = time.monotonic()
    for _ in range(10):
        _BARRIER = multiprocessing.get_context("fork").Barrier(2)
        with pytest.raises(RuntimeError, match="stop"):
            with faults.fork_pool(2) as pool:
                pool.map(_meet, range(2), chunksize=1)
                pool.apply_async(time.sleep, (60,))  # a busy worker is terminated too
                raise RuntimeError("stop")
    assert time.monotonic() - started < 60
