"""`llmpy train ... --auto-restart N`: run training in a child process, first as the command without --auto-restart
(an -o holding another run is refused or, with --overwrite 1, moved aside, as ever), and relaunch it with -y 1 after a
crash, a kill or a preemption, at most N launches in all. SIGTERM/SIGINT sent to the supervisor stop the run instead:
they are passed on to the trainer, which checkpoints and exits, and nothing is relaunched. A supervisor that dies
(kill -9 included) takes its trainer with it."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
from typing import Callable

from llmpy.errors import PREEMPTED_EXIT_CODE

USAGE_ERROR_EXIT_CODE = 2  # `llmpy`'s exit code for a user error: a relaunch would fail the same way
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


# a relaunch continues the run the first launch started: these flags of the command give way to `-y 1`. --overwrite
# goes too: after a first launch that moved an old run aside, the run in -o is this one, to be continued, not moved
RELAUNCH_DROPS = ("-y", "--resume", "--overwrite")


def _launch_commands(argv: list[str]) -> tuple[int, list[str], list[str]]:
    """(launches, the first launch's command, a relaunch's command) from `train ... --auto-restart N`. The first
    launch is the command without --auto-restart, exactly as typed; only relaunches continue it with -y 1."""
    argv = [part for arg in argv for part in (arg.split("=", 1) if arg.startswith("--auto-restart=") else [arg])]
    index = argv.index("--auto-restart")
    launches = int(argv[index + 1])  # IndexError / ValueError: the caller reports the usage error
    if launches < 1:
        raise ValueError(launches)
    first = argv[:index] + argv[index + 2:]
    return launches, first, _without_flags(first, RELAUNCH_DROPS) + ["-y", "1"]


def _without_flags(command: list[str], flags: tuple[str, ...]) -> list[str]:
    """`command` less each of `flags` and its value, in any form argparse reads: `-y 1`, `-y1`, `-y=1`, `--resume=1`."""
    kept: list[str] = []
    skip_value = False
    for arg in command:
        if skip_value:
            skip_value = False
        elif arg in flags:
            skip_value = True
        elif not any(arg.startswith(f"{flag}=") or (not flag.startswith("--") and arg.startswith(flag))
                     for flag in flags):
            kept.append(arg)
    return kept


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _dies_with_this_process() -> Callable[[], None] | None:
    """A preexec_fn that has the kernel send the trainer SIGTERM (checkpoint and exit, as on a preemption) when the
    supervisor dies, however it dies (kill -9 included), so that no trainer goes on alone. Linux only, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child between fork and exec does little
    except (OSError, AttributeError):
        return None
    supervisor = os.getpid()

    def in_child() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != supervisor:  # it died before the line above: no signal will come, and nothing ran yet
            os._exit(1)

    return in_child


class _StopRequest:
    """Remembers a SIGTERM/SIGINT to the supervisor and passes it on to the running trainer."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.child: subprocess.Popen | None = None

    def handle(self, signum: int, frame) -> None:
        self.signum = signum
        self.forward()

    def forward(self) -> None:
        # Always as SIGTERM: a Ctrl-C in the terminal already reached the trainer (same process group) as SIGINT, and
        # a second SIGINT would make it stop at once, without its checkpoint
        if self.signum is not None and self.child is not None:
            self.child.send_signal(signal.SIGTERM)  # a no-op once the child has been waited for


def auto_restart(argv: list[str]) -> int:
    """Supervise `llmpy train` (argv without the program name); its exit code, or 75 when stopped by a signal."""
    try:
        launches, first, relaunch = _launch_commands(argv)
    except (IndexError, ValueError):
        print("llmpy: error: --auto-restart takes a number of launches (1 or more)", file=sys.stderr)
        return USAGE_ERROR_EXIT_CODE
    stop = _StopRequest()
    previous = {}
    if threading.current_thread() is threading.main_thread():  # handlers can only be set there
        previous = {sig: signal.signal(sig, stop.handle) for sig in STOP_SIGNALS}
    try:
        return _supervise(first, relaunch, launches, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _supervise(first: list[str], relaunch: list[str], launches: int, stop: _StopRequest) -> int:
    """Launch `first`, then `relaunch` until training succeeds, fails on usage, is stopped by a signal, or `launches`
    are used up."""
    code = 1
    for launch in range(1, launches + 1):
        if stop.signum is not None:
            break
        command = first if launch == 1 else relaunch
        stop.child = subprocess.Popen([sys.executable, "-m", "llmpy", *command], preexec_fn=_dies_with_this_process())
        stop.forward()  # a signal that arrived while the child was being started
        code = stop.child.wait()
        if stop.signum is not None or code in (0, USAGE_ERROR_EXIT_CODE):
            break
        if launch < launches:
            print(f"llmpy: training exited with code {code}; relaunching with -y 1 ({launch}/{launches})",
                  file=sys.stderr)
        else:
            print(f"llmpy: training exited with code {code}; all {launches} launches used, giving up", file=sys.stderr)
    if stop.signum is None:
        return code
    # the command as typed may lack -y 1 (then it is refused: -o holds checkpoints) or carry --overwrite 1 (then it
    # would move this run aside and start over): only -y 1 continues it
    print(f"llmpy: {signal.Signals(stop.signum).name}: training stopped (exit code {code}) and is not relaunched; "
          "the same command with -y 1 continues it from its last checkpoint, if it wrote one", file=sys.stderr)
    return code if code in (0, USAGE_ERROR_EXIT_CODE) else PREEMPTED_EXIT_CODE
