"""Benchmark: a project admin's login + list_jobs while silent streams hold both server ports.

Workload: a real server and 3 sites on 127.0.0.1. site-3's certificate opens
100 result streams that never send, and a member admin's certificate opens 100
job uploads that never send (the gate refuses most at once, by its per-peer
bounds, and cancels the rest at the first-message deadline). Meanwhile the
project admin logs in and lists jobs 10 times, and the sites keep heartbeating.
Prints the login + list_jobs times and which sites stayed alive; asserts
nothing about time.

    python bench/starvation_bench.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedsec.api import Session  # noqa: E402
from fedsec.kit import load_kit  # noqa: E402
from fedsec.transport.tls import channel  # noqa: E402
from fedsec.wire import fedsec_pb2_grpc  # noqa: E402
from tests.integration.harness import Federation  # noqa: E402

SILENT = 100


def _silent(stop: threading.Event) -> Iterator[Any]:
    stop.wait(600)
    yield from ()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        fed = Federation(
            Path(tmp), n_clients=3, heartbeat_timeout=3.0, extra_admins=(("member@acme.org", "acme", "member"),)
        )
        stop = threading.Event()
        try:
            fed.start_all()
            config = load_kit(fed.kit("server1")).config
            site_ch = channel(load_kit(fed.kit("site-3")), "localhost", int(config.fl_port), "server1")  # type: ignore[union-attr]
            admin_ch = channel(load_kit(fed.kit("member@acme.org")), "localhost", int(config.admin_port), "server1")  # type: ignore[union-attr]
            site_stub = fedsec_pb2_grpc.FederationStub(site_ch)
            admin_stub = fedsec_pb2_grpc.AdminStub(admin_ch)
            calls = [site_stub.SubmitResult.future(_silent(stop), timeout=120) for _ in range(SILENT)]
            calls += [admin_stub.SubmitJob.future(_silent(stop), timeout=120) for _ in range(SILENT)]
            mark = len(fed.log("server1"))
            times = []
            for _ in range(10):
                start = time.perf_counter()
                with Session(fed.admin_kit) as admin:
                    admin.list_jobs()
                times.append((time.perf_counter() - start) * 1000)
            time.sleep(6.0)  # two heartbeat timeouts with the streams open
            with Session(fed.admin_kit) as admin:
                alive = sorted(c["name"] for c in admin.list_clients() if c["alive"])
            dropped = fed.log("server1")[mark:].count(" is gone")
            print(f"silent streams opened: {SILENT} from site-3 (site port), {SILENT} from a member (admin port)")
            print(
                f"project admin login + list_jobs: median {statistics.median(times):.1f} ms,"
                f" max {max(times):.1f} ms (n={len(times)})"
            )
            print(f"sites alive after 6 s: {', '.join(alive)}; sites dropped meanwhile: {dropped}")
            refused = sum(1 for c in calls if c.done())
            print(f"streams already ended (refused at once by the per-peer bounds): {refused} of {len(calls)}")
            site_ch.close()
            admin_ch.close()
        finally:
            stop.set()
            fed.stop()


if __name__ == "__main__":
    main()
