"""`python -m bench simulate [--consumers N] [--months M] [--seed S] [--no-faults]`: the
`billing simulate` run, timed (its wall time is the figure the issue asks for)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.simulate.command import run_simulation


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench simulate")
    parser.add_argument("--consumers", type=int, default=50)
    parser.add_argument("--months", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--data-dir", type=Path, default=Path(".sim"))
    parser.add_argument("--no-faults", action="store_true")
    args = parser.parse_args()
    outcome = run_simulation(
        consumers=args.consumers,
        months=args.months,
        seed=args.seed,
        data_dir=args.data_dir,
        faults=not args.no_faults,
    )
    if outcome:
        sys.exit(outcome)


if __name__ == "__main__":
    main()
