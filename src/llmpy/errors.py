"""The one exception type users see: a message naming the file or flag and the fix."""


# EX_TEMPFAIL, "try again": a run stopped by SIGTERM/SIGINT, not finished (with -o, after writing its checkpoint;
# without, having saved nothing, which its line says); --auto-restart and scripts/train_until_done.sh relaunch on it
PREEMPTED_EXIT_CODE = 75


class LlmpyError(Exception):
    """A user-facing error; the CLI prints its message as one line (traceback only with --debug)."""


class DiskFullError(LlmpyError, OSError):
    """A write that found no space left on its device (the message names the file, the MB needed and free). Also an
    OSError, as the ENOSPC it stands for: code that handles a failed write as one still does."""
