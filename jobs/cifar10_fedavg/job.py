"""Build the cifar10_fedavg job (ModerateCNN, Dirichlet-split CIFAR-10) and run it through the admin API.

    jobs/cifar10/prepare_data.sh                              # once, on every site
    python jobs/cifar10_fedavg/job.py --startup_kit workspaces/.../admin@org.com
    python jobs/cifar10_fedavg/job.py --export_only /tmp/cifar10_job   # just write the job folder

Each site reads CIFAR-10 from the data set its operator lists as `cifar10` in the
site's local/site_settings.yml. --data_dir is this machine's copy: job.py reads the
labels there, to size the sites' shares in an HE job. Exits 0 when the job finished
completed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

CIFAR10 = Path(__file__).resolve().parents[1] / "cifar10"
sys.path.insert(0, str(CIFAR10))  # model.py and data.py, wherever this script is run from

from data import site_sizes, steps_per_round  # noqa: E402
from model import ModerateCNN  # noqa: E402

from fedsec.errors import FedsecError  # noqa: E402
from fedsec.jobs import FedAvgRecipe  # noqa: E402

DEFAULT_DATA_DIR = Path("~/.cache/fedsec/cifar10").expanduser()


def parse_args(argv: list[str] | None = None, *, he: bool = False) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--startup_kit", type=Path, help="an admin's startup kit folder")
    where.add_argument("--export_only", type=Path, metavar="DIR", help="write the job folder to DIR and exit")
    parser.add_argument("--n_clients", type=int, default=8, help="sites the data is split across")
    parser.add_argument("--num_rounds", type=int, default=50)
    parser.add_argument("--aggregation_epochs", type=int, default=4, help="local epochs per round")
    parser.add_argument("--alpha", type=float, default=1.0, help="Dirichlet concentration: smaller, more skew")
    parser.add_argument("--lr", type=float, default=0.05, help="initial learning rate (cosine decay)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--min_clients", type=int, default=None, help="default: n_clients")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data_dir", type=Path, default=DEFAULT_DATA_DIR, help="holds cifar-10-batches-bin/")
    parser.add_argument("--max_train", type=int, default=None, help="cap on each site's training samples (tests)")
    parser.add_argument("--max_test", type=int, default=None, help="cap on the test samples (tests)")
    parser.add_argument(
        "--tracking_backend",
        default="local",
        help="a tracking backend the server's operator named (default: local, its embedded MLflow store)",
    )
    parser.add_argument("--tensorboard", action="store_true", help="also write TensorBoard event files on the server")
    args = parser.parse_args(argv)
    args.he = he
    return args


def make_recipe(args: argparse.Namespace, name: str = "cifar10_fedavg") -> FedAvgRecipe:
    """The job; with args.he the updates are encrypted (the project must be provisioned with HE)."""
    data_dir = args.data_dir.expanduser().resolve()
    script_args = ["--n_clients", str(args.n_clients)]  # each site finds its data set by name
    script_args += ["--aggregation_epochs", str(args.aggregation_epochs), "--alpha", str(args.alpha)]
    script_args += ["--lr", str(args.lr), "--batch_size", str(args.batch_size), "--seed", str(args.seed)]
    for option in ("max_train", "max_test"):
        if getattr(args, option) is not None:
            script_args += [f"--{option}", str(getattr(args, option))]
    he_max_examples = 1
    if args.he:  # a site's weight is its SGD steps a round: the largest share sets the scale
        sizes = site_sizes(
            data_dir, args.n_clients, args.alpha, args.seed, data_dir / "splits", max_train=args.max_train
        )
        he_max_examples = max(steps_per_round(n, args.batch_size, args.aggregation_epochs) for n in sizes)
    torch.manual_seed(args.seed)  # the same initial model for the same seed
    return FedAvgRecipe(
        name,
        ModerateCNN(),
        CIFAR10 / "client.py",
        num_rounds=args.num_rounds,
        min_clients=args.min_clients or args.n_clients,
        script_args=script_args,
        custom_files=[CIFAR10 / "model.py", CIFAR10 / "data.py"],
        he=args.he,
        # HE quantises weight * value in fixed point: a weight near 1 and a tight clip keep the precision.
        # ModerateCNN's weights stay well inside +-2.
        he_clip=2.0,
        he_max_clients=args.n_clients,
        he_max_examples=he_max_examples,
        tracking_backend=args.tracking_backend,
        tensorboard=args.tensorboard,
    )


def run(args: argparse.Namespace, name: str) -> int:
    """Export the job, or submit it, print its rounds, download its result; 0 if it finished completed."""
    try:
        recipe = make_recipe(args, name)
    except ValueError as exc:  # the data under --data_dir
        raise SystemExit(f"job.py: error: {exc}") from exc
    if args.export_only is not None:
        print(f"job folder written to {recipe.export(args.export_only)}")
        return 0

    from fedsec.api import RoundPrinter, Session

    with tempfile.TemporaryDirectory() as tmp, Session(args.startup_kit) as session:
        job_id = session.submit_job(recipe.export(Path(tmp) / name))
        print(f"submitted job {job_id}", flush=True)
        info = session.monitor_job(job_id, callback=RoundPrinter())
        print(f"job {job_id}: {info.status} {info.reason}".rstrip())
        result = session.download_job_result(job_id)
        print(f"result downloaded to {result}")
    return 0 if info.status == "finished:completed" else 1


def main() -> int:
    return run(parse_args(), "cifar10_fedavg")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except FedsecError as exc:
        sys.exit(f"job.py: error: {exc}")
