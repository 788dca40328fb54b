"""Build the digits_fedavg job and run it on a federation through the admin API.

    python jobs/digits_fedavg/job.py --startup_kit workspaces/.../admin@org.com
    python jobs/digits_fedavg/job.py --export_only /tmp/digits_job   # just write the job folder

Exits 0 when the job finished completed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # model.py, wherever this script is run from

from data import load_split  # noqa: E402
from model import DigitsNet  # noqa: E402

from fedsec.errors import FedsecError  # noqa: E402
from fedsec.jobs import FedAvgRecipe, FedOptRecipe, FedProxRecipe, ScaffoldRecipe  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (argv, default sys.argv[1:])."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--startup_kit", type=Path, help="an admin's startup kit folder")
    where.add_argument("--export_only", type=Path, metavar="DIR", help="write the job folder to DIR and exit")
    parser.add_argument("--n_clients", type=int, default=3, help="sites the data is split across")
    parser.add_argument("--num_rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3, help="local epochs per round")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=None, help="Dirichlet concentration for non-iid data")
    parser.add_argument("--min_clients", type=int, default=None, help="default: n_clients")
    parser.add_argument("--sample_fraction", type=float, default=1.0, help="the share of the sites each round samples")
    parser.add_argument(
        "--sample_seed", type=int, default=None, help="sample as any job of this seed (default: the job id)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--he", action="store_true", help="encrypt the updates (the project must be provisioned with HE)"
    )
    parser.add_argument(
        "--tracking_backend",
        default="local",
        help="a tracking backend the server's operator named (default: local, its embedded MLflow store)",
    )
    parser.add_argument("--tensorboard", action="store_true", help="also write TensorBoard event files on the server")
    parser.add_argument("--strategy", choices=["fedavg", "fedprox", "fedopt", "scaffold"], default="fedavg")
    parser.add_argument("--mu", type=float, default=0.01, help="fedprox: the weight of the proximal term")
    parser.add_argument("--optimizer", choices=["adam", "yogi", "adagrad", "avgm"], default="adam", help="fedopt")
    parser.add_argument("--server_lr", type=float, default=None, help="fedopt, scaffold: the server's learning rate")
    return parser.parse_args(argv)


def make_recipe(args: argparse.Namespace) -> FedAvgRecipe:
    script_args = ["--n_clients", str(args.n_clients), "--epochs", str(args.epochs), "--lr", str(args.lr)]
    script_args += ["--batch_size", str(args.batch_size), "--seed", str(args.seed)]
    if args.alpha is not None:
        script_args += ["--alpha", str(args.alpha)]
    torch.manual_seed(args.seed)  # the same initial model for the same seed
    n = args.n_clients
    strategy: dict[str, Any] = {}
    recipe: type[FedAvgRecipe] = FedAvgRecipe
    if args.strategy == "fedprox":
        recipe, strategy = FedProxRecipe, {"mu": args.mu}
    elif args.strategy == "fedopt":
        recipe, strategy = FedOptRecipe, {"optimizer": args.optimizer, "server_lr": args.server_lr}
    elif args.strategy == "scaffold":  # N, the number of sites, scales the control-variate update: list them
        recipe, strategy = ScaffoldRecipe, {"server_lr": args.server_lr, "sites": [f"site-{i + 1}" for i in range(n)]}
    return recipe(
        "digits_fedavg",
        DigitsNet(),
        HERE / "client.py",
        num_rounds=args.num_rounds,
        min_clients=args.min_clients or args.n_clients,
        sample_fraction=args.sample_fraction,
        sample_seed=args.sample_seed,
        script_args=script_args,
        custom_files=[HERE / "model.py", HERE / "data.py"],
        he=args.he,
        # HE quantises weight * value in fixed point: a weight near 1 and a tight clip keep the precision.
        # The model's weights stay well inside +-2; the weight is n / (the largest site's share).
        he_clip=2.0,
        he_max_clients=n,
        he_max_examples=max(len(load_split(i, args.n_clients, alpha=args.alpha, seed=args.seed)[1]) for i in range(n)),
        tracking_backend=args.tracking_backend,
        tensorboard=args.tensorboard,
        **strategy,
    )


def main() -> int:
    args = parse_args()
    recipe = make_recipe(args)
    if args.export_only is not None:
        print(f"job folder written to {recipe.export(args.export_only)}")
        return 0

    from fedsec.api import RoundPrinter, Session

    with tempfile.TemporaryDirectory() as tmp, Session(args.startup_kit) as session:
        job_id = session.submit_job(recipe.export(Path(tmp) / "digits_fedavg"))
        print(f"submitted job {job_id}", flush=True)
        info = session.monitor_job(job_id, callback=RoundPrinter())
        print(f"job {job_id}: {info.status} {info.reason}".rstrip())
        result = session.download_job_result(job_id)
        print(f"result downloaded to {result}")
    return 0 if info.status == "finished:completed" else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except FedsecError as exc:
        sys.exit(f"job.py: error: {exc}")
