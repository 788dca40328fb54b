"""Benchmark: failover of a highly available server, from kill -9 of the active replica.

Workload: the integration harness's federation (tests/integration/harness.py) with two
provisioned replicas of server1 (server1-a, server1-b, a kit each) on one real
PostgreSQL (tests/pgserver.py) and one shared store folder, lease_ttl --ttl seconds;
3 sites and the admin hold both replicas' endpoints (their kits) and move by themselves.
A FedAvg job (tests/integration/scripts/linear_client.py, --sleep 1 per update, 3 sites,
enough rounds) runs; once it completed --after rounds the active replica is killed
with SIGKILL mid-round. From that kill:
  a. seconds until the standby holds the lease (the lease row's fencing token grew),
  b. seconds until every site registered with the new active replica (its log),
  c. seconds until the interrupted round is finished (the job's current_round passed
     the value it had at the kill, in the state).
Each run provisions and starts a fresh federation; median (and min, max) of --runs.
Prints the figures; asserts nothing about time.
Run: .venv/bin/python bench/failover_bench.py [--runs 5] [--ttl 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from fedsec.api import Session  # noqa: E402
from tests import pgserver  # noqa: E402
from tests.integration.harness import Federation, wait_until  # noqa: E402
from tests.integration.test_runtime import linear_job  # noqa: E402

SITES = ["site-1", "site-2", "site-3"]
POLL = 0.05


def one_run(pg: pgserver.PgServer, ttl: float, after: int, folder: Path) -> tuple[float, float, float]:
    store = {"postgres": {"dsn_file": "local/postgres.dsn", "lease_ttl": ttl}}
    fed = Federation(folder, n_clients=3, heartbeat_timeout=3.0, server_store=store, replicas=2)
    first, second = fed.servers
    try:
        dsn = pg.new_database()
        fed.set_postgres_dsn(dsn)
        fed.start(first)
        fed.wait_log(first, "active: holds the server lease", 60)
        fed.start(second)
        fed.wait_log(second, "standby: the active replica is", 60)
        for site in SITES:
            fed.start(site)
        fed.wait_registered(SITES, timeout=60, server=first)
        with Session(fed.admin_kit) as s:
            job_id = s.submit_job(linear_job(folder, "--sleep", "1", rounds=after + 4, min_clients=3))
            wait_until(lambda: s.get_job_meta(job_id).current_round >= after, 180, f"{after} rounds")
        with psycopg.connect(dsn, autocommit=True) as conn:

            def token() -> int:
                return int(conn.execute("SELECT fencing_token FROM lease").fetchone()[0])  # type: ignore[index]

            def current_round() -> int:
                row = conn.execute("SELECT current_round FROM jobs WHERE job_id = %s", (job_id,)).fetchone()
                return int(row[0])  # type: ignore[index]

            held, at_kill = token(), current_round()
            mark = len(fed.log(second))
            killed = time.monotonic()
            fed.kill(first)
            took = registered = finished = 0.0
            deadline = killed + 300
            while time.monotonic() < deadline and not (took and registered and finished):
                now = time.monotonic() - killed
                if not took and token() > held:
                    took = now
                log = fed.log(second)[mark:]
                if not registered and all(f"site={s} registered" in log for s in SITES):
                    registered = now
                if not finished and current_round() > at_kill:
                    finished = now
                time.sleep(POLL)
            if not (took and registered and finished):
                raise RuntimeError(f"no failover within 300 s (took={took} registered={registered} round={finished})")
        return took, registered, finished
    finally:
        fed.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--ttl", type=float, default=10.0, help="lease_ttl in seconds (default 10, the default)")
    parser.add_argument("--after", type=int, default=2, help="rounds completed before the kill")
    args = parser.parse_args()
    pg = pgserver.start()
    figures: list[tuple[float, float, float]] = []
    try:
        for i in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="failover-bench-") as tmp:
                figures.append(one_run(pg, args.ttl, args.after, Path(tmp)))
            a, b, c = figures[-1]
            print(f"run {i + 1}: lease taken {a:.2f} s, sites re-registered {b:.2f} s, round finished {c:.2f} s")
    finally:
        pg.stop()
    print(f"lease_ttl={args.ttl:g} s, {args.runs} runs, seconds from kill -9 of the active replica:")
    for name, values in zip(
        ("a. standby holds the lease", "b. all sites re-registered", "c. interrupted round finished"),
        zip(*figures, strict=True),
        strict=True,
    ):
        print(f"  {name:32} median {statistics.median(values):6.2f}   min {min(values):6.2f}   max {max(values):6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
