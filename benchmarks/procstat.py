"""What the harness reads about a running process from ``/proc`` (Linux only).

CPU time is counted for the whole process group: the servers are started in their own session
(``ManagedProcess``), so an nginx master and its workers, or a server that forks workers, are
counted together under the leader's pid.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(leader: int) -> float:
    """utime + stime of every process in ``leader``'s process group, in seconds."""
    user, system = group_cpu_times(leader)
    return user + system


def group_cpu_times(leader: int) -> tuple[float, float]:
    """(utime, stime) of every process in ``leader``'s process group, in seconds: time running
    the program, and time in the kernel on its behalf (system calls: for a proxy, mostly TCP)."""
    user = system = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[2]) == leader:  # state ppid pgrp ... utime (11) stime (12)
            user += int(fields[11])
            system += int(fields[12])
    return user / CLOCK_TICKS, system / CLOCK_TICKS


def rss_mb(pid: int) -> float:
    """Resident set size of one process, MB (10^6 bytes)."""
    return _status_value(pid, "VmRSS") * 1024 / 1e6


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def thread_count(pid: int) -> int:
    return _status_value(pid, "Threads")


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft fd limit towards ``wanted`` (capped by the hard limit); children
    started afterwards inherit it. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def busy_cpu_seconds() -> float:
    """user + nice + system time of the whole machine since boot, from ``/proc/stat``."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()
    user, nice, system = (int(x) for x in fields[1:4])
    return (user + nice + system) / CLOCK_TICKS


def _status_value(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise KeyError(f"/proc/{pid}/status has no {key}")
