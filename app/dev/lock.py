"""One `billing dev` per data folder: an exclusive lock on `<data dir>/dev.lock`, held for the stack's life.

The kernel drops the lock when the process ends, however it ends, so a killed stack leaves
nothing that blocks the next start (its stale servers are then cleaned as before). The file
also says who holds the lock, for the message a second start prints.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

LOCK_FILE = "dev.lock"


class StackRunning(Exception):
    def __init__(self, data_dir: Path, pid: str, port: str) -> None:
        super().__init__(f"billing dev is already running on {data_dir} (pid {pid}, port {port})")


@dataclass
class StackLock:
    fd: int

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def lock_data_dir(data_dir: Path, port: int) -> StackLock:
    """Take the folder's lock and record this process; StackRunning if another stack holds it."""
    path = data_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by the stack's children
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 200).decode(errors="replace").split()
        os.close(fd)
        pid, port_in_use = [*holder, "?", "?"][:2]
        raise StackRunning(data_dir, pid, port_in_use) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {port}\n".encode(), 0)
    return StackLock(fd)
