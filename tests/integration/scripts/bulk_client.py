"""A training script for network-fault tests: any model, sent back as a small step on each tensor.

It moves the whole model both ways every round (so a fault proxy has bytes to
cut), prints what it received and whether its result was accepted.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from fedsec import client as fl
from fedsec.client import FLModel, ParamsType

parser = argparse.ArgumentParser()
parser.add_argument("--slow-site", default="", help="this site waits --sleep seconds before each update")
parser.add_argument("--sleep", type=float, default=0.0)
args = parser.parse_args()

fl.init()
while fl.is_running():
    model = fl.receive()
    if model is None:
        break
    assert model.params is not None
    print(f"round {model.current_round} task {model.task}", flush=True)
    if model.task == "evaluate":
        fl.send(FLModel(metrics={"size": float(sum(t.nbytes for t in model.params.values()))}))
        continue
    if fl.site_name() == args.slow_site:
        time.sleep(args.sleep)  # meanwhile the other sites wait for the next round in a held GetTask
    diff = {name: np.full_like(tensor, 0.5) for name, tensor in model.params.items()}
    accepted = fl.send(FLModel(params=diff, params_type=ParamsType.DIFF, meta={"num_examples": 10}))
    print(f"round {model.current_round} sent accepted={accepted}", flush=True)
