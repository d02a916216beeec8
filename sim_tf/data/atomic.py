"""Write a dataset folder so that a crash never leaves a partial one that looks complete."""

from __future__ import annotations

import contextlib
import os
import shutil

from sim_tf.errors import UserError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(parent: str, name: str) -> None:
    """Removes staging folders ``.NAME.partial-PID`` left by runs that were killed (their PID is gone)."""
    prefix = f".{name}.partial-"
    for entry in os.listdir(parent):
        if entry.startswith(prefix):
            pid = entry[len(prefix):].split(".", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(output: str, overwrite: bool = False):
    """Yields a staging folder beside ``output``; on success it is renamed to ``output``.

    The staging folder is removed if the body fails. An existing non-empty ``output`` is an error unless
    ``overwrite`` is set, in which case it is replaced only after the new one is complete.
    """
    output = os.path.abspath(output)
    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)) and not overwrite:
        raise UserError(f"{output!r} already exists and is not empty; pass --overwrite to replace it")
    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
    remove_stale_partials(parent, os.path.basename(output))
    staging = os.path.join(parent, f".{os.path.basename(output)}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        yield staging
        if os.path.exists(output):
            retired = f"{staging}.old"
            os.replace(output, retired)
            os.replace(staging, output)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def atomic_write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file beside it, so readers never see half a file."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = f"{path}.partial-{os.getpid()}"
    try:
        with open(partial, "w") as f:
            f.write(text)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def ensure_writable_folder(path: str, flag: str) -> None:
    """Creates ``path`` if needed and proves a file can be written in it, or raises one UserError naming
    ``flag``; run at start-up, so a bad output location fails before any work is done. Remote URLs
    (gs://, hdfs://, ...) are checked by the first write instead."""
    if not path or "://" in path:
        return
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".sim_tf_write_check-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except FileExistsError:
        raise UserError(f"{flag} {path!r} is a file, not a folder") from None
    except OSError as e:
        raise UserError(f"{flag} {path!r} is not a writable folder: {e.strerror or e}") from None
