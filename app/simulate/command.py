"""`billing simulate` and `python -m bench simulate`: one run on a throwaway embedded stack, with a
progress bar and its throughput (simulated days per minute), then the invariant tables; the exit
code says whether anything drifted."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from app.simulate.faults import FaultRates
from app.simulate.report import Report
from app.simulate.runner import simulate
from app.simulate.scenario import DAY, Scenario, build_scenario

LOG_EVERY_SECONDS = 60.0  # without a terminal (a log file), one progress line this often


class Throughput:
    """How far the run is in simulated days, and how fast it goes (simulated days per minute)."""

    def __init__(self, scenario: Scenario) -> None:
        self.days = (scenario.end - scenario.start) // DAY
        self._start = scenario.start
        self._started = time.perf_counter()  # wall clock: the run's pace
        self.day = 0

    def reached(self, moment: int) -> None:
        self.day = min(self.days, max(0, (moment - self._start) // DAY))

    @property
    def minutes(self) -> float:
        return (time.perf_counter() - self._started) / 60  # wall clock: the run's pace

    @property
    def per_minute(self) -> float:
        return self.day / self.minutes if self.minutes > 0 else 0.0

    def line(self) -> str:
        return f"day {self.day} of {self.days}, {self.per_minute:.1f} simulated days/minute"


def run_simulation(*, consumers: int, months: int, seed: int, data_dir: Path, faults: bool) -> int:
    """Run the scenario of `seed`; 0 when every invariant holds to the cent, 1 on any drift."""
    from app.simulate.stack import embedded_stack

    scenario = build_scenario(consumers=consumers, months=months, seed=seed)
    rates = FaultRates() if faults else FaultRates.none()
    console = Console()
    errors = Console(stderr=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    where = data_dir.resolve()
    pace = Throughput(scenario)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
    )

    async def run(progress: Progress) -> Report:
        task = progress.add_task("starting the embedded stack", total=None, rate="")
        logged = time.perf_counter()  # wall clock: when the last progress line was written

        def step(done: int, total: int, moment: int) -> None:
            nonlocal logged
            pace.reached(moment)
            rate = f"{pace.per_minute:.1f} days/min, step {done}/{total}"
            progress.update(
                task, description="simulated days", completed=pace.day, total=pace.days, rate=rate
            )
            if not errors.is_terminal and time.perf_counter() - logged >= LOG_EVERY_SECONDS:  # wall clock
                logged = time.perf_counter()  # wall clock
                where_at = f"step {done} of {total}, {pace.minutes:.1f} min"
                errors.print(f"billing simulate: {pace.line()} ({where_at})")

        async with embedded_stack(where) as settings:
            return await simulate(settings, scenario, rates, progress=step)

    started = time.perf_counter()  # wall clock: how long the run took
    with Progress(*columns, console=errors) as progress:
        report = asyncio.run(run(progress))
    elapsed = time.perf_counter() - started
    console.print(
        f"billing simulate: {consumers} consumers, {months} months, seed {seed}, "
        f"faults {'on' if faults else 'off'}: {elapsed:.1f}s ({pace.days} simulated days, "
        f"{pace.days / (elapsed / 60):.1f} days/minute)"
    )
    report.render(console)
    return 0 if report.clean else 1
