"""Benchmark: what a job costs beyond its training (issue 12), plain and HE, through the production path.

Workload (defaults = the issue's): the 3,491,530-parameter CIFAR-10 CNN of
jobs/cifar10/model.py, --sites 8 sites, --rounds 5 rounds, each site training
--epochs 1 epoch over --samples 500 synthetic CIFAR-shaped images with --threads 1
torch thread (bench/scripts/cnn_client.py). provision/secure_project.yml is
provisioned into a temporary folder with free ports, started with a copy of
workspaces/start_fl.sh (each kit's start.sh runs its process under setsid: a
session of its own, as separate machines would be), and each job is submitted with
fedsec.api.Session.submit_job. Per job it prints:
  - wall time (submit_job called to the job finished), the summed slowest-site
    training time (over rounds, the largest train_s a site reported), and the
    overhead: their difference;
  - submit to round 0 ('round=0 train sampled' in the workflow's log);
  - each round's wall time ('train sampled' to 'done') and slowest site;
  - the time from the last round's end ('round=N done') to the job finished, and the
    bytes each site moved in it (the final model's delivery, the evaluation, the end), and
    its phases from the logs (to the last evaluation result, the last script's exit, the
    workflow's end, the job's end);
  - bytes up and down per site per round, counted on the site parents' TCP
    sockets to the server as `ss -tin` reports them (bytes_acked = sent and
    acknowledged, bytes_received), sampled at each round's start and end;
  - the job scripts' start: the site's "job=... script=" log line to the script's
    first line, and to its imports (torch, the model) being done;
  - peak summed VmRSS of every fedsec process (server, workflow, sites, scripts), and
    the CPU seconds each group used (what fedsec's own processes cost, beside the scripts').
With --warm-launcher on, every site keeps a ready job process (site settings).
Prints figures; asserts nothing. The machine's load is printed: other work stretches every time.
Run: .venv/bin/python bench/job_overhead_bench.py [--sites 3 --rounds 2] [--modes plain he]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # so that `python bench/NAME.py` finds the bench package

import torch  # noqa: E402

from bench.federation import ADMIN, SERVER, Federation, Sampler, log_time, tail, timed_lines  # noqa: E402
from bench.runtime_bench import round_times  # noqa: E402
from fedsec.api import Session  # noqa: E402
from fedsec.jobs import FedAvgRecipe  # noqa: E402

CIFAR10 = ROOT / "jobs" / "cifar10"
SCRIPT = Path(__file__).resolve().parent / "scripts" / "cnn_client.py"
_SS_SOCKET = re.compile(r"bytes_acked:(\d+).*?bytes_received:(\d+)")
_STARTED = re.compile(r"script started_at=([\d.]+) imported_at=([\d.]+)")
_DONE = re.compile(r"script done_at=([\d.]+)")


def site_bytes(pids: dict[str, int], port: int) -> dict[str, tuple[int, int]]:
    """(bytes sent and acked, bytes received) of each site parent's TCP sockets to the server's port (ss -tinp)."""
    out = subprocess.run(
        ["ss", "-H", "-tinp", "state", "established", f"( dport = :{port} )"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    by_pid = {pid: site for site, pid in pids.items()}
    totals = {site: (0, 0) for site in pids}
    owner: str | None = None
    for line in out.splitlines():
        if not line.startswith((" ", "\t")):  # a socket's line: its owner; the next line holds its counters
            found = re.search(r"pid=(\d+)", line)
            owner = by_pid.get(int(found.group(1))) if found else None
            continue
        match = _SS_SOCKET.search(line)
        if owner is not None and match is not None:
            up, down = totals[owner]
            totals[owner] = (up + int(match.group(1)), down + int(match.group(2)))
    return totals


@dataclass
class ByteSampler:
    """site_bytes() every interval seconds in a thread, with the time of each sample."""

    pids: dict[str, int]
    port: int
    interval: float = 0.25
    samples: list[tuple[float, dict[str, tuple[int, int]]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> ByteSampler:
        self._thread = threading.Thread(target=self._run, name="ss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.time(), site_bytes(self.pids, self.port)))

    def _run(self) -> None:
        while True:
            self.samples.append((time.time(), site_bytes(self.pids, self.port)))
            if self._stop.wait(self.interval):
                return

    def between(self, start: float, end: float) -> dict[str, tuple[int, int]]:
        """Bytes (up, down) each site moved from the last sample before start to the first after end."""
        before = [s for t, s in self.samples if t <= start] or [self.samples[0][1]]
        after = [s for t, s in self.samples if t >= end] or [self.samples[-1][1]]
        a, b = before[-1], after[0]
        return {site: (b[site][0] - a[site][0], b[site][1] - a[site][1]) for site in a}


def descendants(roots: list[int]) -> list[int]:
    """Every process below roots (children, their children, ...), from /proc."""
    parent: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            parent[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    found, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        kids = [p for p, pp in parent.items() if pp == pid]
        found += kids
        todo += kids
    return found


def make_job(tmp: Path, args: argparse.Namespace, he: bool) -> Path:
    sys.path.insert(0, str(CIFAR10))
    from model import ModerateCNN  # type: ignore[import-not-found]  # jobs/cifar10/model.py

    torch.manual_seed(0)
    recipe = FedAvgRecipe(
        f"overhead-{'he' if he else 'plain'}",
        ModerateCNN(),
        SCRIPT,
        num_rounds=args.rounds,
        min_clients=args.sites,
        script_args=["--samples", str(args.samples), "--epochs", str(args.epochs), "--threads", str(args.threads)],
        custom_files=[CIFAR10 / "model.py"],
        he=he,
        he_clip=2.0,
        he_max_clients=max(args.sites, 2),
    )
    return recipe.export(tmp / f"job-{'he' if he else 'plain'}")


def script_starts(fed: Federation, sites: list[str], job_id: str) -> list[tuple[float, float]]:
    """Per site: (the site's 'job=ID script=' line to the script's first line, to its imports done), seconds."""
    out = []
    for site in sites:
        began = next((when for when, _ in timed_lines(fed.kit(site) / "log.txt", f"job={job_id} script=")), None)
        log = fed.kit(site) / "jobs" / job_id / "log.txt"
        found = _STARTED.search(log.read_text(errors="replace")) if log.exists() else None
        if began is not None and found is not None:
            out.append((float(found.group(1)) - began, float(found.group(2)) - began))
    return out


def run_job(fed: Federation, tmp: Path, args: argparse.Namespace, he: bool, port: int) -> None:
    sites = [f"site-{i}" for i in range(1, args.sites + 1)]
    job = make_job(tmp, args, he)
    server = fed.pid(SERVER)
    site_pids = {s: fed.pid(s) for s in sites}
    roles = {
        "server": lambda: [server],
        "workflow": lambda: descendants([server]),
        "sites": lambda: list(site_pids.values()),
        "scripts": lambda: descendants(list(site_pids.values())),
    }
    with Session(fed.kit(ADMIN)) as session, Sampler(roles) as memory, ByteSampler(site_pids, port) as nbytes:
        submitted = time.time()
        job_id = session.submit_job(job)
        info = session.wait_for_job(job_id, timeout=3600, poll=0.2)
        finished = time.time()
    workflow_log = fed.kit(SERVER) / "store" / "jobs" / job_id / "workflow.log"
    mode = "HE" if he else "plain"
    if info.status != "finished:completed":
        print(f"{mode} job {job_id} ended {info.status}: {info.reason}\n{tail(workflow_log)}\n{fed.logs()}")
        raise SystemExit(1)
    rounds = round_times(workflow_log, info.progress)
    training = sum(r.slowest_site for r in rounds)
    wall = finished - submitted
    round0 = next(timed_lines(workflow_log, "round=0 train sampled"))[0]
    print(f"{mode} job ({args.sites} sites, {args.rounds} rounds, {args.samples} samples, {args.threads} thread):")
    print(f"  wall time {wall:.2f} s, summed slowest-site training {training:.2f} s, overhead {wall - training:.2f} s")
    print(f"  submit to round 0: {round0 - submitted:.2f} s")
    print("  round  wall_s  slowest_site_s  overhead_s  up_MB/site (min-max)  down_MB/site (min-max)")
    starts = _round_bounds(workflow_log)
    for r in rounds:
        begin, end = starts.get(r.number, (submitted, finished))
        moved = nbytes.between(begin, end)
        ups = [u / 1e6 for u, _ in moved.values()]
        downs = [d / 1e6 for _, d in moved.values()]
        print(
            f"  {r.number:>5}  {r.wall:6.2f}  {r.slowest_site:14.2f}  {r.overhead:10.2f}  "
            f"{min(ups):8.2f}-{max(ups):<8.2f}        {min(downs):8.2f}-{max(downs):<8.2f}"
        )
    last_done = starts.get(args.rounds - 1, (submitted, finished))[1]
    after = nbytes.between(last_done, finished)
    downs_after, ups_after = [d for _, d in after.values()], [u for u, _ in after.values()]
    print(
        f"  after the last round (its 'done' to the job finished): {finished - last_done:.2f} s, "
        f"down/site {spread_mb(downs_after)} MB, up/site {spread_mb(ups_after)} MB"
    )
    print(f"    {end_phases(fed, sites, job_id, workflow_log, args.rounds, last_done)}")
    total = nbytes.between(submitted, finished)
    up = sum(u for u, _ in total.values()) / len(total) / args.rounds / 1e6
    down = sum(d for _, d in total.values()) / len(total) / args.rounds / 1e6
    print(f"  whole job, per site per round: up {up:.2f} MB, down {down:.2f} MB (archive, tasks, results, heartbeats)")
    after_down = sum(downs_after) / len(downs_after) / 1e6 if downs_after else 0.0
    print(f"  training rounds alone (the whole job less what came after the last round), down per site per round: "
          f"{down - after_down / args.rounds:.2f} MB")  # fmt: skip
    starts_s = script_starts(fed, sites, job_id)
    if starts_s:
        first = sorted(s for s, _ in starts_s)
        ready = sorted(i for _, i in starts_s)
        print(
            f"  script start (site's start of the script to its first line / to its imports done): "
            f"median {first[len(first) // 2]:.2f} / {ready[len(ready) // 2]:.2f} s, "
            f"max {first[-1]:.2f} / {ready[-1]:.2f} s"
        )
    print(f"  peak summed VmRSS of all fedsec processes: {memory.peak(*roles):.0f} MiB", end="")
    print(f" (scripts {memory.peak('scripts'):.0f}, sites {memory.peak('sites'):.0f}, server+workflow "
          f"{memory.peak('server', 'workflow'):.0f})")  # fmt: skip
    cpu = ", ".join(f"{role} {memory.cpu(role):.1f}" for role in roles)
    print(f"  CPU seconds used while sampled (user + system): {cpu}")


def end_phases(fed: Federation, sites: list[str], job_id: str, workflow_log: Path, rounds: int, start: float) -> str:
    """Where the time after the last round goes, from the logs: the final evaluation (the final model's
    delivery to the last site's result), the sites told the job is done (the script's own line), their
    scripts' exits (as their sites log them), the workflow's end, the job's end."""
    marks = [("evaluation", workflow_log, f"round={rounds} accepted site=")]
    marks += [
        (f"scripts ended ({len(sites)})", fed.kit(site) / "log.txt", f"job={job_id} script exited") for site in sites
    ]
    marks += [("workflow ended", workflow_log, "workflow ended"), ("job ended", fed.server_log, f"job={job_id} ended")]
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for name, path, needle in marks:
        for when, _ in timed_lines(path, needle):
            first[name] = min(first.get(name, when), when)
            last[name] = max(last.get(name, when), when)
    for site in sites:  # the scripts' own line once receive() said the job is done (bench/scripts/cnn_client.py)
        log = fed.kit(site) / "jobs" / job_id / "log.txt"
        found = _DONE.search(log.read_text(errors="replace")) if log.exists() else None
        if found is not None:
            when = float(found.group(1))
            first["sites told done"] = min(first.get("sites told done", when), when)
            last["sites told done"] = max(last.get("sites told done", when), when)
    parts, before = [], start
    names = [name for name, _, _ in marks]
    names.insert(1, "sites told done")
    for name in dict.fromkeys(names):
        if name in last:
            spread = f" (the first +{first[name] - before:.2f} s)" if first[name] < last[name] else ""
            parts.append(f"{name} +{last[name] - before:.2f} s{spread}")
            before = last[name]
    return "; ".join(parts)


def spread_mb(values: list[int]) -> str:
    """min-max of byte counts, in MB."""
    return f"{min(values) / 1e6:.2f}-{max(values) / 1e6:.2f}"


def _round_bounds(workflow_log: Path) -> dict[int, tuple[float, float]]:
    bounds: dict[int, list[float]] = {}
    for line in workflow_log.read_text(errors="replace").splitlines():
        found = re.search(r"round=(\d+) (train sampled=|done )", line)
        when = log_time(line)
        if found is None or when is None:
            continue
        entry = bounds.setdefault(int(found.group(1)), [when, when])
        if found.group(2).startswith("done"):
            entry[1] = when
        else:
            entry[0] = when
    return {n: (b[0], b[1]) for n, b in bounds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sites", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--modes", nargs="+", choices=("plain", "he"), default=["plain", "he"])
    parser.add_argument("--warm-launcher", choices=("on", "off"), default="off")
    args = parser.parse_args()
    sites = [f"site-{i}" for i in range(1, args.sites + 1)]
    with tempfile.TemporaryDirectory(prefix="fedsec-overhead-bench-") as tmp, Federation(Path(tmp)) as fed:
        fed.set_warm_launcher(sites, args.warm_launcher == "on")
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the start")
        print(f"warm launcher: {args.warm_launcher}; kits in {fed.prod}")
        offset = fed.server_log.stat().st_size if fed.server_log.exists() else 0
        fed.start(args.sites)
        fed.wait_registered(sites, offset)
        port = _fl_port(fed)
        if args.warm_launcher == "on":  # until every site has its ready job process
            deadline = time.monotonic() + 300
            while not all(warm_ready(fed, s) for s in sites):
                if time.monotonic() > deadline:
                    raise SystemExit("the sites' ready job processes did not start in 300 s")
                time.sleep(0.2)
        for mode in args.modes:
            run_job(fed, Path(tmp), args, mode == "he", port)
        print(f"load average {os.getloadavg()[0]:.2f} at the end")


def warm_ready(fed: Federation, site: str) -> bool:
    """Whether site's ready job process has imported its framework (its first line in its log)."""
    return any("warm job process: ready" in p.read_text() for p in (fed.kit(site) / "jobs").glob(".warm-*/log.txt"))


def _fl_port(fed: Federation) -> int:
    import json

    config: dict[str, Any] = json.loads((fed.kit("site-1") / "startup" / "fed_client.json").read_text())
    return int(config["server"]["port"])


if __name__ == "__main__":
    main()
