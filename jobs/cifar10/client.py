"""The training script of the cifar10 jobs: ModerateCNN on a site's Dirichlet share of CIFAR-10.

fedsec runs it on every sampled site, in its own process, with app/custom on
PYTHONPATH. Each round it receives the global weights, reports their accuracy on
the test set, trains for --aggregation_epochs epochs of SGD (momentum 0.9, the
learning rate decayed by a cosine over all rounds x epochs of the job) and sends
back the weight difference, weighted by its number of SGD steps.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from data import SiteData, augment, load_site, normalize, steps_per_round
from model import ModerateCNN
from torch import nn

from fedsec import client as fl
from fedsec.client import FLModel, ParamsType
from fedsec.client.torch_io import load_into, to_numpy
from fedsec.client.tracking import SummaryWriter

EVAL_BATCH = 500


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--data_dir",
        type=Path,
        default=None,
        help="holds cifar-10-batches-bin/ (default: the site's data set 'cifar10', local/site_settings.yml)",
    )
    parser.add_argument("--n_clients", type=int, required=True, help="how many sites share the data")
    parser.add_argument("--aggregation_epochs", type=int, default=4, help="local epochs per round")
    parser.add_argument("--alpha", type=float, default=1.0, help="Dirichlet concentration: smaller, more skew")
    parser.add_argument("--lr", type=float, default=0.05, help="the initial learning rate")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_train", type=int, default=None, help="cap on this site's training samples")
    parser.add_argument("--max_test", type=int, default=None, help="cap on the test samples")
    return parser.parse_args()


def site_index(name: str) -> int:
    """site-1 -> 0, site-2 -> 1, ...: this site's share of the data."""
    _, _, number = name.rpartition("-")
    if not number.isdigit() or int(number) < 1:
        raise SystemExit(f"site name {name!r} does not end in -<number>; cannot pick its share of the data")
    return int(number) - 1


def cosine_lr(base_lr: float, step: int, total_steps: int) -> float:
    """The learning rate at epoch step of total_steps: base_lr decayed to 0 along half a cosine."""
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


def evaluate(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    net.eval()
    correct = 0
    with torch.no_grad():
        for x, y in zip(torch.split(images, EVAL_BATCH), torch.split(labels, EVAL_BATCH), strict=True):
            correct += int((net(normalize(x)).argmax(dim=1) == y).sum())
    return correct / max(len(labels), 1)


def train(net: nn.Module, data: SiteData, model: FLModel, args: argparse.Namespace) -> tuple[float, float]:
    """One round of local epochs; returns (mean loss of the last epoch, the last learning rate)."""
    optimizer = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    total_steps = max(model.total_rounds, 1) * args.aggregation_epochs
    net.train()
    mean_loss, lr = 0.0, args.lr
    n = len(data.train_labels)
    for epoch in range(args.aggregation_epochs):
        lr = cosine_lr(args.lr, model.current_round * args.aggregation_epochs + epoch, total_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        total = 0.0
        for batch in torch.split(torch.randperm(n), args.batch_size):
            optimizer.zero_grad()
            loss = loss_fn(net(augment(data.train_images[batch])), data.train_labels[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        mean_loss = total / n
        print(f"epoch {epoch + 1}/{args.aggregation_epochs}: lr {lr:.5f} loss {mean_loss:.4f}", flush=True)
    return mean_loss, lr


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # many site processes may share a few cores

    fl.init()
    site = fl.site_name()
    index = site_index(site)
    data_dir = args.data_dir or fl.dataset_path("cifar10")  # the site operator says where its copy is
    data = load_site(
        data_dir,
        index,
        args.n_clients,
        args.alpha,
        args.seed,
        Path("splits"),  # in the job's work folder: the data set is read-only
        max_train=args.max_train,
        max_test=args.max_test,
    )
    torch.manual_seed(args.seed * 1000 + index)  # sites shuffle and augment differently
    n_train, n_test = len(data.train_labels), len(data.test_labels)
    steps = steps_per_round(n_train, args.batch_size, args.aggregation_epochs)
    print(f"{site}: {n_train} training and {n_test} test samples, {steps} steps a round", flush=True)
    net = ModerateCNN()
    writer = SummaryWriter()  # events go through the server to MLflow (and TensorBoard)
    writer.log_params(
        {
            "aggregation_epochs": args.aggregation_epochs,
            "lr": args.lr,
            "batch_size": args.batch_size,
            "alpha": args.alpha,
            "site": site,
            "n_train": n_train,
        }
    )

    while fl.is_running():
        model = fl.receive()
        if model is None:  # the job is done
            break
        load_into(net, model.params or {})
        accuracy = evaluate(net, data.test_images, data.test_labels)
        label = "final model" if model.task == "evaluate" else f"round {model.current_round + 1}/{model.total_rounds}"
        print(f"{site} {label}: global model accuracy {accuracy:.4f}", flush=True)
        # no add_scalar for it: the accuracy sent below shows in this site's MLflow run as `accuracy`, beside the
        # global average of the same name in the job's run
        if model.task == "evaluate":  # the final round: report, do not train
            fl.send(FLModel(metrics={"accuracy": accuracy}, meta={"num_examples": n_test}))
            continue

        global_params = to_numpy(net.state_dict())
        loss, lr = train(net, data, model, args)
        diff = {name: value - global_params[name] for name, value in to_numpy(net.state_dict()).items()}
        update_norm = float(sum(float((d.astype("float64") ** 2).sum()) for d in diff.values()) ** 0.5)
        writer.add_scalars("train", {"loss": loss, "lr": lr, "update_norm": update_norm}, model.current_round)
        fl.send(
            FLModel(
                params=diff,
                params_type=ParamsType.DIFF,
                metrics={"accuracy": accuracy, "train_loss": loss},
                meta={"num_examples": steps},
            )
        )
    writer.close()


if __name__ == "__main__":
    main()
