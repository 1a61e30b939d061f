"""Lowering a session's CPU priority where nice alone does not work (no Django needed)."""

from __future__ import annotations

import os
from pathlib import Path


def lower_autogroup(niceness: int, pid: int | None = None) -> bool:
    """Give the session of ``pid`` (default: this process) the same lower priority; whether it has it.

    Linux's autogroup (on in Debian's kernels: /proc/sys/kernel/sched_autogroup_enabled)
    first shares the CPU equally between sessions, and only then by nice inside each. A
    worker in a session of its own (systemd's services, make demo, rqworkers' children, the
    benches) got as much CPU as the web process at any nice: measured, two busy processes at
    nice 19 against two at 0, each in its own session, took 3.0 s each of 6; with the
    sessions' autogroups at 19, 0.1 s. Only a session the process leads is changed: one
    started from a shell is the shell's, and its processes keep their priority. A priority
    already lower is kept.
    """
    pid = os.getpid() if pid is None else pid
    path = Path(f"/proc/{pid}/autogroup")
    try:
        if os.getsid(pid) != pid:
            return False
        if int(path.read_text().rsplit(maxsplit=1)[-1]) < niceness:  # "/autogroup-85 nice 0"
            path.write_text(str(niceness))
    except (OSError, ValueError):  # no autogroup (kernel, or turned off), not allowed, or gone
        return False
    return True
