"""The usage error: bad input the user can fix. The CLI prints its message on one line and exits 2."""


class UsageError(ValueError):
    """Bad input from the user (an argument, a file, a user function that failed): one line, exit 2."""
