"""Benchmark: admin login time and `list_jobs` latency through fedsec.api.Session.

Workload: a real server on 127.0.0.1 (no sites) whose job store holds 100
finished jobs (records written to its SQLite store before it starts); an
admin kit opens a Session (mTLS + signed challenge login), then calls
list_jobs 50 times. Prints the median and spread; asserts nothing about time.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedsec.api import Session  # noqa: E402
from fedsec.server.store import JobStatus, JobStore  # noqa: E402
from tests.integration.harness import Federation  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        fed = Federation(Path(tmp), n_clients=0)
        with JobStore(fed.kit("server1") / "store") as store:
            for i in range(100):
                record = store.add(
                    name=f"job{i:03d}", submitter="admin@acme.org", submitter_org="acme",
                    submitter_role="project_admin", meta_json=json.dumps({"name": f"job{i:03d}"}), num_rounds=5,
                )  # fmt: skip
                store.set_running(record.job_id)
                store.finish(record.job_id, JobStatus.COMPLETED)
        try:
            fed.start("server1")
            logins = []
            for _ in range(10):
                start = time.perf_counter()
                with Session(fed.admin_kit) as s:
                    s.login()
                logins.append(time.perf_counter() - start)
            with Session(fed.admin_kit) as s:
                s.login()
                assert len(s.list_jobs()) == 100
                times = []
                for _ in range(50):
                    start = time.perf_counter()
                    s.list_jobs()
                    times.append(time.perf_counter() - start)
        finally:
            fed.stop()
    ms = sorted(t * 1000 for t in times)
    print("workload: Session.list_jobs x50 with 100 jobs in the store; Session open + login x10")
    spread = f"p90 {ms[44]:.2f} ms, min {ms[0]:.2f} ms, max {ms[-1]:.2f} ms"
    print(f"list_jobs: median {statistics.median(ms):.2f} ms, {spread}")
    lg = sorted(t * 1000 for t in logins)
    what = "admin login (load kit, mTLS connect, challenge, sign, login)"
    print(f"{what}: median {statistics.median(lg):.1f} ms, max {lg[-1]:.1f} ms")


if __name__ == "__main__":
    main()
