"""The `billing` command line."""

from __future__ import annotations

import sys
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from app import clock
from app.config import ConfigError, Settings, get_settings

cli = typer.Typer(no_args_is_help=True, add_completion=False, help="billing: payments and subscriptions.")


def _print_version(value: bool) -> None:
    if value:
        from app import __version__

        typer.echo(f"billing {__version__}")
        raise typer.Exit


@cli.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit"),
    ] = False,
) -> None:
    """billing: payments and subscriptions."""


def settings_or_exit() -> Settings:
    """Load the settings and install the business clock they name (BILLING_CLOCK), or print what
    is wrong in one line and exit 2 (no stack trace)."""
    try:
        settings = get_settings()
    except ConfigError as exc:
        typer.echo(f"billing: {exc}", err=True)
        raise typer.Exit(2) from None
    install_business_clock(settings)
    return settings


def as_utc(moment: datetime | None) -> datetime | None:
    """An option's time as UTC: a time given without a zone is read as UTC."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


ReplayFailedOption = Annotated[bool, typer.Option("--failed", help="Only events that failed for good")]


def replay_event_option(id_form: str) -> Any:
    """The `replay` commands' --event option; `id_form` says what the id looks like."""
    return typer.Option("--event", help=f"Only this event id ({id_form})")


def replay_since_option(stored: str) -> Any:
    """The `replay` commands' --since option; `stored` says how the events came to be stored."""
    return typer.Option("--since", help=f"Only events {stored} at or after (ISO time, UTC)")


def replay_since_or_exit(event: str | None, failed: bool, since: datetime | None) -> datetime | None:
    """The `replay` commands' shared choice: one of --event, --failed or --since (exit 2 without
    any), and --since as UTC."""
    if event is None and not failed and since is None:
        typer.echo("billing: choose --event ID, --failed or --since T", err=True)
        raise typer.Exit(2)
    return as_utc(since)


def install_business_clock(settings: Settings) -> None:
    """Run this process on BILLING_CLOCK's time; a test clock that cannot be read stops start-up."""
    from app.stripe.test_clocks import business_clock

    chosen = business_clock(settings)
    try:
        chosen.now()
    except RuntimeError as exc:
        typer.echo(f"billing: BILLING_CLOCK: {exc}", err=True)
        raise typer.Exit(2) from None
    clock.install(chosen)


@cli.command()
def api(
    host: Annotated[str | None, typer.Option(help="Bind address (default HOST or 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default PORT or 8080)")] = None,
    drain_seconds: Annotated[
        float,
        typer.Option(
            envvar="SHUTDOWN_DRAIN_SECONDS",
            min=0,
            help="On SIGTERM, answer /ready with 503 this long before closing the listener",
        ),
    ] = 0.0,
    graceful_timeout: Annotated[
        int,
        typer.Option(
            envvar="SHUTDOWN_GRACEFUL_TIMEOUT_SECONDS", min=1, help="Longest wait for in-flight requests"
        ),
    ] = 20,
) -> None:
    """Serve the HTTP API (one process; scale with replicas)."""
    import uvicorn

    from app.dependencies import running_state
    from app.health.lifecycle import DrainingServer
    from app.main import create_app_from_env

    settings = settings_or_exit()
    app = create_app_from_env()

    def start_draining() -> None:
        state = running_state(app)
        if state is not None:
            state.draining = True

    config = uvicorn.Config(
        app,
        host=host or settings.host,
        port=port or settings.port,
        log_config=None,
        # RequestContextMiddleware logs each request once, with its id: no second access line.
        access_log=False,
        proxy_headers=True,
        timeout_graceful_shutdown=graceful_timeout,
    )
    DrainingServer(config, on_drain=start_draining, drain_seconds=drain_seconds).run()


@cli.command()
def worker(
    check: Annotated[
        bool,
        typer.Option("--check", help="Exit 0 if this host's worker beat in the last 30 s, else 1 (liveness)"),
    ] = False,
) -> None:
    """Run the arq worker (webhooks, usage, invoicing, sync, outbox, dunning)."""
    from arq import run_worker
    from arq.connections import RedisSettings

    from app.worker.settings import WorkerSettings

    settings = settings_or_exit()
    redis_settings = RedisSettings.from_dsn(settings.redis_url)
    if check:
        import asyncio

        from arq.worker import async_check_health

        raise typer.Exit(asyncio.run(async_check_health(redis_settings, WorkerSettings.health_check_key)))
    run_worker(WorkerSettings, redis_settings=redis_settings)  # type: ignore[arg-type]


@cli.command()
def migrate(
    revision: Annotated[str, typer.Argument(help="Target revision")] = "head",
    check: Annotated[
        bool, typer.Option("--check", help="Migrate nothing: exit 0 if the database is at head, else 1")
    ] = False,
    wait: Annotated[
        float, typer.Option(min=0, help="With --check: keep checking this many seconds (init containers)")
    ] = 0.0,
) -> None:
    """Apply the database migrations (needs only DATABASE_URL)."""
    import os

    url = os.environ.get("DATABASE_URL")
    if not url:
        typer.echo("billing: invalid configuration: DATABASE_URL is required", err=True)
        raise typer.Exit(2)
    if check:
        import asyncio

        from app.health.doctor import CheckFailed, wait_for_head

        async_url = "postgresql+asyncpg://" + url.split("://", 1)[1]
        try:
            typer.echo(asyncio.run(wait_for_head(async_url, wait)))
        except CheckFailed as exc:
            typer.echo(f"billing: {exc}", err=True)
            raise typer.Exit(1) from None
        return

    from app.db.migrate import upgrade

    upgrade(url, revision)
    typer.echo(f"migrated to {revision}")


@cli.command()
def doctor() -> None:
    """Check configuration, PostgreSQL, migrations, Redis and Stripe; exit 1 if anything is wrong."""
    import asyncio

    from app.health.doctor import diagnose, render

    checks = asyncio.run(diagnose())
    typer.echo(render(checks))
    if not all(check.ok for check in checks):
        raise typer.Exit(1)


@cli.command("seed-demo")
def seed_demo() -> None:
    """The demo creator, its APIs and plans, and demo consumers with 60 days of history (idempotent)."""
    import asyncio

    from app.dev.demo import seed

    settings = settings_or_exit()
    for line in asyncio.run(seed(settings)):
        typer.echo(line)


dev_cli = typer.Typer(help="Run the whole stack on embedded defaults; `billing dev token` mints a dev JWT.")
cli.add_typer(dev_cli, name="dev")


@dev_cli.callback(invoke_without_command=True)
def dev(
    ctx: typer.Context,
    port: Annotated[int | None, typer.Option(help="API port (default PORT or 8080)")] = None,
    data_dir: Annotated[Path, typer.Option(help="Where embedded data lives")] = Path(".dev"),
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Also stream the API and worker logs here")
    ] = False,
    test_clock: Annotated[
        bool,
        typer.Option(
            "--test-clock", help="Run on a Stripe test clock's time (made once, kept in the data folder)"
        ),
    ] = False,
) -> None:
    """Run the whole stack on embedded PostgreSQL, Redis and the Stripe emulator."""
    if ctx.invoked_subcommand is not None:
        return
    from app.dev.stack import run_dev_stack

    sys.exit(run_dev_stack(port=port, data_dir=data_dir, verbose=verbose, test_clock=test_clock))


@dev_cli.command("token")
def dev_token(
    role: Annotated[str, typer.Option(help="consumer, creator or admin")] = "consumer",
    sub: Annotated[str | None, typer.Option(help="The user id (default demo-<role>)")] = None,
    email: Annotated[str | None, typer.Option(help="The email claim (default <sub>@demo.example)")] = None,
    days: Annotated[int, typer.Option(min=1, help="Days until it expires")] = 30,
) -> None:
    """Print a dev JWT, signed with JWT_SECRET (or `billing dev`'s default secret)."""
    import os

    from app.dev.stack import DEMO_USERS, DEV_JWT_SECRET, demo_token

    if role not in DEMO_USERS:
        typer.echo(f"billing: --role must be one of {', '.join(DEMO_USERS)}, not {role!r}", err=True)
        raise typer.Exit(2)
    secret = os.environ.get("JWT_SECRET") or DEV_JWT_SECRET
    typer.echo(demo_token(secret, role, days, user_id=sub, email=email))


# The sync table's columns and what each counts (printed under the table).
SYNC_COLUMNS = (
    ("list", "the Stripe list walked (customers, subscriptions, invoices)"),
    ("seen", "objects Stripe returned"),
    ("changed", "local rows repaired to match Stripe (would be, with --dry-run)"),
    ("unknown", "Stripe objects with no local row here (left alone: made elsewhere)"),
    ("orphans", "live Stripe subscriptions of our customers with no row here (--repair refunds and cancels)"),
    ("flagged", "subscriptions Stripe bills at a price no plan of their API has"),
)


@cli.command()
def simulate(
    consumers: Annotated[int, typer.Option(min=1, help="How many consumers")] = 50,
    months: Annotated[int, typer.Option(min=1, max=24, help="How many monthly periods")] = 3,
    seed: Annotated[int, typer.Option(help="Same seed, same scenario")] = 7,
    data_dir: Annotated[Path, typer.Option(help="Where the run's embedded stack lives")] = Path(".sim"),
    faults: Annotated[
        bool,
        typer.Option(
            "--faults/--no-faults",
            help="Webhooks repeated and shuffled, Stripe 5xx and lost answers, crashes before our "
            "commit, workers killed mid-job",
        ),
    ] = True,
) -> None:
    """Run a seeded marketplace scenario over Stripe test-clock time on a throwaway embedded stack,
    then check every invariant against an oracle that knows only the scenario; exit 1 on any drift."""
    from app.simulate.command import run_simulation

    sys.exit(run_simulation(consumers=consumers, months=months, seed=seed, data_dir=data_dir, faults=faults))


@cli.command()
def sync(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report differences, change nothing")] = False,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Also refund and cancel orphans: Stripe subscriptions of our customers with no row here",
        ),
    ] = False,
) -> None:
    """Reconcile customers and subscriptions with Stripe; resumes an interrupted run."""
    import asyncio

    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn
    from rich.table import Table

    from app.errors import DomainError
    from app.sync.runner import run_sync

    if dry_run and repair:
        typer.echo("billing: --repair changes Stripe; it cannot be combined with --dry-run", err=True)
        raise typer.Exit(2)
    settings = settings_or_exit()
    console = Console(stderr=True)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=console, transient=True) as bar:
        task = bar.add_task("starting", total=None)

        def progress(resource: str, seen: int) -> None:
            bar.update(task, description=f"{resource}: {seen} checked")

        try:
            run = asyncio.run(run_sync(settings, dry_run=dry_run, progress=progress, repair_orphans=repair))
        except DomainError as exc:
            typer.echo(f"billing: {exc.message}", err=True)
            raise typer.Exit(1) from None
    table = Table(
        title=f"sync {run.status} ({'dry run' if dry_run else 'repaired'})", caption=f"run {run.id}"
    )
    for column, _ in SYNC_COLUMNS:
        table.add_column(column)
    for resource, report in run.report.items():
        table.add_row(resource, *(str(report.get(column, 0)) for column, _ in SYNC_COLUMNS[1:]))
    Console().print(table)
    for column, meaning in SYNC_COLUMNS:
        typer.echo(f"{column:>8}: {meaning}")
    for resource, report in run.report.items():
        for difference in report["differences"][:50]:
            typer.echo(f"  {resource}: {difference}")


@cli.command()
def reconcile(
    since: Annotated[
        datetime | None,
        typer.Option("--since", help="Only invoices and usage periods from then on (ISO day or time, UTC)"),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the newest interrupted run (else start one)")
    ] = False,
) -> None:
    """Compare our store with Stripe (read-only) and keep the report; exit 1 on any drift."""
    import asyncio

    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn

    from app.errors import DomainError
    from app.reconcile.jobs import run_reconcile
    from app.reconcile.report import render_report

    since = as_utc(since)
    settings = settings_or_exit()
    console = Console(stderr=True)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=console, transient=True) as bar:
        task = bar.add_task("starting", total=None)

        def progress(step: str, checked: int) -> None:
            bar.update(task, description=f"{step}: {checked} checked")

        try:
            report = asyncio.run(run_reconcile(settings, since=since, resume=resume, progress=progress))
        except DomainError as exc:
            typer.echo(f"billing: {exc.message}", err=True)
            raise typer.Exit(1) from None
    render_report(report, Console())
    if report.drift_items:
        raise typer.Exit(1)


webhooks = typer.Typer(no_args_is_help=True, help="Stored Stripe webhook events.")
cli.add_typer(webhooks, name="webhooks")


@webhooks.command("replay")
def webhooks_replay(
    event: Annotated[str | None, replay_event_option("evt_...")] = None,
    failed: ReplayFailedOption = False,
    since: Annotated[datetime | None, replay_since_option("received")] = None,
) -> None:
    """Reprocess stored events, oldest first, with a progress bar."""
    import asyncio

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from app.webhooks.replay import replay_events

    since = replay_since_or_exit(event, failed, since)
    settings = settings_or_exit()
    columns = (TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns) as progress:
        task = progress.add_task("replay", total=None)
        result = asyncio.run(
            replay_events(
                settings,
                event_id=event,
                failed=failed,
                since=since,
                on_start=lambda total: progress.update(task, total=total),
                on_event=lambda _id, _outcome: progress.advance(task),
            )
        )
    if event is not None and result.total == 0:
        typer.echo(
            f"billing: no stored event {event}: check the id, or `billing sync` if Stripe never delivered it",
            err=True,
        )
        raise typer.Exit(1)
    summary = ", ".join(f"{count} {outcome}" for outcome, count in sorted(result.outcomes.items()))
    typer.echo(f"replayed {result.total} events" + (f": {summary}" if summary else ""))
    if result.outcomes.get("failed"):
        raise typer.Exit(1)


events = typer.Typer(no_args_is_help=True, help="Marketplace events (signed outbound webhooks).")
cli.add_typer(events, name="events")


@events.command("replay")
def events_replay(
    event: Annotated[str | None, replay_event_option("a UUID")] = None,
    failed: ReplayFailedOption = False,
    since: Annotated[datetime | None, replay_since_option("written")] = None,
) -> None:
    """Send events again to every endpoint, in order per subscription, and report the outcome."""
    import asyncio

    from app.events.replay import replay_events

    since = replay_since_or_exit(event, failed, since)
    try:
        event_id = uuid.UUID(event) if event is not None else None
    except ValueError:
        typer.echo(f"billing: --event must be an event id (a UUID), not {event!r}", err=True)
        raise typer.Exit(2) from None
    result = asyncio.run(replay_events(settings_or_exit(), event_id=event_id, failed=failed, since=since))
    typer.echo(
        f"replayed {result.chosen} events: {result.delivered} delivered, "
        f"{result.retrying} to retry, {result.failed} failed"
    )
    if result.retrying or result.failed:
        raise typer.Exit(1)


usage = typer.Typer(no_args_is_help=True, help="Recorded API usage.")
cli.add_typer(usage, name="usage")


def _day(option: str, value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        typer.echo(f"billing: {option} must be a day as YYYY-MM-DD, not {value!r}", err=True)
        raise typer.Exit(2) from None


@usage.command("backfill")
def usage_backfill(
    first: Annotated[str, typer.Option("--from", help="First day, YYYY-MM-DD (UTC)")],
    last: Annotated[str, typer.Option("--to", help="Last day, YYYY-MM-DD (UTC), included")],
    subscription: Annotated[
        str | None, typer.Option("--subscription", help="Only this subscription id")
    ] = None,
) -> None:
    """Pull those days' counts from metering again, record the missing windows, report pay-per-use usage."""
    import asyncio
    import uuid

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table

    from app.errors import DomainError
    from app.usage.backfill import run_backfill
    from app.usage.service import check_backfill_range

    start, end = _day("--from", first), _day("--to", last)
    try:
        subscription_id = uuid.UUID(subscription) if subscription is not None else None
        check_backfill_range(start, end, clock.today())
    except ValueError:
        typer.echo(f"billing: --subscription must be a subscription id, not {subscription!r}", err=True)
        raise typer.Exit(2) from None
    except DomainError as exc:
        typer.echo(f"billing: {exc.message}", err=True)
        raise typer.Exit(2) from None
    settings = settings_or_exit()
    columns = (TextColumn("subscriptions"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task("backfill", total=None)
        run = asyncio.run(
            run_backfill(
                settings,
                start,
                end,
                subscription_id=subscription_id,
                on_start=lambda total: progress.update(task, total=total),
                on_batch=lambda done: progress.advance(task, done),
            )
        )
    table = Table(title=f"billing usage backfill {start} .. {end}")
    for column in ("days", "subscriptions", "windows written", "windows already present", "reported"):
        table.add_column(column)
    days = (end - start).days + 1
    present = run.fetched - run.recorded
    table.add_row(str(days), str(run.subscriptions), str(run.recorded), str(present), str(run.reported))
    Console().print(table)
    if subscription_id is not None and run.subscriptions == 0:
        typer.echo(f"subscription {subscription_id} is not a live pay-per-use or call-limited one", err=True)
        raise typer.Exit(1)
    if run.unavailable:
        typer.echo(
            f"metering did not answer for {len(run.unavailable)} subscriptions: run again later", err=True
        )
    if run.stripe_failures:
        typer.echo("Stripe did not answer some meter events: the worker sends them on its next run", err=True)
    if run.quarantined:
        typer.echo(f"Stripe refused {run.quarantined} windows: see `billing usage quarantine`", err=True)
    if run.unavailable or run.stripe_failures or run.quarantined:
        raise typer.Exit(1)


def _uuid_option(option: str, value: str | None) -> uuid.UUID | None:
    if value is None:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        typer.echo(f"billing: {option} must be an id, not {value!r}", err=True)
        raise typer.Exit(2) from None


@usage.command("quarantine")
def usage_quarantine(
    subscription: Annotated[
        str | None, typer.Option("--subscription", help="Only this subscription id")
    ] = None,
) -> None:
    """List the usage windows whose meter event Stripe refused (or never answered), with the error."""
    import asyncio

    from rich.console import Console
    from rich.table import Table

    from app.usage.quarantine import list_quarantined

    subscription_id = _uuid_option("--subscription", subscription)
    windows = asyncio.run(list_quarantined(settings_or_exit(), subscription_id))
    table = Table(title=f"billing usage quarantine: {len(windows)} windows")
    for column in ("window", "subscription", "from", "to", "calls", "quarantined", "error"):
        table.add_column(column, overflow="fold")
    for w in windows:
        table.add_row(
            str(w.id),
            str(w.subscription_id),
            w.window_start.isoformat(),
            w.window_end.isoformat(),
            str(w.quantity),
            w.quarantined_at.isoformat() if w.quarantined_at else "",
            w.error or "",
        )
    Console(width=250).print(table)


@usage.command("retry")
def usage_retry(
    window: Annotated[str | None, typer.Option("--window", help="A quarantined window's id")] = None,
    subscription: Annotated[
        str | None, typer.Option("--subscription", help="All quarantined windows of this subscription")
    ] = None,
) -> None:
    """Send quarantined windows to Stripe again (a new attempt); they leave quarantine if it takes them."""
    import asyncio

    from app.usage.quarantine import retry_quarantined

    if (window is None) == (subscription is None):
        typer.echo("billing: give exactly one of --window or --subscription", err=True)
        raise typer.Exit(2)
    window_id = _uuid_option("--window", window)
    subscription_id = _uuid_option("--subscription", subscription)
    run = asyncio.run(
        retry_quarantined(settings_or_exit(), window_id=window_id, subscription_id=subscription_id)
    )
    if run.subscriptions == 0:
        typer.echo("billing: no quarantined window matches", err=True)
        raise typer.Exit(1)
    typer.echo(
        f"accepted {run.reported}, quarantined again {run.quarantined}, "
        f"not answered yet {run.stripe_failures}"
    )
    if run.quarantined or run.stripe_failures:
        raise typer.Exit(1)


def main() -> None:
    cli()
