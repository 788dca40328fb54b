"""Benchmark: start-up, idle memory and per-round server cost of a real 8-site federation.

Workload: provision/secure_project.yml (1 server, 8 sites, 1 admin) provisioned into a
temporary folder with free ports on 127.0.0.1, run from its kits by a copy of
workspaces/start_fl.sh, every process a separate `fedsec` process on this machine.
  a. seconds from running `start_fl.sh 8 PROD` to the server logging all 8 sites
     registered (server log timestamps); median of --starts fresh starts, stopped between.
  b. VmRSS (MiB) of the idle server parent and the client parents --idle-seconds after
     all registered, with no job.
  c. one FedAvg job: 8 sites, --rounds rounds, a 3.49M-parameter float32 model (the
     tensor shapes of a CIFAR-10 CNN: conv 3-32-64-128-128-256-256 3x3 + fc
     4096-512-512-10, numpy random), training script bench/scripts/sleep_client.py
     ("trains" by sleeping --train-seconds, sends a zero weight difference). Server
     overhead of a round = its wall time in workflow.log ('train sampled' to 'done')
     minus the slowest site's own time from receive() returning to just before send().
  d. peak VmRSS of server parent + workflow process during that job (/proc every 0.2 s).
Prints the figures; asserts nothing about time.
Run: .venv/bin/python bench/runtime_bench.py
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # so that `python bench/NAME.py` finds the bench package

from bench.federation import (  # noqa: E402
    ADMIN,
    SERVER,
    Federation,
    Sampler,
    children,
    memory_mib,
    reset_peak,
    tail,
    timed_lines,
)
from fedsec.api import Session  # noqa: E402
from fedsec.jobs import FedAvgRecipe  # noqa: E402
from fedsec.wire import arrays  # noqa: E402

SCRIPT = Path(__file__).resolve().parent / "scripts" / "sleep_client.py"
N_SITES = 8
_ROUND_LINE = re.compile(r"round=(\d+) (train sampled=|accepted site=|done )")


def cnn_params(seed: int = 0) -> dict[str, NDArray[np.float32]]:
    """Random float32 weights with the tensor shapes of a small CIFAR-10 CNN (~3.49M parameters)."""
    rng = np.random.default_rng(seed)
    out: dict[str, NDArray[np.float32]] = {}
    convs = [3, 32, 64, 128, 128, 256, 256]
    for i, (c_in, c_out) in enumerate(itertools.pairwise(convs)):
        out[f"conv{i}.weight"] = rng.normal(0.0, 0.05, (c_out, c_in, 3, 3)).astype(np.float32)
        out[f"conv{i}.bias"] = np.zeros(c_out, dtype=np.float32)
    fcs = [4096, 512, 512, 10]
    for i, (n_in, n_out) in enumerate(itertools.pairwise(fcs)):
        out[f"fc{i}.weight"] = rng.normal(0.0, 0.02, (n_out, n_in)).astype(np.float32)
        out[f"fc{i}.bias"] = np.zeros(n_out, dtype=np.float32)
    return out


@dataclass(frozen=True)
class RoundTimes:
    number: int
    wall: float  # 'train sampled' to 'done'
    slowest_site: float  # the slowest site's own receive->send time
    first_accept: float  # 'train sampled' to the first 'accepted'
    last_accept: float  # 'train sampled' to the last 'accepted'
    aggregate: float  # the last 'accepted' to 'done' (average, checkpoint, progress)

    @property
    def overhead(self) -> float:
        return self.wall - self.slowest_site


def round_times(workflow_log: Path, progress: dict[str, Any]) -> list[RoundTimes]:
    sampled: dict[int, float] = {}
    accepted: dict[int, list[float]] = {}
    done: dict[int, float] = {}
    for when, line in timed_lines(workflow_log, "round="):
        match = _ROUND_LINE.search(line)
        if match is None:
            continue
        number, what = int(match.group(1)), match.group(2)
        if what.startswith("train"):
            sampled[number] = when
        elif what.startswith("accepted"):
            accepted.setdefault(number, []).append(when)
        else:
            done[number] = when
    out = []
    for entry in progress["rounds"]:
        n = int(entry["round"])
        own = [v for k, v in entry["metrics"].items() if k.startswith("train_s.")]
        start, last = sampled[n], max(accepted[n])
        out.append(RoundTimes(n, done[n] - start, max(own), min(accepted[n]) - start, last - start, done[n] - last))
    return out


def spread(values: list[float], unit: str, fmt: str = ".3f") -> str:
    return (
        f"median {statistics.median(values):{fmt}} {unit}, "
        f"min {min(values):{fmt}} {unit}, max {max(values):{fmt}} {unit}"
    )


def measure_starts(fed: Federation, starts: int, idle_seconds: float) -> None:
    """Parts a and b; leaves the federation of the last start running."""
    sites = [f"site-{i}" for i in range(1, N_SITES + 1)]
    to_listen: list[float] = []
    to_all: list[float] = []
    gap: list[float] = []
    server_rss: list[float] = []
    client_rss: list[float] = []
    for i in range(starts):
        if i:
            fed.stop()
        offset = fed.server_log.stat().st_size if fed.server_log.exists() else 0
        began = fed.start(N_SITES)
        registered = fed.wait_registered(sites, offset)
        listening = next(timed_lines(fed.server_log, " listening fl=", offset))[0]
        to_listen.append(listening - began)
        to_all.append(max(registered.values()) - began)
        gap.append(max(registered.values()) - listening)
        time.sleep(idle_seconds)  # the idle state being measured, not a wait for a condition
        server_rss.append(memory_mib(fed.pid(SERVER))[0])
        client_rss.extend(memory_mib(fed.pid(s))[0] for s in sites)
    print(f"a. start_fl.sh {N_SITES} -> all {N_SITES} sites registered ({starts} fresh starts):")
    print(f"     server listening:    {spread(to_listen, 's')}")
    print(f"     all sites registered: {spread(to_all, 's')}")
    print(f"     (last registration after the server listened: {spread(gap, 's')})")
    print(f"b. idle VmRSS {idle_seconds:g} s after all registered, no job:")
    print(f"     server parent:  {spread(server_rss, 'MiB', '.1f')}  ({starts} starts)")
    print(f"     client parent:  {spread(client_rss, 'MiB', '.1f')}  ({len(client_rss)} = {starts} x {N_SITES})")


def measure_job(fed: Federation, tmp: Path, rounds: int, train_seconds: float) -> None:
    """Parts c and d on the running federation."""
    params = cnn_params()
    n_params = sum(int(v.size) for v in params.values())
    recipe = FedAvgRecipe(
        "runtime-bench",
        params,
        SCRIPT,
        num_rounds=rounds,
        min_clients=N_SITES,
        script_args=["--train-seconds", str(train_seconds)],
        evaluate_final=False,
    )
    job = recipe.export(tmp / "job")
    down = (job / "app" / "initial_model.fsa").stat().st_size
    up = len(arrays.encode({k: np.zeros_like(v) for k, v in params.items()}))
    server = fed.pid(SERVER)
    clients = [fed.pid(f"site-{i}") for i in range(1, N_SITES + 1)]
    roles = {
        "server": lambda: [server],
        "workflow": lambda: children([server], "fedsec.workflow"),
        "clients": lambda: clients,
        "scripts": lambda: children(clients, SCRIPT.name),
    }
    for pid in (server, *clients):
        reset_peak(pid)  # VmHWM from here on: this job's peak
    with Session(fed.kit(ADMIN)) as session, Sampler(roles, seen=fed.extra) as sampler:
        started = time.perf_counter()
        job_id = session.submit_job(job)
        info = session.wait_for_job(job_id, timeout=60 + rounds * (train_seconds + 60), poll=0.2)
        elapsed = time.perf_counter() - started
    workflow_log = fed.kit(SERVER) / "store" / "jobs" / job_id / "workflow.log"
    if info.status != "finished:completed":
        print(f"c. job {job_id} ended {info.status}: {info.reason}")
        print(f"----- workflow.log (tail)\n{tail(workflow_log)}\n----- server log (tail)\n{tail(fed.server_log)}")
        raise SystemExit(1)
    times = round_times(workflow_log, info.progress)
    print(
        f"c. FedAvg, {N_SITES} sites, {rounds} rounds, {n_params:,} float32 parameters "
        f"({len(params)} tensors), training = sleep {train_seconds:g} s"
    )
    print(f"     job submit -> finished: {elapsed:.2f} s")
    print(f"     bytes per site per round: down {down:,} (global model container), up {up:,} (update container)")
    print("     round  wall_s  slowest_site_s  overhead_s  first_accept_s  last_accept_s  aggregate_s")
    for t in times:
        print(
            f"     {t.number:>5}  {t.wall:6.3f}  {t.slowest_site:14.3f}  {t.overhead:10.3f}  "
            f"{t.first_accept:14.3f}  {t.last_accept:13.3f}  {t.aggregate:11.3f}"
        )
    steady = [t.overhead for t in times if t.number > 0]
    print(f"     round 0 overhead (sites also fetch the job and start their scripts): {times[0].overhead:.3f} s")
    if steady:
        print(f"     server overhead per round, rounds 1-{times[-1].number}: {spread(steady, 's')}")
    print("d. peak VmRSS during the job (0.2 s samples; VmHWM = the kernel's peak for one process):")
    print(f"     server parent + workflow (summed per sample): {sampler.peak('server', 'workflow'):.1f} MiB")
    for role in roles:
        peak, hwm, cpu = sampler.peak(role), sampler.hwm.get(role, 0.0), sampler.cpu(role)
        print(f"     {role:<9} sampled peak {peak:7.1f} MiB   max VmHWM {hwm:7.1f} MiB   CPU {cpu:6.2f} s")
    print("     (clients, scripts: the 8 processes summed; VmHWM: the largest one; CPU: used during the job)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--train-seconds", type=float, default=2.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fedsec-runtime-bench-") as tmp, Federation(Path(tmp)) as fed:
        print(f"workload: secure_project ({N_SITES} sites) on 127.0.0.1, kits in {fed.prod}")
        print(f"machine: {os.cpu_count()} cores, load average {load()} at the start")
        measure_starts(fed, args.starts, args.idle_seconds)
        measure_job(fed, Path(tmp), args.rounds, args.train_seconds)
        print(f"load average {load()} at the end (other work on this machine skews every timing above)")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
