"""`make bench`: run every benchmark module in bench/ (or those named) and print its ratios."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import pkgutil
import sys
from pathlib import Path

SKIP = {"harness", "__main__", "simulate"}  # simulate: run by name, it takes minutes


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
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        print(f"== bench.{name}", flush=True)
        outcome = module.main()
        if inspect.iscoroutine(outcome):
            asyncio.run(outcome)


if __name__ == "__main__":
    main()
