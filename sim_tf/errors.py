"""Errors a user can cause. The CLI prints their message alone (no traceback) and exits with status 1."""


class UserError(ValueError):
    """Bad input from the user: a flag, a file, a dataset. The message names the culprit and the fix."""


class Interrupted(Exception):
    """The run stopped early on request (SIGTERM/SIGINT) after saving a checkpoint; rerun to resume.

    Exits with status 75 (EX_TEMPFAIL: try again), so schedulers that restart failed jobs restart it.
    """

    exit_code = 75
