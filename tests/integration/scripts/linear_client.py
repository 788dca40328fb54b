"""A training script for runtime tests: least-squares regression in numpy (no torch).

Every site holds noisy samples of y = X @ w_true; each round it evaluates the
global weights (mse), takes a few gradient steps and sends its weight
difference. In a FedProx job the steps also follow the proximal term's gradient
mu * (w - w_global), with mu from the task, and the site reports mu as a metric.
Flags make it misbehave on purpose for the fault tests.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from fedsec import client as fl
from fedsec.client import FLModel, ParamsType

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--lr", type=float, default=0.1)
parser.add_argument("--sleep", type=float, default=0.0, help="seconds to wait before sending each update")
parser.add_argument("--fail-site", default="", help="this site raises in --fail-round")
parser.add_argument("--fail-round", type=int, default=-1)
parser.add_argument("--bad-site", default="", help="this site sends a bad update every round")
parser.add_argument("--bad", choices=["nan", "shape", "extra", "oversize", "meta"], default="nan")
args = parser.parse_args()

fl.init()
site = fl.site_name()
rng = np.random.default_rng(int(site.rsplit("-", 1)[1]))
w_true = np.arange(1.0, 9.0, dtype=np.float32).reshape(8, 1)
x = rng.normal(size=(200, 8)).astype(np.float32)
y = x @ w_true + 0.01 * rng.normal(size=(200, 1)).astype(np.float32)
Path("pid").write_text(str(os.getpid()))

while fl.is_running():
    model = fl.receive()
    if model is None:
        break
    assert model.params is not None
    w = model.params["w"].astype(np.float32)
    mse = float(np.mean((x @ w - y) ** 2))
    print(f"round {model.current_round} task {model.task} mse {mse:.4f}", flush=True)
    if model.task == "evaluate":
        fl.send(FLModel(metrics={"mse": mse}, meta={"num_examples": len(x)}))
        continue
    if site == args.fail_site and model.current_round == args.fail_round:
        raise RuntimeError(f"deliberate failure on {site} in round {model.current_round}")
    strategy = fl.strategy_settings()
    mu = float(strategy["mu"]) if strategy["name"] == "fedprox" else 0.0
    new = w.copy()
    for _ in range(args.steps):
        new -= args.lr * ((2 / len(x)) * x.T @ (x @ new - y) + mu * (new - w))
    diff = {"w": new - w, "b": np.zeros(1, dtype=np.float32)}
    for name, value in model.params.items():  # a model's other tensors (ballast in a test) stay as they are
        diff.setdefault(name, np.zeros_like(value))
    meta: dict[str, object] = {"num_examples": len(x)}
    if site == args.bad_site:
        if args.bad == "nan":
            diff["w"][0, 0] = np.nan
        elif args.bad == "shape":
            diff["w"] = np.zeros((9, 1), dtype=np.float32)
        elif args.bad == "extra":
            diff["extra"] = np.zeros(3, dtype=np.float32)
        elif args.bad == "oversize":
            diff["w"] = np.zeros((8, 100_000), dtype=np.float32)
        elif args.bad == "meta":
            meta = {"num_examples": -5}
    time.sleep(args.sleep)
    metrics = {"mse": mse, "mu": mu} if strategy["name"] == "fedprox" else {"mse": mse}
    accepted = fl.send(FLModel(params=diff, params_type=ParamsType.DIFF, metrics=metrics, meta=meta))
    print(f"round {model.current_round} sent accepted={accepted}", flush=True)
