"""The training script of digits_fedavg: an ordinary PyTorch loop plus the fedsec Client API.

fedsec runs it on every sampled site, in its own process, with app/custom on
PYTHONPATH. Each round it receives the global weights, reports their accuracy
on the site's copy of the test set, trains on the site's share and sends back
the weight difference.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch
from data import load_split
from model import DigitsNet
from torch import nn

from fedsec import client as fl
from fedsec.client import FLModel, ParamsType
from fedsec.client.scaffold import Scaffold
from fedsec.client.torch_io import load_into, proximal_term, to_numpy
from fedsec.client.tracking import SummaryWriter


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n_clients", type=int, required=True, help="how many sites share the data")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=None, help="Dirichlet concentration (non-iid); none: iid")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def site_index(name: str) -> int:
    """site-1 -> 0, site-2 -> 1, ...: this site's share of the data."""
    _, _, number = name.rpartition("-")
    if not number.isdigit() or int(number) < 1:
        raise SystemExit(f"site name {name!r} does not end in -<number>; cannot pick its share of the data")
    return int(number) - 1


def evaluate(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    with torch.no_grad():
        return float((net(x).argmax(dim=1) == y).float().mean())


MOMENTUM = 0.9


def train(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    args: argparse.Namespace,
    anchor: dict[str, Any],
    mu: float,
    correct: Callable[[], None] | None = None,
) -> float:
    """args.epochs epochs of SGD with momentum; returns the mean loss of the last epoch.

    mu > 0 (a FedProx job): the loss also has the proximal term mu/2 * ||w - anchor||^2.
    correct (a SCAFFOLD job): called between each backward() and step() to correct the gradients.
    """
    optimizer = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=MOMENTUM)
    loss_fn = nn.CrossEntropyLoss()
    net.train()
    anchor = {name: torch.as_tensor(value) for name, value in anchor.items()}  # once, not per batch
    mean_loss = 0.0
    for epoch in range(args.epochs):
        total = 0.0
        for batch in torch.split(torch.randperm(len(y)), args.batch_size):
            optimizer.zero_grad()
            loss = loss_fn(net(x[batch]), y[batch])
            if mu > 0:
                loss = loss + proximal_term(net, anchor, mu)
            loss.backward()
            if correct is not None:
                correct()
            optimizer.step()
            total += loss.item() * len(batch)
        mean_loss = total / len(y)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {mean_loss:.4f}", flush=True)
    return mean_loss


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # many site processes may share a few cores

    fl.init()
    site = fl.site_name()
    train_x, train_y, test_x, test_y = load_split(site_index(site), args.n_clients, alpha=args.alpha, seed=args.seed)
    print(f"{site}: {len(train_y)} training and {len(test_y)} test samples", flush=True)
    net = DigitsNet()
    writer = SummaryWriter()  # events go through the server to MLflow (and TensorBoard)
    writer.log_params({"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "site": site})
    scaffold: Scaffold | None = None  # a SCAFFOLD job's control variates (its c_i lives as long as this process)

    while fl.is_running():
        model = fl.receive()
        if model is None:  # the job is done
            break
        strategy = fl.strategy_settings()
        if strategy["name"] == "scaffold":
            # SGD with momentum m steps about lr / (1 - m) per gradient: option II's K * lr uses that step size
            scaffold = scaffold or Scaffold(net, lr=args.lr / (1 - MOMENTUM))
            scaffold.start(model)  # takes the global control variate c out of model.params
        load_into(net, model.params or {})
        accuracy = evaluate(net, test_x, test_y)
        label = "final model" if model.task == "evaluate" else f"round {model.current_round + 1}/{model.total_rounds}"
        print(f"{site} {label}: global model accuracy {accuracy:.4f}", flush=True)
        # no add_scalar for it: the accuracy sent below shows in this site's MLflow run as `accuracy`, beside the
        # global average of the same name in the job's run
        if model.task == "evaluate":  # the final round: report, do not train
            fl.send(FLModel(metrics={"accuracy": accuracy}, meta={"num_examples": len(test_y)}))
            continue

        global_params = to_numpy(net.state_dict())
        mu = float(strategy["mu"]) if strategy["name"] == "fedprox" else 0.0
        if mu > 0:
            print(f"{site}: proximal term mu={mu:g}", flush=True)
        loss = train(net, train_x, train_y, args, global_params, mu, scaffold.correct if scaffold else None)
        diff = {name: value - global_params[name] for name, value in to_numpy(net.state_dict()).items()}
        update_norm = float(sum(float((d.astype("float64") ** 2).sum()) for d in diff.values()) ** 0.5)
        writer.add_scalars("train", {"loss": loss, "lr": args.lr, "update_norm": update_norm}, model.current_round)
        metrics = {"accuracy": accuracy, "train_loss": loss}
        if scaffold is not None:  # the norm of the global control variate this round's task brought
            metrics["control_norm"] = scaffold.global_norm()
        result = FLModel(params=diff, params_type=ParamsType.DIFF, metrics=metrics, meta={"num_examples": len(train_y)})
        if scaffold is not None:
            scaffold.send(result)  # adds this site's control-variate update; its c_i advances once accepted
        else:
            fl.send(result)
    writer.close()


if __name__ == "__main__":
    main()
