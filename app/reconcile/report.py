"""The reconcile report on a terminal: a summary, then a table per check with its drift lines."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from app.models.reconcile import RECONCILE_CHECKS
from app.reconcile.service import ReconcileReport


def _cents(cents: dict[str, int]) -> str:
    return (
        ", ".join(f"{amount} {currency.upper() or '(none)'}" for currency, amount in sorted(cents.items()))
        or "0"
    )


def render_report(report: ReconcileReport, console: Console) -> None:
    run = report.run
    since = f" since {run.since:%Y-%m-%d %H:%M}" if run.since else ""
    summary = Table(title=f"reconcile {run.status}{since}", caption=f"run {run.id}")
    for column in ("check", "checked", "drift items", "drift (cents)"):
        summary.add_column(column)
    for check in RECONCILE_CHECKS:
        totals = report.totals.get(check)
        summary.add_row(
            check,
            str(report.checked.get(check, 0)),
            str(totals.items if totals else 0),
            _cents(totals.cents) if totals else "0",
        )
    console.print(summary)
    for check in RECONCILE_CHECKS:
        totals = report.totals.get(check)
        lines = [line for line in report.lines if line.check_name == check]
        if totals is None or not lines:
            continue
        table = Table(title=f"{check}: {totals.items} of {report.checked.get(check, 0)} drift")
        for column in ("subject", "ours", "stripe", "drift (cents)", "detail"):
            table.add_column(column)
        for line in lines:
            table.add_row(
                line.subject,
                "-" if line.ours is None else str(line.ours),
                "-" if line.stripe is None else str(line.stripe),
                f"{line.drift_cents} {(line.currency or '').upper()}".strip(),
                line.detail,
            )
        if totals.items > len(lines):
            table.caption = f"{totals.items - len(lines)} more stored in run {run.id}"
        console.print(table)
