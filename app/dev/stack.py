"""`billing dev`: the whole stack in one process tree, on embedded defaults."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType

import httpx
import jwt

from app.config import ConfigError, load_settings
from app.dev.processes import (
    LOOPBACK,
    ChildProcess,
    EmbeddedPostgres,
    free_port,
    redis_server,
    siblings_emulator,
    stripe_emulator,
)

DEV_JWT_SECRET = "dev-only-jwt-secret-never-use-in-production"  # noqa: S105  (never used outside `billing dev`)
DEV_WEBHOOK_SECRET = "whsec_dev_only"  # noqa: S105
DEV_STRIPE_KEY = "sk_test_dev_emulator"
DEMO_USERS = {
    "consumer": ("demo-consumer", "consumer@demo.example"),
    "creator": ("demo-creator", "creator@demo.example"),
    "admin": ("demo-admin", "admin@demo.example"),
}


def demo_token(secret: str, role: str, days: int = 30) -> str:
    user_id, email = DEMO_USERS[role]
    claims = {
        "sub": user_id,
        "email": email,
        "custom:user_type": role,
        "exp": datetime.now(UTC) + timedelta(days=days),
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def say(line: str, *, err: bool = False) -> None:
    stream = sys.stderr if err else sys.stdout
    stream.write(line + "\n")
    stream.flush()


def register_emulator_webhook(stripe_base: str, url: str, secret: str) -> None:
    """Have the emulator send its events to our endpoint, signed as Stripe signs them."""
    response = httpx.post(
        f"{stripe_base}/_config/webhooks/billing", data={"url": url, "secret": secret}, timeout=5
    )
    response.raise_for_status()


def dev_test_clock(stripe_base: str, key: str, saved: Path) -> str:
    """The emulator's test clock the dev stack runs on: the one saved in the data folder if the
    emulator still has it, else a new one at the current time."""
    with httpx.Client(base_url=stripe_base, auth=(key, ""), timeout=5) as stripe:
        if saved.exists():
            clock_id = saved.read_text().strip()
            if stripe.get(f"/v1/test_helpers/test_clocks/{clock_id}").status_code == 200:
                return clock_id
        response = stripe.post(
            "/v1/test_helpers/test_clocks",
            data={"frozen_time": int(time.time()), "name": "billing dev"},  # starts at real time
        )
        response.raise_for_status()
        clock_id = str(response.json()["id"])
    saved.write_text(clock_id)
    return clock_id


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def run_dev_stack(*, port: int | None, data_dir: Path, test_clock: bool = False) -> int:
    """Start everything, print where it is, and stop every child on Ctrl-C or SIGTERM.

    With `test_clock`, the API, the worker and the metering stand-in run on an emulator test
    clock's time (BILLING_CLOCK), which moves only when the clock is advanced."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    started_at = time.monotonic()
    env = dict(os.environ)
    children: list[ChildProcess] = []
    postgres: EmbeddedPostgres | None = None
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    try:
        if not env.get("DATABASE_URL"):
            postgres = EmbeddedPostgres(data_dir / "pg")
            env["DATABASE_URL"] = postgres.start()
        if not env.get("REDIS_URL"):
            redis_port = free_port()
            children.append(redis_server(data_dir / "redis", redis_port, persist=True))
            children[-1].start()
            env["REDIS_URL"] = f"redis://{LOOPBACK}:{redis_port}/0"
        if not env.get("STRIPE_SECRET_KEY"):
            stripe_port = free_port()
            children.append(stripe_emulator(stripe_port, data_dir / "stripe.pickle", data_dir / "stripe.log"))
            children[-1].start()
            env["STRIPE_SECRET_KEY"] = DEV_STRIPE_KEY
            env["STRIPE_API_BASE"] = f"http://{LOOPBACK}:{stripe_port}"
        if test_clock:
            if not env["STRIPE_SECRET_KEY"].startswith(("sk_test_", "rk_test_")):
                say("billing: --test-clock needs a test-mode Stripe key", err=True)
                return 2
            stripe_base = env.get("STRIPE_API_BASE") or "https://api.stripe.com"
            clock_id = dev_test_clock(stripe_base, env["STRIPE_SECRET_KEY"], data_dir / "test_clock.id")
            env["BILLING_CLOCK"] = f"stripe-test-clock:{clock_id}"
        env.setdefault("JWT_SECRET", DEV_JWT_SECRET)
        env.setdefault("STRIPE_WEBHOOK_SECRET", DEV_WEBHOOK_SECRET)
        if not env.get("API_KEY_SERVICE_URL") or not env.get("METERING_SERVICE_URL"):
            siblings_port = free_port()
            env.setdefault("API_KEY_SERVICE_URL", f"http://{LOOPBACK}:{siblings_port}")
            env.setdefault("METERING_SERVICE_URL", f"http://{LOOPBACK}:{siblings_port}")
            siblings = siblings_emulator(
                siblings_port, data_dir / "siblings.pid", data_dir / "siblings.log", env=dict(env)
            )
            children.append(siblings)
            siblings.start()
        env["HOST"] = LOOPBACK
        api_port = port or int(env.get("PORT", "8080"))
        env["PORT"] = str(api_port)
        os.environ.update(env)
        try:
            settings = load_settings()
        except ConfigError as exc:
            say(f"billing: {exc}", err=True)
            return 2

        from app import clock
        from app.db.migrate import upgrade
        from app.dev.demo import seed
        from app.stripe.test_clocks import business_clock

        clock.install(business_clock(settings))  # the demo data is stamped on the business clock

        upgrade(env["DATABASE_URL"])
        seeded = asyncio.run(seed(settings))

        api = ChildProcess(
            "app api", [sys.executable, "-m", "app", "api"], api_port, pidfile=data_dir / "api.pid", env=env
        )
        api.start(timeout=30)
        children.append(api)
        if "STRIPE_API_BASE" in env and env["STRIPE_SECRET_KEY"] == DEV_STRIPE_KEY:
            register_emulator_webhook(
                env["STRIPE_API_BASE"],
                f"http://{LOOPBACK}:{api_port}/webhooks/stripe",
                settings.webhook_secrets[0],
            )
        worker = ChildProcess(
            "app worker",
            [sys.executable, "-m", "app", "worker"],
            None,
            pidfile=data_dir / "worker.pid",
            env=env,
        )
        worker.start()
        children.append(worker)

        secret = settings.jwt_secret.get_secret_value()
        url = f"http://{LOOPBACK}:{api_port}"
        say(f"billing dev is up in {time.monotonic() - started_at:.1f}s")
        say(f"  API      {url}/api/v1\n  docs     {url}/docs\n  health   {url}/health")
        if "STRIPE_API_BASE" in env:
            say(f"  stripe   {env['STRIPE_API_BASE']} (emulator, key {env['STRIPE_SECRET_KEY']})")
        if test_clock:
            say(f"  clock    {env['BILLING_CLOCK']} (advance it to move business time)")
        for line in seeded:
            say(f"  {line}")
        for role in ("consumer", "creator", "admin"):
            say(f"  {role} token: {demo_token(secret, role)}")
        say("Ctrl-C stops everything.")
        while True:
            for child in children:
                if child.process is not None and child.process.poll() is not None:
                    say(f"billing: {child.name} exited with {child.process.returncode}", err=True)
                    return 1
            time.sleep(0.5)
    except _Stop:
        say("stopping...")
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for child in reversed(children):
            with contextlib.suppress(Exception):
                child.stop()
        if postgres is not None:
            postgres.stop()
