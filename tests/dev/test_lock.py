"""A running `billing dev`, used as a user would: a second start on its folder exits 1 at once and
leaves it running; real HTTP load against it gets only 2xx answers (bench/load.py, short)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.dev.lock import lock_data_dir
from app.dev.processes import EmbeddedPostgres, free_port
from bench.load import run_load
from tests.support.dev_stack import STACK_VARS, children_of, dev_stack


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


@pytest.fixture(scope="module")
def running_stack() -> Iterator[tuple[Path, int, subprocess.Popen[str], dict[str, str]]]:
    folder = Path(tempfile.mkdtemp(prefix="bk", dir="/tmp"))
    port = free_port()
    try:
        with dev_stack(folder, port) as (process, tokens):
            yield folder, port, process, tokens
    finally:
        if (folder / "pg" / "postmaster.pid").exists():
            server = EmbeddedPostgres(folder / "pg")
            server.start()
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def test_second_billing_dev_on_a_folder_in_use_exits_1_and_leaves_the_first_running(
    running_stack: tuple[Path, int, subprocess.Popen[str], dict[str, str]],
) -> None:
    data_dir, port, process, _ = running_stack
    children_before = sorted(children_of(data_dir))
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
    assert sorted(children_of(data_dir)) == children_before
    assert httpx.get(f"http://127.0.0.1:{port}/ready", timeout=10).status_code == 200


def test_load_on_billing_dev_gets_only_2xx(
    running_stack: tuple[Path, int, subprocess.Popen[str], dict[str, str]],
) -> None:
    _, port, _, tokens = running_stack
    phases = asyncio.run(
        run_load(f"http://127.0.0.1:{port}", tokens["consumer"], get_seconds=3, register_seconds=3)
    )
    for phase in phases:
        assert phase.requests > phase.connections, phase.line()
        assert phase.non_2xx == 0, phase.line()


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
