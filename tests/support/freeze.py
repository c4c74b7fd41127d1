"""Freeze the test session's own embedded servers (SIGSTOP) and always resume them (SIGCONT).

Only processes this session started are ever signalled: the PostgreSQL whose data folder is the
session's temporary workdir (and that server's own child processes), and the redis-server that
this pytest process started.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def postgres_pids(workdir: Path) -> list[int]:
    """The postmaster of the session's server (its data folder is ours) and its backends."""
    postmaster = int((workdir / "pg" / "postmaster.pid").read_text().split()[0])
    cmdline = Path(f"/proc/{postmaster}/cmdline").read_bytes().decode(errors="replace")
    if "postgres" not in cmdline:
        raise RuntimeError(f"pid {postmaster} is not our PostgreSQL: {cmdline!r}")
    return [postmaster, *_children(postmaster)]


def redis_pids(redis_url: str) -> list[int]:
    """The redis-server this pytest process started (redis titles itself `redis-server host:port`)."""
    address = urlsplit(redis_url).netloc.encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == os.getpid() and b"redis-server" in cmdline and address in cmdline:
            return [int(proc.name)]
    raise RuntimeError("the session's redis-server was not found")


@contextlib.contextmanager
def frozen(pids: list[int]) -> Iterator[None]:
    """SIGSTOP the processes for the block; SIGCONT them afterwards, whatever happens."""
    stopped: list[int] = []
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        yield
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
