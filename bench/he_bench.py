"""Benchmark: the same FedAvg job with and without homomorphic encryption.

Workload: provision/secure_project.yml (HE on) on 127.0.0.1, 8 sites, a
3,491,530-parameter float32 CIFAR-10-shaped CNN (bench/runtime_bench.py's
cnn_params), 5 rounds, training = bench/scripts/sleep_client.py sleeping
--train-seconds per round (a stand-in for local training, so the figures show
what fedsec adds). The plain job runs first, then the HE job on the same
federation. Prints wall times and their ratio, bytes per parameter uploaded
and downloaded, and peak resident memory of every fedsec process summed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.federation import ADMIN, SERVER, Federation, Sampler, children  # noqa: E402
from bench.runtime_bench import N_SITES, SCRIPT, cnn_params  # noqa: E402
from fedsec.api import Session  # noqa: E402
from fedsec.jobs import FedAvgRecipe  # noqa: E402
from fedsec.wire import arrays  # noqa: E402


def run_job(fed: Federation, tmp: Path, he: bool, rounds: int, train_seconds: float) -> tuple[float, float, str]:
    """(wall seconds, peak MiB of all fedsec processes, job id)."""
    recipe = FedAvgRecipe(
        "he-bench" if he else "plain-bench", cnn_params(), SCRIPT, num_rounds=rounds, min_clients=N_SITES,
        script_args=["--train-seconds", str(train_seconds)], he=he,
    )  # fmt: skip
    job = recipe.export(tmp / ("job-he" if he else "job-plain"))
    server = fed.pid(SERVER)
    clients = [fed.pid(f"site-{i}") for i in range(1, N_SITES + 1)]
    roles = {
        "server": lambda: [server],
        "workflow": lambda: children([server], "fedsec.workflow"),
        "clients": lambda: clients,
        "scripts": lambda: children(clients, SCRIPT.name),
    }
    with Session(fed.kit(ADMIN)) as session, Sampler(roles, seen=fed.extra) as sampler:
        started = time.perf_counter()
        job_id = session.submit_job(job)
        info = session.wait_for_job(job_id, timeout=600, poll=0.2)
        elapsed = time.perf_counter() - started
    if info.status != "finished:completed":
        raise SystemExit(f"job {job_id} ended {info.status}: {info.reason}")
    return elapsed, sampler.peak("server", "workflow", "clients", "scripts"), job_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--train-seconds", type=float, default=10.0)
    args = parser.parse_args()
    from fedsec.he.codec import encrypt_model
    from fedsec.he.context import load_client_context

    params = cnn_params()
    n_params = sum(int(v.size) for v in params.values())
    with tempfile.TemporaryDirectory(prefix="fedsec-he-bench-") as tmp, Federation(Path(tmp)) as fed:
        fed.start(N_SITES)
        fed.wait_registered([f"site-{i}" for i in range(1, N_SITES + 1)], 0)
        context = load_client_context((fed.kit("site-1") / "startup/client_context.tenseal").read_bytes(), "ctx")
        start = time.perf_counter()
        upload = len(encrypt_model(context, params, 1.0, 4.0))
        encrypt_seconds = time.perf_counter() - start
        plain_s, plain_peak, _ = run_job(fed, Path(tmp), False, args.rounds, args.train_seconds)
        he_s, he_peak, he_id = run_job(fed, Path(tmp), True, args.rounds, args.train_seconds)
        checkpoints = sorted((fed.kit(SERVER) / "store/jobs" / he_id / "workspace/checkpoints").glob("*.fsh"))
        download = checkpoints[-1].stat().st_size
    plain_bytes = len(arrays.encode(params))
    print(
        f"workload: {N_SITES} sites, {args.rounds} rounds, {n_params:,} float32 parameters, "
        f"training = sleep {args.train_seconds:g} s per round"
    )
    print(f"plain job: {plain_s:6.1f} s   peak memory, all fedsec processes: {plain_peak:7.1f} MiB")
    print(f"HE job:    {he_s:6.1f} s   peak memory, all fedsec processes: {he_peak:7.1f} MiB")
    print(f"HE job time / plain job time: {he_s / plain_s:.2f}x")
    print(f"upload per site per round: plain {plain_bytes / n_params:.2f} B/param, HE {upload / n_params:.2f} B/param")
    print(f"download per site per round (encrypted global model): {download / n_params:.2f} B/param")
    print(f"encrypting one update (one site, one process): {encrypt_seconds:.2f} s")


if __name__ == "__main__":
    main()
