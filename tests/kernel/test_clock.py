"""One clock for business time: a stray read of the wall clock in app/ fails the suite."""

from __future__ import annotations

import ast
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from app import clock

APP = Path(__file__).resolve().parents[2] / "app"
# The clock itself, and the dev emulator, which keeps Stripe's time rather than ours.
EXEMPT = {APP / "clock.py"}
EXEMPT_DIRS = {APP / "dev"}
WALL_CLOCK_READS = {("datetime", "now"), ("datetime", "utcnow"), ("date", "today"), ("time", "time")}


def _stray_reads(path: Path, root: Path = APP.parent) -> list[str]:
    source = path.read_text()
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value
        name = (
            owner.id
            if isinstance(owner, ast.Name)
            else owner.attr
            if isinstance(owner, ast.Attribute)
            else ""
        )
        if (name, node.func.attr) in WALL_CLOCK_READS and "# wall clock" not in lines[node.lineno - 1]:
            found.append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def test_business_time_is_read_only_through_app_clock() -> None:
    strays = [
        hit
        for path in sorted(APP.rglob("*.py"))
        if path not in EXEMPT and not any(d in path.parents for d in EXEMPT_DIRS)
        for hit in _stray_reads(path)
    ]
    assert strays == [], "read business time through app.clock (or mark a real-time read '# wall clock')"


def test_stray_check_finds_wall_clock_reads_unless_marked(tmp_path: Path) -> None:
    stray = tmp_path / "stray.py"
    stray.write_text(
        "import time\nfrom datetime import UTC, datetime\n"
        "x = datetime.now(UTC)\ny = time.time()\nz = time.time()  # wall clock: a timeout\n"
    )
    assert _stray_reads(stray, tmp_path) == ["stray.py:3", "stray.py:4"]


def test_manual_clock_moves_only_when_told() -> None:
    start = datetime(2027, 1, 31, 23, 59, tzinfo=UTC)
    manual = clock.ManualClock(start)
    with clock.use(manual):
        assert clock.now() == start
        manual.advance(timedelta(minutes=2))
        assert clock.today().isoformat() == "2027-02-01"
        assert clock.timestamp() == int((start + timedelta(minutes=2)).timestamp())
    assert clock.now() != manual.now()


def test_manual_clock_refuses_naive_time() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        clock.ManualClock(datetime(2027, 1, 1))  # noqa: DTZ001
