"""Errors a user can cause. The CLI prints their message alone (no traceback) and exits with status 1."""


class UserError(ValueError):
    """Bad input from the user: a flag, a file, a dataset. The message names the culprit and the fix."""
