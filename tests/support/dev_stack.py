"""`billing dev` started as a user starts it (a real process tree), for the tests of the dev stack."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STACK_VARS = ("DATABASE_URL", "REDIS_URL", "STRIPE_SECRET_KEY", "STRIPE_API_BASE", "API_KEY_SERVICE_URL")


@contextmanager
def dev_stack(data_dir: Path, port: int) -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    env = {k: v for k, v in os.environ.items() if k not in STACK_VARS and k != "METERING_SERVICE_URL"}
    process = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "app", "dev", "--port", str(port), "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    banner: dict[str, str] = {}
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 90
        for line in process.stdout:
            if "token:" in line:
                role, token = line.strip().split(" token: ")
                banner[role] = token
            for label in ("test cards", "env", "logs", "metrics"):
                if line.strip().startswith(label + " "):
                    banner[label] = line
            if line.startswith("billing dev is up"):
                banner["up"] = line
            if "Ctrl-C" in line or time.monotonic() > deadline:
                break
        assert set(banner) >= {"consumer", "creator", "admin", "up"}, banner
        yield process, banner
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def children_of(data_dir: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if str(data_dir) in cmdline:
                found.append(cmdline)
    return found
