"""Benchmark: the bytes each site moves per round, and what HE adds to a job's wall time.

Workload: provision/secure_project.yml (HE on) on 127.0.0.1 through bench/federation.py
(start_fl.sh, Session.submit_job: the production path), --sites sites, a --params-parameter
float32 model (a few MB), --rounds rounds, training = bench/scripts/sleep_client.py sleeping
--train-seconds per round and sending a small non-zero weight difference (so every round's
global model is new, as in real training). The plain job runs first, then the same job with HE.

Bytes are counted on the sockets: `ss -tinp` every --sample seconds gives each site
parent's TCP bytes received and sent (TLS and gRPC framing included); a round's share is
what moved between its opening and the next one's (workflow.log timestamps), so round 0
holds the job archive, and the last row ("end") what moved after the last train round
(the final evaluation, if any, and the job's end); its seconds run from its opening (or the
last round's end) to the job's end as the admin sees it. Prints, per job: wall time, bytes down
and up per site per round (the mean over sites), the largest site parent's peak resident memory
(VmHWM, reset before each job), and the HE / plain wall time ratio; then, in this process, how
soon one site's HE upload has its first chunk ready against its whole encryption.
Asserts nothing about time.
Run: python bench/model_bytes_bench.py [--sites 4 --params 1000000 --rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # so that `python bench/NAME.py` finds the bench package

from bench.federation import ADMIN, SERVER, Federation, memory_mib, reset_peak, timed_lines  # noqa: E402
from fedsec import limits  # noqa: E402
from fedsec.api import Session  # noqa: E402
from fedsec.jobs import FedAvgRecipe  # noqa: E402

SCRIPT = Path(__file__).resolve().parent / "scripts" / "sleep_client.py"
_ROUND = re.compile(r"round=(\d+) (train|evaluate) sampled=")
_PID = re.compile(r"pid=(\d+)")
_BYTES = re.compile(r"\bbytes_(acked|received):(\d+)")


def model(n_params: int) -> dict[str, np.ndarray]:
    """A float32 model of about n_params values in four tensors (random, so nothing compresses)."""
    rng = np.random.default_rng(0)
    quarter = max(1, n_params // 4)
    return {f"layer{i}.weight": rng.standard_normal(quarter).astype(np.float32) * 0.05 for i in range(4)}


def socket_bytes(pids: set[int]) -> dict[int, tuple[int, int]]:
    """pid -> (bytes received, bytes sent and acknowledged) over its established TCP sockets now."""
    out = subprocess.run(["ss", "-tinpH", "state", "established"], capture_output=True, text=True, check=False).stdout
    totals: dict[int, tuple[int, int]] = {}
    owner: int | None = None
    for line in out.splitlines():
        if not line[:1].isspace():
            found = {int(p) for p in _PID.findall(line)} & pids
            owner = min(found) if found else None
            continue
        if owner is None:
            continue
        counts = dict(_BYTES.findall(line))
        down, up = totals.get(owner, (0, 0))
        totals[owner] = (down + int(counts.get("received", 0)), up + int(counts.get("acked", 0)))
    return totals


@dataclass
class SocketSampler:
    """Samples socket_bytes of the site parents in a thread: (time, pid -> (down, up)) per tick.

    A socket that closes takes its counts with it, so each tick's figures are added to what
    closed sockets had moved: counts only grow (a drop is a closed socket; its last count is kept).
    """

    pids: set[int]
    interval: float
    ticks: list[tuple[float, dict[int, tuple[int, int]]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> SocketSampler:
        self._thread = threading.Thread(target=self._run, name="ss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._tick()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._tick()

    def _tick(self) -> None:
        seen = socket_bytes(self.pids)
        last = self.ticks[-1][1] if self.ticks else {}
        now = {}
        for pid in self.pids:  # a total that fell: a socket closed; its last counts are kept (a lower bound)
            (down, up), (was_down, was_up) = seen.get(pid, (0, 0)), last.get(pid, (0, 0))
            now[pid] = (max(down, was_down), max(up, was_up))
        self.ticks.append((time.time(), now))

    def before(self, when: float) -> dict[int, tuple[int, int]]:
        """The counts of the last tick at or before when (the first tick if none)."""
        best = self.ticks[0][1]
        for tick, counts in self.ticks:
            if tick > when:
                break
            best = counts
        return best

    def after(self, when: float) -> dict[int, tuple[int, int]]:
        """The counts of the first tick at or after when (the last tick if none)."""
        return next((counts for tick, counts in self.ticks if tick >= when), self.ticks[-1][1])


def run_job(
    fed: Federation, tmp: Path, he: bool, args: argparse.Namespace
) -> tuple[float, float, list[tuple[str, float, float, float]]]:
    """(wall seconds, the largest site parent's peak RSS in MiB, [(round label, seconds, MB down, MB up per site)]).

    Downloads of a round start after its opening and uploads end before the next one opens
    (the sleeping script sends nothing for --train-seconds), so a boundary's download count is
    the last sample before it, its upload count the first sample after it.
    """
    recipe = FedAvgRecipe(
        "he-bytes" if he else "plain-bytes", model(args.params), SCRIPT, num_rounds=args.rounds,
        min_clients=args.sites, script_args=["--train-seconds", str(args.train_seconds), "--diff", "0.001"],
        he=he, he_clip=1.0, he_max_clients=args.sites,
    )  # fmt: skip
    job = recipe.export(tmp / ("job-he" if he else "job-plain"))
    sites = {fed.pid(f"site-{i}") for i in range(1, args.sites + 1)}
    for pid in sites:
        reset_peak(pid)
    with Session(fed.kit(ADMIN)) as session, SocketSampler(sites, args.sample) as sampler:
        time.sleep(2 * args.sample)  # a first tick before the job
        started = time.time()
        job_id = session.submit_job(job)
        info = session.wait_for_job(job_id, timeout=900, poll=0.2)
        elapsed = time.time() - started
        time.sleep(2 * args.sample)
    if info.status != "finished:completed":
        raise SystemExit(f"job {job_id} ended {info.status}: {info.reason}")
    peak = max(memory_mib(pid)[1] for pid in sites)
    flow_log = fed.kit(SERVER) / "store" / "jobs" / job_id / "workflow.log"
    opens: list[tuple[str, float]] = []
    for when, line in timed_lines(flow_log, " sampled="):
        found = _ROUND.search(line)
        if found:
            label = f"round {found.group(1)}" if found.group(2) == "train" else "evaluate"
            opens.append((label, when))
    bounds = [started, *(when for _, when in opens[1:]), started + elapsed]
    labels = [label for label, _ in opens]
    if labels and labels[-1] == "evaluate":
        labels[-1] = "evaluate + end"
    else:
        labels.append("end")
        bounds.insert(-1, _last_round_done(flow_log) or bounds[-1])
    rows = []
    for label, (begin, end) in zip(labels, itertools.pairwise(bounds), strict=False):
        down = _mean_delta(sampler.before(begin), sampler.before(end), 0)
        up = _mean_delta(sampler.after(begin), sampler.after(end), 1)
        rows.append((label, end - begin, down, up))
    return elapsed, peak, rows


def _mean_delta(first: dict[int, tuple[int, int]], last: dict[int, tuple[int, int]], which: int) -> float:
    """The mean over sites of what count which (0: down, 1: up) grew by from first to last, in MB."""
    deltas = [last[p][which] - first.get(p, (0, 0))[which] for p in last]
    return sum(deltas) / len(deltas) / 1e6


def _last_round_done(flow_log: Path) -> float | None:
    times = [when for when, _ in timed_lines(flow_log, " done metrics=")]
    return times[-1] if times else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--params", type=int, default=1_000_000, help="model size in float32 values")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-seconds", type=float, default=2.0)
    parser.add_argument("--sample", type=float, default=0.1, help="seconds between two socket samples")
    parser.add_argument("--keep", type=Path, help="run in this new folder and keep it (its logs), not a temporary one")
    args = parser.parse_args()
    size = sum(v.nbytes for v in model(args.params).values())
    print(
        f"workload: {args.sites} sites, {args.rounds} rounds, a {size / 1e6:.1f} MB float32 model "
        f"({args.params:,} values), training = sleep {args.train_seconds:g} s per round"
    )
    walls = {}
    if args.keep is not None:
        args.keep.mkdir(parents=True)
    folder = contextlib.nullcontext(str(args.keep)) if args.keep else tempfile.TemporaryDirectory(prefix="fedsec-bb-")
    with folder as tmp, Federation(Path(tmp)) as fed:
        fed.start(args.sites)
        fed.wait_registered([f"site-{i}" for i in range(1, args.sites + 1)], 0)
        for he in (False, True):
            name = "HE" if he else "plain"
            walls[name], peak, rows = run_job(fed, Path(tmp), he, args)
            print(f"\n{name} job: {walls[name]:.1f} s wall; site parent peak RSS (the largest) {peak:.0f} MiB")
            print("  MB per site (mean over sites), counted on its sockets:")
            print(f"  {'':16} {'seconds':>8} {'down':>8} {'up':>8}")
            for label, seconds, down, up in rows:
                print(f"  {label:16} {seconds:8.1f} {down:8.2f} {up:8.2f}")
            total_down, total_up = sum(r[2] for r in rows), sum(r[3] for r in rows)
            print(f"  {'total':16} {'':8} {total_down:8.2f} {total_up:8.2f}")
        first, whole = upload_timing(fed.kit("site-1") / "startup" / "client_context.tenseal", args.params)
    print(f"\nHE job / plain job wall time: {walls['HE'] / walls['plain']:.2f}")
    print(f"HE upload of one site (one process): first {limits.CHUNK_BYTES >> 20} MiB ready after {first:.2f} s,")
    print(f"  the whole update encrypted after {whole:.2f} s (before streaming, the first byte waited for the whole)")


def upload_timing(context_file: Path, n_params: int) -> tuple[float, float]:
    """Seconds until encrypt_chunks has made the first upload chunk, and until it has made all of it."""
    from fedsec.he.codec import encrypt_chunks
    from fedsec.he.context import load_client_context

    context = load_client_context(context_file.read_bytes(), "site-1's HE context")
    started = time.perf_counter()
    first, made = 0.0, 0
    for piece in encrypt_chunks(context, model(n_params), 1.0, 1.0):
        made += len(piece)
        if not first and made >= limits.CHUNK_BYTES:
            first = time.perf_counter() - started
    return first, time.perf_counter() - started


if __name__ == "__main__":
    main()
