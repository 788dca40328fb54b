"""Benchmark: one large model through a real federation, and the memory each process needs for it.

Workload: provision/secure_project.yml provisioned into a temporary folder with free
ports on 127.0.0.1 and started with a copy of workspaces/start_fl.sh 1 (the server and
site-1). One FedAvg job, 1 site, 1 round, no final evaluation: a float32 model of
--params parameters (default 125M = 500 MB) in --tensors equal tensors, initial
weights from --init (normal: random, as a real model's; zeros: compressible), training
script bench/scripts/sleep_client.py with no sleep (it answers a weight difference of
zeros), then the result downloaded through the admin API as a user would.
Prints the wall time of each step and the peak resident memory of the server parent,
the workflow process, the client parent, the training script and this process (the
admin), sampled from /proc every 0.2 s, with each process's VmHWM. A step that fails
is reported with its error and the logs; nothing is worked around. Asserts nothing
about time. Run: .venv/bin/python bench/stream_bench.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

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
from fedsec.errors import FedsecError  # noqa: E402
from fedsec.jobs import FedAvgRecipe  # noqa: E402

SCRIPT = Path(__file__).resolve().parent / "scripts" / "sleep_client.py"
SITE = "site-1"
MIB = 1 << 20


def model(n_params: int, n_tensors: int, init: str) -> dict[str, NDArray[np.float32]]:
    rng = np.random.default_rng(0)
    size = n_params // n_tensors
    out: dict[str, NDArray[np.float32]] = {}
    for i in range(n_tensors):
        if init == "zeros":
            out[f"layer{i}.weight"] = np.zeros((size // 1000, 1000), dtype=np.float32)
        else:
            out[f"layer{i}.weight"] = rng.standard_normal((size // 1000, 1000), dtype=np.float32)
    return out


def export_job(tmp: Path, n_params: int, n_tensors: int, init: str) -> tuple[Path, int]:
    """The job folder and the size of its model container."""
    recipe = FedAvgRecipe(
        "stream-bench",
        model(n_params, n_tensors, init),
        SCRIPT,
        num_rounds=1,
        min_clients=1,
        sites=[SITE],
        script_args=["--train-seconds", "0"],
        evaluate_final=False,
    )
    job = recipe.export(tmp / "job")
    return job, (job / "app" / "initial_model.fsa").stat().st_size


def step(what: str, began: float) -> None:
    print(f"  {what:<34} {time.perf_counter() - began:8.2f} s")


def run_job(fed: Federation, tmp: Path, job: Path, sampler: Sampler) -> str | None:
    """Submit, follow and download the job, printing each step's time; the failure, if any."""
    with Session(fed.kit(ADMIN), timeout=60) as session:
        began = time.perf_counter()
        sampler.phase = "submit"
        try:
            job_id = session.submit_job(job)
        except FedsecError as exc:
            return f"submit_job: {exc}"
        step("submit_job (pack + upload)", began)
        sampler.phase = "run"
        try:
            info = session.wait_for_job(job_id, timeout=480, poll=0.2)
        except FedsecError as exc:
            return f"wait_for_job {job_id}: {exc}"
        step("submit -> job finished", began)
        workflow_log = fed.kit(SERVER) / "store" / "jobs" / job_id / "workflow.log"
        opened = [t for t, _ in timed_lines(workflow_log, " train sampled=")]
        closed = [t for t, _ in timed_lines(workflow_log, " done metrics=")]
        if opened and closed:
            print(f"  {'round 0 (train sampled -> done)':<34} {closed[0] - opened[0]:8.2f} s")
        if info.status != "finished:completed":
            return f"job {job_id} ended {info.status}: {info.reason}"
        began = time.perf_counter()
        sampler.phase = "download"
        try:
            session.download_job_result(job_id, tmp / "result")
        except FedsecError as exc:
            return f"download_job_result {job_id}: {exc}"
        step("download_job_result", began)
    return None


def report_memory(fed: Federation, sampler: Sampler, size: int, idle: dict[str, float]) -> None:
    print(f"peak resident memory (MiB; the model container is {size / MIB:.0f} MiB):")
    phases = ("submit", "run", "download")
    head = "".join(f"{p:>9}" for p in phases)
    print(f"  {'process':<9} {'idle':>6} {head} {'VmHWM':>8} {'peak-idle':>10} {'x model':>8} {'CPU s':>7}")
    for role in sampler.roles:
        peaks = "".join(f"{sampler.peak(role, phase=p):9.1f}" for p in phases)
        peak, hwm = sampler.peak(role), sampler.hwm.get(role, 0.0)
        base = idle.get(role, 0.0)
        extra = max(peak, hwm) - base
        ratio, cpu = extra * MIB / size, sampler.cpu(role)
        print(f"  {role:<9} {base:6.1f} {peaks} {hwm:8.1f} {extra:10.1f} {ratio:8.2f} {cpu:7.2f}")
    logs = sorted(fed.kit(SITE).glob("jobs/*/log.txt"))
    for path in logs:
        for line in path.read_text(errors="replace").splitlines():
            if "vmhwm_kib=" in line:
                print(f"  script's own VmHWM at exit: {int(line.rsplit('=', 1)[1]) / 1024:.1f} MiB")
    print("  (idle: before the job; submit/run/download: sampled VmRSS peak during submit_job, submit to")
    print("   finished, download_job_result; VmHWM: the kernel's peak since submit; x model: (peak - idle) / model;")
    print("   CPU s: CPU seconds used while sampled)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--params", type=int, default=125_000_000)
    parser.add_argument("--tensors", type=int, default=5)
    parser.add_argument("--init", choices=["normal", "zeros"], default="normal")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fedsec-stream-bench-") as name:
        tmp = Path(name)
        print(f"workload: 1 site, 1 round, {args.params:,} float32 parameters in {args.tensors} tensors, {args.init}")
        print(f"machine: {os.cpu_count()} cores, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        began = time.perf_counter()
        job, size = export_job(tmp, args.params, args.tensors, args.init)
        step(f"build + export ({size:,} bytes)", began)
        with Federation(tmp) as fed:
            fed.start(1)
            fed.wait_registered([SITE], 0)
            server, client, me = fed.pid(SERVER), fed.pid(SITE), os.getpid()
            roles = {
                "server": lambda: [server],
                "workflow": lambda: children([server], "fedsec.workflow"),
                "client": lambda: [client],
                "script": lambda: children([client], SCRIPT.name),
                "admin": lambda: [me],
            }
            idle = {name: memory_mib(pid)[0] for name, pid in (("server", server), ("client", client), ("admin", me))}
            for pid in (server, client, me):
                reset_peak(pid)  # VmHWM from here on: this job's peak, not the model's construction
            with Sampler(roles, seen=fed.extra) as sampler:  # children seen get stopped too
                failure = run_job(fed, tmp, job, sampler)
            report_memory(fed, sampler, size, idle)
            if failure is not None:
                print(f"FAILED: {failure}")
                print(fed.logs(40))
                raise SystemExit(1)
            print(f"server log (tail):\n{tail(fed.server_log, 8)}")


if __name__ == "__main__":
    main()
