"""Run the fault-injection scenarios standalone and print the table.

    python benchmarks/fault_suite.py                 # all of them
    python benchmarks/fault_suite.py redis_kill eviction --details

Each scenario starts its own redis-server and writer processes; one private PostgreSQL cluster (initdb on a
free port, `hybrid_memory_testing.servers.PostgresServer`) serves them all and is stopped by the `pg_stop`
scenario. Nothing here touches the shared servers. The same scenarios run under pytest in `tests/test_faults.py`
(and CI). The scenarios come from the test-support package `hybrid_memory_testing` (tests/hybrid_memory_testing/),
installed with the project: `pip install -e ".[all]"`.
"""

from __future__ import annotations

import argparse

from hybrid_memory_testing.faults.harness import Outcome, format_table
from hybrid_memory_testing.faults.scenarios import ALL
from hybrid_memory_testing.servers import PostgresServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", help=f"any of: {', '.join(n for n, _ in ALL)} (default: all)")
    parser.add_argument("--details", action="store_true", help="print each scenario's notes and problems")
    args = parser.parse_args(argv)
    chosen = [(n, f) for n, f in ALL if not args.scenarios or n in args.scenarios]
    unknown = set(args.scenarios) - {n for n, _ in ALL}
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    pg = PostgresServer().init().start()
    rows: list[Outcome] = []
    try:
        for name, scenario in chosen:
            print(f"running {name} ...", flush=True)
            outcome = scenario(pg)
            rows.append(outcome)
            if args.details:
                print(outcome.summary(), flush=True)
    finally:
        pg.destroy()
    print()
    print(format_table(rows))
    return 0 if all(o.clean for o in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
