"""The one error type a command turns into a one-line message."""


class RunError(Exception):
    """A problem the user can fix; its message is one line for the command line."""
