"""`billing dev`'s helpers: tokens for any demo user, the env file, logs streamed with --verbose."""

from __future__ import annotations

import os
import shlex
import subprocess
import threading
import time
from pathlib import Path

import jwt
import pytest
from typer.testing import CliRunner

from app import cli as cli_module
from app.dev.stack import DEV_JWT_SECRET, stream_logs, write_env_file


def test_dev_token_mints_a_token_for_another_user_of_a_role(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JWT_SECRET", raising=False)
    result = CliRunner().invoke(cli_module.cli, ["dev", "token", "--role", "consumer", "--sub", "demo-alice"])
    assert result.exit_code == 0, result.output
    claims = jwt.decode(result.output.strip(), DEV_JWT_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "demo-alice"
    assert claims["email"] == "demo-alice@demo.example"
    assert claims["custom:user_type"] == "consumer"


def test_dev_token_signs_with_jwt_secret_and_refuses_an_unknown_role(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JWT_SECRET", "another-secret-of-enough-length-32b")
    token = CliRunner().invoke(cli_module.cli, ["dev", "token", "--role", "creator"]).output.strip()
    assert (
        jwt.decode(token, "another-secret-of-enough-length-32b", algorithms=["HS256"])["sub"]
        == "demo-creator"
    )
    refused = CliRunner().invoke(cli_module.cli, ["dev", "token", "--role", "boss"])
    assert refused.exit_code == 2
    assert "--role must be one of" in refused.output


def test_the_env_file_exports_the_stack_settings_for_a_shell(tmp_path: Path) -> None:
    path = tmp_path / "env"
    odd = "postgresql://postgres@/postgres?host=/tmp/dir with space"
    write_env_file(path, {"DATABASE_URL": odd, "REDIS_URL": "redis://127.0.0.1:1/0", "UNRELATED": "x"})
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    script = f'source {shlex.quote(str(path))}; printf \'%s|%s|%s\' "$DATABASE_URL" "$REDIS_URL" "$UNRELATED"'
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "UNRELATED")}
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True)  # noqa: S603, S607
    assert out.stdout == f"{odd}|redis://127.0.0.1:1/0|"


def test_the_env_file_lets_a_shell_call_the_gateway_api_and_replay_events_to_the_demo_endpoint(
    tmp_path: Path,
) -> None:
    path = tmp_path / "env"
    stack = {
        "GATEWAY_SERVICE_TOKENS": "dev-gateway-token",
        "MARKETPLACE_WEBHOOK_URLS": "http://127.0.0.1:9/marketplace/events",
        "MARKETPLACE_WEBHOOK_SECRETS": "whsec_dev_marketplace",
    }
    write_env_file(path, stack)
    script = f"source {shlex.quote(str(path))}; " + "; ".join(f'printf "%s|" "${name}"' for name in stack)
    env = {k: v for k, v in os.environ.items() if k not in stack}
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True)  # noqa: S603, S607
    assert out.stdout == "".join(f"{value}|" for value in stack.values())


def test_verbose_streams_what_the_api_and_worker_append_to_their_logs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api, worker = tmp_path / "api.log", tmp_path / "worker.log"
    api.write_text("written before the start\n")
    stop = threading.Event()
    thread = stream_logs([api, worker], stop)
    time.sleep(0.3)
    with api.open("a") as handle:
        handle.write('{"message": "request"}\n')
    with worker.open("a") as handle:
        handle.write('{"message": "job done"}\n')
    seen = ""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "job done" not in seen:
        time.sleep(0.1)
        seen += capsys.readouterr().out
    stop.set()
    thread.join(5)
    assert '[api] {"message": "request"}' in seen
    assert '[worker] {"message": "job done"}' in seen
    assert "written before the start" not in seen
    assert not thread.is_alive()
