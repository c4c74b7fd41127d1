"""`billing dev`: the whole stack in one process tree, on embedded defaults."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType

import httpx
import jwt

from app.config import ConfigError, Settings, load_settings
from app.dev.lock import StackRunning, lock_data_dir
from app.dev.processes import (
    LOOPBACK,
    ChildProcess,
    EmbeddedPostgres,
    free_port,
    redis_server,
    siblings_emulator,
    stripe_emulator,
)
from app.dev.siblings import DEV_MARKETPLACE_SECRET, MARKETPLACE_EVENTS_PATH

DEV_JWT_SECRET = "dev-only-jwt-secret-never-use-in-production"  # noqa: S105  (never used outside `billing dev`)
DEV_WEBHOOK_SECRET = "whsec_dev_only"  # noqa: S105
DEV_STRIPE_KEY = "sk_test_dev_emulator"
DEV_GATEWAY_TOKEN = "dev-gateway-token"  # noqa: S105  (the gateway stand-in's token in `billing dev`)
DEMO_USERS = {
    "consumer": ("demo-consumer", "consumer@demo.example"),
    "creator": ("demo-creator", "creator@demo.example"),
    "admin": ("demo-admin", "admin@demo.example"),
}


# Stripe test PaymentMethod ids the emulator knows, for the subscribe calls in the README.
DEV_CARDS = (
    ("pays", "pm_card_visa"),
    ("declined", "pm_card_visa_chargeDeclined"),
    ("needs SCA", "pm_card_authenticationRequired"),
)
# What `billing doctor`, `sync`, `webhooks replay` ... need to reach the running stack.
ENV_FILE_VARS = (
    "DATABASE_URL",
    "REDIS_URL",
    "STRIPE_SECRET_KEY",
    "STRIPE_API_BASE",
    "STRIPE_WEBHOOK_SECRET",
    "JWT_SECRET",
    "API_KEY_SERVICE_URL",
    "METERING_SERVICE_URL",
    # The gateway's token and the demo marketplace endpoint: curl the entitlement API, replay events.
    "GATEWAY_SERVICE_TOKENS",
    "MARKETPLACE_WEBHOOK_URLS",
    "MARKETPLACE_WEBHOOK_SECRETS",
)


def demo_token(
    secret: str, role: str, days: int = 30, *, user_id: str | None = None, email: str | None = None
) -> str:
    """A dev JWT for a demo role; `user_id` (and `email`) make it another demo user of that role."""
    default_user, default_email = DEMO_USERS[role]
    if user_id is not None and email is None:
        email = f"{user_id}@demo.example"
    user_id, email = user_id or default_user, email or default_email
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


def write_env_file(path: Path, env: dict[str, str]) -> None:
    """`export` lines for the stack's settings, for `source .dev/env` (owner-readable only)."""
    lines = ["# Written by `billing dev` on every start: `source` it to run billing commands on this stack."]
    lines += [f"export {name}={shlex.quote(env[name])}" for name in ENV_FILE_VARS if env.get(name)]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)


def stream_logs(paths: list[Path], stop: threading.Event) -> threading.Thread:
    """Copy what is appended to each log file to stdout, each line prefixed with the file's stem."""

    def follow() -> None:
        handles = {}
        for path in paths:
            path.touch()
            handle = path.open("r", encoding="utf-8", errors="replace")
            handle.seek(0, os.SEEK_END)
            handles[path.stem] = handle
        try:
            while not stop.is_set():
                quiet = True
                for name, handle in handles.items():
                    for line in iter(handle.readline, ""):
                        quiet = False
                        say(f"[{name}] {line.rstrip()}")
                if quiet:
                    stop.wait(0.2)
        finally:
            for handle in handles.values():
                handle.close()

    thread = threading.Thread(target=follow, name="dev-logs", daemon=True)
    thread.start()
    return thread


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


def run_dev_stack(
    *, port: int | None, data_dir: Path, verbose: bool = False, test_clock: bool = False
) -> int:
    """Start everything, print where it is, and stop every child on Ctrl-C or SIGTERM.

    With `test_clock`, the API, the worker and the metering stand-in run on an emulator test
    clock's time (BILLING_CLOCK), which moves only when the clock is advanced."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        lock = lock_data_dir(data_dir, port or int(os.environ.get("PORT", "8080")))
    except StackRunning as exc:
        say(f"billing: {exc}", err=True)
        return 1
    started_at = time.monotonic()
    env = dict(os.environ)
    children: list[ChildProcess] = []
    postgres: EmbeddedPostgres | None = None
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    stop_streaming = threading.Event()
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
        env.setdefault("GATEWAY_SERVICE_TOKENS", DEV_GATEWAY_TOKEN)
        env.setdefault("STRIPE_WEBHOOK_SECRET", DEV_WEBHOOK_SECRET)
        if not env.get("API_KEY_SERVICE_URL") or not env.get("METERING_SERVICE_URL"):
            siblings_port = free_port()
            env.setdefault("API_KEY_SERVICE_URL", f"http://{LOOPBACK}:{siblings_port}")
            env.setdefault("METERING_SERVICE_URL", f"http://{LOOPBACK}:{siblings_port}")
            events_url = f"http://{LOOPBACK}:{siblings_port}{MARKETPLACE_EVENTS_PATH}"
            env.setdefault("MARKETPLACE_WEBHOOK_URLS", events_url)
            env.setdefault("MARKETPLACE_WEBHOOK_SECRETS", DEV_MARKETPLACE_SECRET)
            siblings = siblings_emulator(
                siblings_port, data_dir / "siblings.pid", data_dir / "siblings.log", env=dict(env)
            )
            children.append(siblings)
            siblings.start()
        env["HOST"] = LOOPBACK
        env.setdefault("WORKER_METRICS_PORT", str(free_port()))  # several stacks side by side
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
            "app api",
            [sys.executable, "-m", "app", "api"],
            api_port,
            pidfile=data_dir / "api.pid",
            env=env,
            log_path=data_dir / "api.log",
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
            log_path=data_dir / "worker.log",
        )
        worker.start()
        children.append(worker)

        secret = settings.jwt_secret.get_secret_value()
        url = f"http://{LOOPBACK}:{api_port}"
        say(f"billing dev is up in {time.monotonic() - started_at:.1f}s")
        say(f"  API      {url}/api/v1\n  docs     {url}/docs\n  health   {url}/health")
        say(
            f"  metrics  {url}/metrics (API), http://{LOOPBACK}:{env['WORKER_METRICS_PORT']}/metrics (worker)"
        )
        if "STRIPE_API_BASE" in env:
            say(f"  stripe   {env['STRIPE_API_BASE']} (emulator, key {env['STRIPE_SECRET_KEY']})")
        if test_clock:
            say(f"  clock    {env['BILLING_CLOCK']} (advance it to move business time)")
        for line in seeded:
            say(f"  {line}")
        for role in ("consumer", "creator", "admin"):
            say(f"  {role} token: {demo_token(secret, role)}")
        say("  another user: billing dev token --role consumer --sub NAME")
        say("  test cards " + ", ".join(f"{card} ({meaning})" for meaning, card in DEV_CARDS))
        write_env_file(data_dir / "env", env)
        say(f"  env      {data_dir / 'env'} (`source` it, then billing doctor / sync / webhooks replay)")
        say(
            f"  logs     {data_dir / 'api.log'}, {data_dir / 'worker.log'}"
            + ("" if verbose else " (--verbose streams them)")
        )
        if settings.invoice_issuer_name == Settings.model_fields["invoice_issuer_name"].default:
            say("  invoices issuer is the placeholder: set INVOICE_ISSUER_NAME, _ADDRESS and _EMAIL")
        if verbose:
            stream_logs([data_dir / "api.log", data_dir / "worker.log"], stop_streaming)
        say(f"  gateway service token: {settings.gateway_tokens[0] if settings.gateway_tokens else '(none)'}")
        if settings.marketplace_endpoints:
            say(f"  marketplace events to {', '.join(settings.marketplace_endpoints)}")
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
        stop_streaming.set()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for child in reversed(children):
            with contextlib.suppress(Exception):
                child.stop()
        if postgres is not None:
            postgres.stop()
        lock.release()
