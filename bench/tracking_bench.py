"""Benchmark: tracking events from a training script to MLflow.

Workload: a real federation on 127.0.0.1 with 1 site and the server's embedded
MLflow store. (a) The cost of add_scalar in the training loop: 100,000 calls on
a SummaryWriter whose sending thread runs (in this process, to a sink). (b) In
the federation, the site's script logs 20,000 scalars as fast as it can: time
until all of them are in MLflow (events per second end to end). (c) It then logs
30 scalars 0.2 s apart whose value is their wall time: median delay from
add_scalar to the value being visible through MLflow's client API.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from fedsec.api import Session  # noqa: E402
from fedsec.client.tracking import SummaryWriter  # noqa: E402
from fedsec.jobs import FedAvgRecipe  # noqa: E402
from fedsec.tracking.events import Event  # noqa: E402
from tests.integration.harness import Federation  # noqa: E402

SCRIPT = ROOT / "bench" / "scripts" / "tracking_client.py"
BURST, PACED = 20_000, 30


def add_scalar_cost() -> float:
    sink: list[Event] = []
    writer = SummaryWriter(transport=sink.extend)
    start = time.perf_counter()
    for step in range(100_000):
        writer.add_scalar("loss", 0.5, step)
    elapsed = time.perf_counter() - start
    writer.close()
    return elapsed / 100_000


def main() -> None:
    global BURST  # noqa: PLW0603 - a module constant the command line may change
    import argparse

    from mlflow.tracking import MlflowClient

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--burst", type=int, default=BURST, help="0: measure the delay with no backlog")
    BURST = parser.parse_args().burst

    per_call = add_scalar_cost()
    with tempfile.TemporaryDirectory(prefix="fedsec-tracking-bench-") as tmp:
        fed = Federation(Path(tmp), n_clients=1, heartbeat_timeout=30.0)
        try:
            fed.start_all()
            recipe = FedAvgRecipe(
                "tracking-bench", {"w": np.zeros(4, np.float32)}, SCRIPT, 1, 1, script_args=["--burst", str(BURST)]
            )
            client = MlflowClient(tracking_uri=f"sqlite:///{fed.kit('server1') / 'tracking' / 'mlflow' / 'mlflow.db'}")
            with Session(fed.admin_kit) as s:
                submitted = time.time()
                job_id = s.submit_job(recipe.export(Path(tmp) / "job"))
                run_id = ""
                seen: dict[int, float] = {}
                burst_done = 0.0
                deadline = time.monotonic() + 600
                while len(seen) < PACED and time.monotonic() < deadline:
                    if not run_id:
                        exp = client.get_experiment_by_name("tracking-bench")
                        runs = client.search_runs([exp.experiment_id], "tags.`fedsec.site` = 'site-1'") if exp else []
                        run_id = runs[0].info.run_id if runs else ""
                    if run_id and not burst_done:
                        if not BURST or len(client.get_metric_history(run_id, "burst")) >= BURST:
                            burst_done = time.time()
                    elif run_id:  # the paced events come after the burst
                        now = time.time()
                        for m in client.get_metric_history(run_id, "paced"):
                            seen.setdefault(m.step, now - m.value)
                    time.sleep(0.05)
                s.wait_for_job(job_id, timeout=120)
            log = "\n".join(p.read_text() for p in fed.prod.glob("site-1/jobs/*/log.txt"))
        finally:
            fed.stop()
    burst_line = next((line for line in log.splitlines() if line.startswith("burst:")), "burst: (no line)")
    delays = sorted(seen.values())
    print("workload: 1 site, server's embedded MLflow store (SQLite), 127.0.0.1")
    print(f"a. add_scalar in the training loop: {per_call * 1e6:.1f} us per call ({1 / per_call:,.0f} calls/s)")
    print(f"b. {BURST:,} scalars logged as fast as possible: script says '{burst_line}'")
    if burst_done:
        print(f"   all {BURST:,} in MLflow {burst_done - submitted:.1f} s after the job was submitted")
    print(
        f"c. add_scalar -> visible in MLflow, {len(delays)} paced events: median {statistics.median(delays):.3f} s, "
        f"min {delays[0]:.3f} s, max {delays[-1]:.3f} s"
    )


if __name__ == "__main__":
    main()
