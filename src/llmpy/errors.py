"""The one exception type users see: a message naming the file or flag and the fix."""


class LlmpyError(Exception):
    """A user-facing error; the CLI prints its message as one line (traceback only with --debug)."""
