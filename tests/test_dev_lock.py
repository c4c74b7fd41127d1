"""One `billing dev` per data folder: a second start exits 1 at once and the first keeps running."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from app.dev.lock import lock_data_dir
from app.dev.processes import free_port
from tests.test_dev_stack import STACK_VARS, _children_of, data_dir, dev_stack

__all__ = ["data_dir"]  # the fixture, shared with tests/test_dev_stack.py


def _second_start(data_dir: Path, port: int) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in STACK_VARS and k != "METERING_SERVICE_URL"}
    return subprocess.run(  # noqa: S603
        [sys.executable, "-m", "app", "dev", "--port", str(port), "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_second_billing_dev_on_a_folder_in_use_exits_1_and_leaves_the_first_running(data_dir: Path) -> None:
    port = free_port()
    with dev_stack(data_dir, port) as (process, _):
        children_before = sorted(_children_of(data_dir))
        started = time.monotonic()
        second = _second_start(data_dir, free_port())
        took = time.monotonic() - started

        assert second.returncode == 1, second.stderr
        expected = f"billing dev is already running on {data_dir.resolve()} (pid {process.pid}, port {port})"
        assert second.stderr.strip() == f"billing: {expected}"
        assert "Traceback" not in second.stderr + second.stdout
        assert took < 10
        # The running stack is untouched: same processes, still serving.
        assert process.poll() is None
        assert sorted(_children_of(data_dir)) == children_before
        assert httpx.get(f"http://127.0.0.1:{port}/ready", timeout=10).status_code == 200


def test_lock_of_a_stack_that_died_does_not_block_the_next_start(tmp_path: Path) -> None:
    # A process that took the lock and was killed: the kernel released it with the process.
    code = "import sys, time; from pathlib import Path; from app.dev.lock import lock_data_dir; "
    code += "lock_data_dir(Path(sys.argv[1]), 8080); print('locked', flush=True); time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)  # noqa: S603
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
    finally:
        holder.kill()
        holder.wait()
    lock = lock_data_dir(tmp_path, 8081)
    try:
        assert (tmp_path / "dev.lock").read_text().split() == [str(os.getpid()), "8081"]
    finally:
        lock.release()
