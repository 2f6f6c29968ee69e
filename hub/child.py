"""``python -m medhub.child PARENT_PID MODULE [ARG ...]``: run MODULE bound to its parent.

The hub starts its managed services (audit, batch, idle culler) through this module. It asks
the kernel (``PR_SET_PDEATHSIG``) to send SIGTERM when the hub process exits, however it
exits: killed, or stopped while still starting its services, which JupyterHub then never
stops. Without it such services live on as orphans holding their ports. ``PARENT_PID`` is the
hub's pid, so that a hub gone before this process got this far is noticed too. Off Linux the
module only runs MODULE (with SIGINT heeded, as the hub's way to stop it expects).
"""

from __future__ import annotations

import ctypes
import os
import runpy
import signal
import sys

PR_SET_PDEATHSIG = 1


def command(module: str, *args: str) -> list[str]:
    """The command line that runs ``module`` as a child of this (the hub's) process."""
    return [sys.executable, "-m", "medhub.child", str(os.getpid()), module, *args]


def bind_to_parent(parent_pid: int, sig: int = signal.SIGTERM) -> None:
    """Have ``sig`` delivered to this process when its parent exits (Linux)."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:  # the parent exited before the request was in place
        os.kill(os.getpid(), sig)


def main(argv: list[str]) -> None:
    if len(argv) < 2 or not argv[0].isdigit():
        raise SystemExit("usage: python -m medhub.child PARENT_PID MODULE [ARG ...]")
    bind_to_parent(int(argv[0]))
    # JupyterHub stops a service with SIGINT, then waits 30 s before SIGTERM. A hub started in
    # the background (`medhub run &`, nohup) passes SIGINT on ignored: listen to it again.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.argv = [argv[1], *argv[2:]]
    runpy.run_module(argv[1], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
