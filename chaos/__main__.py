"""`python -m chaos` (make chaos) runs the fault drills; `python -m chaos soak` the soak."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from chaos import drills


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos")
    parser.add_argument("command", nargs="?", choices=("drills", "soak"), default="drills")
    parser.add_argument("--short", action="store_true", help="the CI-sized drills")
    parser.add_argument("--fault", action="append", choices=sorted(drills.FAULTS))
    parser.add_argument("--no-replicas", action="store_true")
    parser.add_argument("--no-burst", action="store_true")
    args = parser.parse_args()
    if args.command == "soak":
        from chaos import soak

        seconds = float(os.environ.get("SOAK_SECONDS", "600"))
        return soak.main(seconds)
    timing = drills.SHORT if args.short else drills.FULL
    results, context = asyncio.run(
        drills.run_all(timing, args.fault, replicas=not args.no_replicas, burst=not args.no_burst)
    )
    print(drills.table(results))
    for result in results:
        if result.notes:
            print(f"{result.fault}: {result.notes}")
    found = drills.problems(results)
    path = drills.write_results(
        "chaos",
        {"results": drills.result_dicts(results), "problems": found, **context},
    )
    print(f"results: {path}")
    for problem in found:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
