"""`llmpy train ... --auto-restart N`: run training in a child process and relaunch it with -y 1 after a crash, a kill
or a preemption, at most N launches in all. SIGTERM/SIGINT sent to the supervisor stop the run instead: they are
passed on to the trainer, which checkpoints and exits, and nothing is relaunched."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

from llmpy.errors import PREEMPTED_EXIT_CODE

USAGE_ERROR_EXIT_CODE = 2  # `llmpy`'s exit code for a user error: a relaunch would fail the same way
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _resume_command(argv: list[str]) -> tuple[int, list[str]]:
    """(launches, the training command without --auto-restart and with -y 1) from `train ... --auto-restart N`."""
    argv = [part for arg in argv for part in (arg.split("=", 1) if arg.startswith("--auto-restart=") else [arg])]
    index = argv.index("--auto-restart")
    launches = int(argv[index + 1])  # IndexError / ValueError: the caller reports the usage error
    if launches < 1:
        raise ValueError(launches)
    command = argv[:index] + argv[index + 2:]
    for flag in ("-y", "--resume"):
        while flag in command:
            position = command.index(flag)
            del command[position: position + 2]
    return launches, command + ["-y", "1"]


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
        launches, command = _resume_command(argv)
    except (IndexError, ValueError):
        print("llmpy: error: --auto-restart takes a number of launches (1 or more)", file=sys.stderr)
        return USAGE_ERROR_EXIT_CODE
    stop = _StopRequest()
    previous = {}
    if threading.current_thread() is threading.main_thread():  # handlers can only be set there
        previous = {sig: signal.signal(sig, stop.handle) for sig in STOP_SIGNALS}
    try:
        return _supervise(command, launches, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _supervise(command: list[str], launches: int, stop: _StopRequest) -> int:
    """Launch until training succeeds, fails on usage, is stopped by a signal, or `launches` are used up."""
    code = 1
    for launch in range(1, launches + 1):
        if stop.signum is not None:
            break
        stop.child = subprocess.Popen([sys.executable, "-m", "llmpy", *command])
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
    print(f"llmpy: {signal.Signals(stop.signum).name}: training stopped (exit code {code}) and is not relaunched; "
          "continue with the same command", file=sys.stderr)
    return code if code in (0, USAGE_ERROR_EXIT_CODE) else PREEMPTED_EXIT_CODE
