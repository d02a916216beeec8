"""Faults that come from outside the program (the disk, the files, a signal) turned into one message.

The CLI runs every command under :func:`guard`: a UserError prints its message; an OSError (a full disk,
a file too large, a path that is not a folder, no permission), a corrupt or truncated compressed file and
TensorFlow's I/O errors print one line naming the file and what to do; SIGTERM and SIGINT raise
:class:`Stopped` so that every ``finally`` removes its partial output before the command exits with
128 + the signal number. ``--debug`` (or SIM_TF_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import os
import signal
import sys
import zlib

_HINTS = {
    errno.ENOSPC: "the disk is full: free space, or write the output elsewhere",
    errno.EDQUOT: "the disk quota is used up: free space, or write the output elsewhere",
    errno.EFBIG: "the file grew larger than this file system allows: write the output elsewhere",
    errno.EACCES: "no permission: choose a location you can write to (or read from)",
    errno.EPERM: "not permitted: choose another location",
    errno.EROFS: "the file system is read-only: write the output elsewhere",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "the path is a folder where a file is expected",
    errno.ENOENT: "no such file or folder",
}


class Stopped(Exception):
    """SIGTERM or SIGINT arrived; raised in the main thread so cleanups run."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def describe(error: BaseException) -> str | None:
    """One line for a fault from outside the program; None for anything else (a bug keeps its traceback)."""
    if isinstance(error, OSError) and error.errno in _HINTS:
        name = error.filename or ""
        return f"{name + ': ' if name else ''}{_HINTS[error.errno]}"
    if isinstance(error, (gzip.BadGzipFile, zlib.error, EOFError)):
        return f"a compressed input file is corrupt or truncated ({error}): download or write it again"
    # An OpError can only come from a TensorFlow already loaded; importing it here would cost a command that
    # never uses it (preprocess, launch) seconds on its way out.
    tf = sys.modules.get("tensorflow")
    if tf is None or not isinstance(error, tf.errors.OpError):
        return None
    lines = [line.strip() for line in (error.message or "").splitlines() if line.strip()]
    first = (lines[0] if lines else "")[:300]
    # TensorFlow's file system reports the OS's words ("PATH; File too large") inside its own error types.
    for code, words in ((errno.ENOSPC, "No space left on device"), (errno.EFBIG, "File too large"),
                        (errno.EDQUOT, "Disk quota exceeded"), (errno.EACCES, "Permission denied"),
                        (errno.EROFS, "Read-only file system")):
        if words in (error.message or ""):
            where = first.split(";", 1)[0] if ";" in first else first
            return f"{where}: {_HINTS[code]}"
    if isinstance(error, (tf.errors.ResourceExhaustedError, tf.errors.DataLossError, tf.errors.NotFoundError,
                          tf.errors.PermissionDeniedError, tf.errors.FailedPreconditionError)):
        return f"{type(error).__name__}: {first}"
    return None


def _exit(message: str, code: int):
    """Prints the one message and exits; the loggers are silenced first, because objects torn down at exit
    (a half-restored checkpoint, say) log warnings that would bury the message."""
    import logging

    print(message, file=sys.stderr, flush=True)
    for name in ("tensorflow", "absl", ""):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.FATAL)
    except ImportError:
        pass
    sys.exit(code)


def _stdout_closed() -> bool:
    """Whether standard output is a pipe or socket whose reading end is gone (other broken pipes, a
    worker's say, are not the user's doing)."""
    import select

    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (OSError, ValueError):
        return False


def _raise_stopped(signum, frame):
    raise Stopped(signum)


def _worker_signals():
    """A forked pool worker's signal handling: SIGTERM kills it at once, SIGINT is the parent's to handle.

    A forked worker inherits the parent's Python handlers, which turn SIGTERM into an exception. When a
    pool is terminated it SIGTERMs its workers; raised inside an idle worker's wait for the next task,
    that exception ran the worker's exit handlers with the task queue's lock held, and the worker hung
    there, and the parent with it (seen as a demo that never finished, under load). Raised while the
    worker was still starting (in Python's after-fork hooks, which ignore exceptions), it was lost and
    the worker lived on. So workers start with the two signals blocked (fork_pool) and unblock them here,
    once the default handling is in place: a SIGTERM that came early is delivered now, and kills.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})


@contextlib.contextmanager
def fork_pool(workers: int):
    """A multiprocessing pool of ``workers`` forked processes (they inherit module globals instead of
    pickling them) whose signal handling is the default one (see _worker_signals), as a context.

    On a normal exit the workers are told to stop through the task queue and joined; an exception in
    the block terminates them at once (SIGTERM). multiprocessing's own context terminates in both cases,
    and a worker still starting when the last result arrived could lose that SIGTERM (see
    _worker_signals) and keep the parent's join waiting forever (1,500 pools on a loaded 2-core machine
    hung within a minute; stopped through the queue, they all ended). The signals are blocked while the
    pool forks, so its workers (and the threads that fork replacements) start with them blocked."""
    import multiprocessing

    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        pool = multiprocessing.get_context("fork").Pool(workers, initializer=_worker_signals)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)  # one that came meanwhile is delivered now
    try:
        yield pool
    except BaseException:
        pool.terminate()
        raise
    pool.close()
    pool.join()


def guard(program: str, run, argv):
    """Runs ``run(argv)`` with the translations above; returns its result or exits."""
    from sim_tf.errors import Interrupted, UserError

    debug = os.environ.get("SIM_TF_DEBUG") == "1"
    previous = {s: signal.signal(s, _raise_stopped) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return run(argv)
    except UserError as e:
        _exit(f"{program}: error: {e}", 1)
    except Interrupted as e:
        _exit(f"{program}: {e}", e.exit_code)
    except BrokenPipeError:
        if not _stdout_closed():
            raise
        # `sim-tf ... | head` whose reader is done: stop as a program killed by SIGPIPE would (Python
        # ignores that signal and raises this instead), the cleanups of partial output having run on the
        # way here; standard output goes to /dev/null so the interpreter's last flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        _exit(f"{program}: stopped: standard output was closed (its reader exited); partial output was removed",
              128 + signal.SIGPIPE)
    except (Stopped, KeyboardInterrupt) as e:
        signum = e.signum if isinstance(e, Stopped) else signal.SIGINT
        _exit(f"{program}: stopped by {signal.Signals(signum).name}; partial output was removed", 128 + signum)
    except Exception as e:  # noqa: BLE001 - only faults that describe() recognises are caught
        message = describe(e)
        if message is None or debug:
            raise
        _exit(f"{program}: error: {message} (SIM_TF_DEBUG=1 shows the traceback)", 1)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
