"""Errors a user can cause. The CLI prints their message alone (no traceback) and exits with status 1."""


class UserError(ValueError):
    """Bad input from the user: a flag, a file, a dataset. The message names the culprit and the fix."""


class Interrupted(Exception):
    """The run stopped early on request (SIGTERM/SIGINT).

    After saving a checkpoint it exits with status 75 (EX_TEMPFAIL: try again), so schedulers that restart
    failed jobs restart it and it resumes; with nothing saved, with 128 + the signal number.
    """

    def __init__(self, message: str, exit_code: int = 75):
        super().__init__(message)
        self.exit_code = exit_code


def brief(error: BaseException | str, limit: int = 300) -> str:
    """An error's text on one line (whitespace folded), at most ``limit`` characters: for messages that quote
    a library's multi-line error."""
    return " ".join(str(error).split())[:limit]
