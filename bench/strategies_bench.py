"""Benchmark: the strategies side by side, plain and under homomorphic encryption.

Two tables, each job through the production path (provision/secure_project.yml
provisioned and started with start_fl.sh by bench/federation.py, the job
submitted with Session.submit_job):

1. server time per round (`--part server`): 8 sites, the 3,491,530-parameter
   CIFAR-10-shaped CNN (bench/runtime_bench.py's cnn_params), training a sleep
   of --train-seconds (bench/scripts/sleep_client.py, which answers every
   strategy's task, SCAFFOLD's control variates included). Per round, from the
   job's workflow.log: the round's wall time, and the server's close time
   (from the round's last accepted update to the round done: folding the last
   update, the strategy's step and the checkpoint). Medians over the rounds.
2. accuracy on skewed data (`--part dirichlet`): the digits job
   (jobs/digits_fedavg/job.py) with 3 sites on a Dirichlet(alpha) split of the
   classes (default alpha 0.1), each strategy plain and HE: the final global
   model's accuracy, as the job's result reports it.

3. HE against plain (`--part agreement`): the digits job's arithmetic (its
   client.py's training loop, 3 sites, the FedAvg / FedProx / FedOpt
   aggregation and step) in one process, once plain and once with each upload
   quantised as fedsec.he.codec does at 2**-bits (the encrypted sum is exact,
   so this is what HE computes). Per round: test images HE's model classifies
   differently from plain's in number, its largest weight gap and how many
   weights differ; for --bits 17 (two 21-bit values a slot, before) and 38 (one
   42-bit value a slot: he.clip 2, 3 sites), over --repeats rounding seeds.

Strategies run where the job says they may: one the server refuses under HE
is printed as refused, with the server's reason. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.federation import ADMIN, SERVER, Federation, log_time  # noqa: E402
from bench.runtime_bench import N_SITES, SCRIPT, cnn_params  # noqa: E402
from fedsec.api import Session  # noqa: E402
from fedsec.errors import FedsecError  # noqa: E402
from fedsec.jobs import FedAvgRecipe, FedOptRecipe, FedProxRecipe  # noqa: E402

DIGITS_JOB = ROOT / "jobs/digits_fedavg/job.py"


@dataclass(frozen=True)
class Choice:
    """One strategy as the bench runs it: its label, the digits job's flags, and its recipe and settings."""

    label: str
    flags: tuple[str, ...]
    recipe: type[FedAvgRecipe]
    settings: dict[str, Any]


def choices(only: list[str] | None) -> list[Choice]:
    """The strategies fedsec ships (SCAFFOLD where this checkout has it), or those only names (first words)."""
    return [c for c in _all_choices() if only is None or c.label.split()[0] in only]


def _all_choices() -> list[Choice]:
    found = [
        Choice("fedavg", ("--strategy", "fedavg"), FedAvgRecipe, {}),
        Choice("fedprox mu=0.01", ("--strategy", "fedprox", "--mu", "0.01"), FedProxRecipe, {"mu": 0.01}),
        Choice("fedopt adam", ("--strategy", "fedopt", "--optimizer", "adam"), FedOptRecipe, {"optimizer": "adam"}),
        Choice("fedopt yogi", ("--strategy", "fedopt", "--optimizer", "yogi"), FedOptRecipe, {"optimizer": "yogi"}),
        Choice(
            "fedopt adagrad", ("--strategy", "fedopt", "--optimizer", "adagrad"), FedOptRecipe, {"optimizer": "adagrad"}
        ),
        Choice("fedopt avgm", ("--strategy", "fedopt", "--optimizer", "avgm"), FedOptRecipe, {"optimizer": "avgm"}),
    ]
    import fedsec.jobs

    scaffold: type[FedAvgRecipe] | None = getattr(fedsec.jobs, "ScaffoldRecipe", None)
    if scaffold is None:
        return found
    return [*found, Choice("scaffold", ("--strategy", "scaffold"), scaffold, {})]


def round_times(workflow_log: Path) -> tuple[list[float], list[float]]:
    """(wall seconds, close seconds) of each training round in a job's workflow.log."""
    opened: dict[int, float] = {}
    last_accept: dict[int, float] = {}
    done: dict[int, float] = {}
    for line in workflow_log.read_text(errors="replace").splitlines():
        at = log_time(line)
        if at is None or " round=" not in line:
            continue
        number = int(line.split(" round=", 1)[1].split()[0])
        if " train sampled=" in line:
            opened[number] = at
        elif " accepted site=" in line:
            last_accept[number] = at
        elif f" round={number} done " in line:
            done[number] = at
    rounds = sorted(set(opened) & set(done) & set(last_accept))
    return [done[n] - opened[n] for n in rounds], [done[n] - last_accept[n] for n in rounds]


def server_part(args: argparse.Namespace) -> None:
    params = cnn_params()
    n_params = sum(int(v.size) for v in params.values())
    print(
        f"server time per round: {N_SITES} sites, {n_params:,} float32 parameters, {args.rounds} rounds, "
        f"training = sleep {args.train_seconds:g} s"
    )
    print(f"{'strategy':<18} {'mode':<6} {'round wall s':>13} {'server close s':>15}")
    with tempfile.TemporaryDirectory(prefix="fedsec-strategies-bench-") as tmp, Federation(Path(tmp)) as fed:
        fed.start(N_SITES)
        fed.wait_registered([f"site-{i}" for i in range(1, N_SITES + 1)], 0)
        for choice in choices(args.only):
            for he in (False, True):
                mode = "HE" if he else "plain"
                recipe = choice.recipe(
                    f"{choice.label.split()[0]}-bench", params, SCRIPT, num_rounds=args.rounds,
                    min_clients=N_SITES, script_args=["--train-seconds", str(args.train_seconds), "--diff", "0.001"],
                    he=he, **choice.settings,
                )  # fmt: skip
                try:
                    with Session(fed.kit(ADMIN)) as session:
                        job_id = session.submit_job(recipe.export(Path(tmp) / f"job-{choice.label}-{mode}"))
                        info = session.wait_for_job(job_id, timeout=1800, poll=0.5)
                except FedsecError as exc:
                    print(f"{choice.label:<18} {mode:<6} refused: {exc}")
                    continue
                if info.status != "finished:completed":
                    print(f"{choice.label:<18} {mode:<6} {info.status}: {info.reason.splitlines()[0][:100]}")
                    continue
                wall, close = round_times(fed.kit(SERVER) / "store/jobs" / job_id / "workflow.log")
                print(f"{choice.label:<18} {mode:<6} {statistics.median(wall):13.2f} {statistics.median(close):15.2f}")


def dirichlet_part(args: argparse.Namespace) -> None:
    print(f"final accuracy, digits job, 3 sites, Dirichlet(alpha={args.alpha:g}) split, {args.digits_rounds} rounds")
    print(f"{'strategy':<18} {'plain':>8} {'HE':>8}")
    with tempfile.TemporaryDirectory(prefix="fedsec-dirichlet-bench-") as tmp, Federation(Path(tmp)) as fed:
        fed.start(3)
        fed.wait_registered(["site-1", "site-2", "site-3"], 0)
        for choice in choices(args.only):
            cells = []
            for he in (False, True):
                folder = Path(tmp) / f"digits-{choice.label}-{he}".replace(" ", "_")
                argv = [sys.executable, str(DIGITS_JOB), "--export_only", str(folder), "--alpha", str(args.alpha)]
                argv += ["--num_rounds", str(args.digits_rounds), *choice.flags, *(["--he"] if he else [])]
                subprocess.run(argv, check=True, capture_output=True)
                try:
                    with Session(fed.kit(ADMIN)) as session:
                        job_id = session.submit_job(folder)
                        info = session.wait_for_job(job_id, timeout=1800, poll=0.5)
                except FedsecError as exc:
                    cells.append(f"refused ({exc})")
                    continue
                final = (info.progress.get("final") or {}).get("metrics", {})
                if info.status != "finished:completed" or "accuracy" not in final:
                    cells.append(info.status)
                else:
                    cells.append(f"{final['accuracy']:.4f}")
            print(f"{choice.label:<18} {cells[0]:>8} {cells[1]:>8}")


def _mean_of(mean: dict[str, Any], name: str, _x: Any) -> Any:
    return mean[name]


def agreement_part(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    sys.path.insert(0, str(DIGITS_JOB.parent))
    import client as digits_client  # type: ignore[import-not-found]  # jobs/digits_fedavg/client.py: train()
    from data import load_split  # type: ignore[import-not-found]
    from model import DigitsNet  # type: ignore[import-not-found]

    from fedsec.fedopt import FedOptStep
    from fedsec.jobs.meta import FEDOPT_DEFAULTS, ServerOptimizer
    from fedsec.wire import arrays

    torch.set_num_threads(1)
    local = argparse.Namespace(epochs=args.epochs, lr=0.05, batch_size=16)
    clip = 2.0  # the digits job's he_clip

    def state(net: Any) -> dict[str, Any]:
        return {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}

    def quantised(x: Any, bits: int, rng: Any) -> Any:  # fedsec.he.codec's quantiser, weight 1 (equal shares)
        x = np.clip(x, -clip, clip) * 2.0**bits
        lower = np.floor(x)
        return lower + (rng.random(x.shape) < x - lower)

    def run(strategy: str, bits: int | None, seed: int) -> list[tuple[Any, int, dict[str, Any]]]:
        torch.manual_seed(0)
        model = state(DigitsNet())
        sites = []
        for i in range(3):
            torch.manual_seed(0)  # as each site's client.py: seed, then its own DigitsNet
            sites.append((load_split(i, 3, seed=0), DigitsNet(), [torch.get_rng_state()]))
        optimizer = None
        if strategy.startswith("fedopt"):
            kind = ServerOptimizer(strategy.split()[1])
            optimizer = FedOptStep(kind, FEDOPT_DEFAULTS[kind])
        mu = 0.01 if strategy == "fedprox" else 0.0
        rng, history = np.random.default_rng(seed), []
        for _ in range(args.digits_rounds):
            diffs = []
            for (train_x, train_y, _, _), net, rng_state in sites:
                net.load_state_dict({k: torch.as_tensor(v) for k, v in model.items()})
                torch.set_rng_state(rng_state[0])
                with contextlib.redirect_stdout(io.StringIO()):  # its per-epoch lines
                    digits_client.train(net, train_x, train_y, local, model, mu)
                rng_state[0] = torch.get_rng_state()
                diffs.append({k: v - model[k] for k, v in state(net).items()})  # float32, as the script sends
            if optimizer is None:  # plain: global + mean difference; HE: the mean of the sites' float32 weights
                if bits is None:
                    mean = {k: sum(d[k].astype(np.float64) for d in diffs) / 3 for k in model}
                    model = {k: (model[k] + mean[k]).astype(np.float32) for k in model}
                else:
                    model = {
                        k: (
                            sum(quantised((model[k] + d[k]).astype(np.float64), bits, rng) for d in diffs)
                            / 3
                            / 2.0**bits
                        ).astype(np.float32)
                        for k in model
                    }
            else:  # the mean difference, plain or quantised, stepped by the one FedOpt implementation
                if bits is None:
                    mean = {k: sum(d[k].astype(np.float64) for d in diffs) / 3 for k in model}
                else:
                    mean = {
                        k: sum(quantised(d[k].astype(np.float64), bits, rng) for d in diffs) / 3 / 2.0**bits
                        for k in model
                    }
                model = optimizer.step(arrays.specs_of(model, "model"), model, functools.partial(_mean_of, mean))
            net = sites[0][1]
            net.load_state_dict({k: torch.as_tensor(v) for k, v in model.items()})
            _, _, test_x, test_y = sites[0][0]
            net.eval()
            with torch.no_grad():
                predicted = net(test_x).argmax(dim=1)
            history.append((predicted, int((predicted == test_y).sum()), model))
        return history

    print(f"HE against plain, digits job's arithmetic, 3 sites, {args.digits_rounds} rounds of {args.epochs} epochs")
    print("per round: HE's correct test images less plain's / images classified differently / largest weight gap")
    for strategy in args.agreement_strategies:
        plain = run(strategy, None, 0)
        for bits in args.bits:
            for repeat in range(args.repeats):
                cells = []
                for (p_pred, p_right, p_model), (h_pred, h_right, h_model) in zip(
                    plain, run(strategy, bits, 1000 + repeat), strict=True
                ):
                    gap = max(float(np.abs(h_model[k].astype(np.float64) - p_model[k]).max()) for k in p_model)
                    cells.append(f"{h_right - p_right:+d}/{int((p_pred != h_pred).sum())}/{gap:.1e}")
                print(f"{strategy:<15} 2**-{bits:<3} seed {repeat}: " + "  ".join(cells), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--part", choices=["server", "dirichlet", "both", "agreement"], default="both")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the server-time jobs")
    parser.add_argument("--train-seconds", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--digits-rounds", type=int, default=5)
    parser.add_argument("--only", nargs="*", default=None, help="run only these strategies (labels' first word)")
    parser.add_argument("--epochs", type=int, default=1, help="agreement: local epochs a round")
    parser.add_argument("--bits", type=int, nargs="*", default=[17, 38], help="agreement: fixed points 2**-bits")
    parser.add_argument("--repeats", type=int, default=2, help="agreement: rounding seeds")
    parser.add_argument(
        "--agreement-strategies",
        nargs="*",
        default=["fedavg", "fedprox", "fedopt adam", "fedopt yogi", "fedopt adagrad", "fedopt avgm"],
    )
    args = parser.parse_args()
    if args.part == "agreement":
        agreement_part(args)
    if args.part in ("server", "both"):
        server_part(args)
    if args.part in ("dirichlet", "both"):
        dirichlet_part(args)


if __name__ == "__main__":
    main()
