"""`billing simulate` and `python -m bench simulate`: one run on a throwaway embedded stack, with a
progress bar, then the invariant tables; the exit code says whether anything drifted."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from app.simulate.faults import FaultRates
from app.simulate.report import Report
from app.simulate.runner import simulate
from app.simulate.scenario import build_scenario


def run_simulation(*, consumers: int, months: int, seed: int, data_dir: Path, faults: bool) -> int:
    """Run the scenario of `seed`; 0 when every invariant holds to the cent, 1 on any drift."""
    from app.simulate.stack import embedded_stack

    scenario = build_scenario(consumers=consumers, months=months, seed=seed)
    rates = FaultRates() if faults else FaultRates.none()
    console = Console()
    data_dir.mkdir(parents=True, exist_ok=True)
    where = data_dir.resolve()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())

    async def run(progress: Progress) -> Report:
        task = progress.add_task("starting the embedded stack", total=None)

        def step(done: int, total: int) -> None:
            progress.update(task, description="simulated steps", completed=done, total=total)

        async with embedded_stack(where) as settings:
            return await simulate(settings, scenario, rates, progress=step)

    started = time.perf_counter()  # wall clock: how long the run took
    with Progress(*columns, console=Console(stderr=True)) as progress:
        report = asyncio.run(run(progress))
    elapsed = time.perf_counter() - started
    console.print(
        f"billing simulate: {consumers} consumers, {months} months, seed {seed}, "
        f"faults {'on' if faults else 'off'}: {elapsed:.1f}s"
    )
    report.render(console)
    return 0 if report.clean else 1
