"""`make bench`: run every benchmark module in bench/ (or those named) and print its ratios."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import pkgutil
import sys
from pathlib import Path

SKIP = {"harness", "__main__"}


def main() -> None:
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
