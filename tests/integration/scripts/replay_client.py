"""A training script for the replay test: logs one point per round (step = the round), then waits and answers.

It prints "logged round N" once the point is in the site's spool and "sent round N" once its update is
accepted; on --slow-site it waits --sleep seconds before it sends, so a test can kill the server while a
round is open, the other sites have answered it, and their points are with the server.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from fedsec import client as fl
from fedsec.client import FLModel, ParamsType
from fedsec.client.tracking import SummaryWriter

parser = argparse.ArgumentParser()
parser.add_argument("--sleep", type=float, default=0.0)
parser.add_argument("--slow-site", default="")
args = parser.parse_args()

fl.init()
writer = SummaryWriter()
while fl.is_running():
    model = fl.receive()
    if model is None:
        break
    assert model.params is not None
    writer.add_scalar("round_point", float(model.current_round), model.current_round)
    writer.flush()
    print(f"logged round {model.current_round}", flush=True)
    if model.task == "evaluate":
        fl.send(FLModel(metrics={"done": 1.0}, meta={"num_examples": 1}))
        continue
    if fl.site_name() == args.slow_site:
        time.sleep(args.sleep)
    zeros = {k: np.zeros_like(v) for k, v in model.params.items()}
    fl.send(FLModel(params=zeros, params_type=ParamsType.DIFF, metrics={"x": 1.0}, meta={"num_examples": 1}))
    print(f"sent round {model.current_round}", flush=True)
writer.close()
