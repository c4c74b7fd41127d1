"""`make bench`: run every benchmark module in bench/ (or those named), then print one table of
every figure with its goal and whether it passed; exit 1 when any goal is missed (or a bench fails).

Each module's `main()` (sync or async) prints its own detail and returns its figures
(`bench.harness.Figure`): ratios against a baseline measured in the same run.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import pkgutil
import sys
import traceback
from pathlib import Path

from bench.harness import Figure

SKIP = {"harness", "__main__", "simulate"}  # simulate: run by name, it takes minutes


def run(name: str) -> list[Figure]:
    module = importlib.import_module(f"bench.{name}")
    print(f"== bench.{name}", flush=True)
    try:
        outcome = module.main()
        if inspect.iscoroutine(outcome):
            outcome = asyncio.run(outcome)
    except Exception:
        traceback.print_exc()
        return [Figure(f"{name}: the bench itself", float("nan"), 0, at_least=True, detail="failed to run")]
    if not outcome:
        return [Figure(f"{name}: figures", float("nan"), 0, at_least=True, detail="none returned")]
    return list(outcome)


def table(figures: list[Figure]) -> str:
    width = max(len(f.name) for f in figures)
    lines = [f"{'figure':<{width}}  {'now':>8}  {'goal':>9}  result  detail"]
    lines.append("-" * len(lines[0]))
    for f in figures:
        verdict = "pass" if f.passed else "FAIL"
        lines.append(f"{f.name:<{width}}  {f.value:>8.2f}  {f.goal_text:>9}  {verdict:<6}  {f.detail}")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 2 and any(arg.startswith("-") for arg in sys.argv[2:]):
        # One module with options of its own (`python -m bench simulate --consumers 1000`).
        name = sys.argv.pop(1)
        outcome = importlib.import_module(f"bench.{name}").main()
        if inspect.iscoroutine(outcome):
            asyncio.run(outcome)
        return
    names = sys.argv[1:] or sorted(
        m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.name not in SKIP
    )
    # Modules with options of their own read sys.argv: run them on their defaults here.
    del sys.argv[1:]
    figures = [figure for name in names for figure in run(name)]
    print(flush=True)
    print(table(figures))
    missed = [f for f in figures if not f.passed]
    print(f"\n{len(figures) - len(missed)} of {len(figures)} goals met")
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
