"""A benchmark training script: "trains" by sleeping, answers with a constant weight difference.

On each train task it sleeps --train-seconds and sends --diff (default 0) in
every value of a difference shaped like the received model (non-zero: each
round's global model differs from the last, as in real training), with its
own wall time from receive() returning to just before send() as the metric
train_s.<site> (one key per site, so the server's weighted average of each key
is that site's own figure). At exit it prints its peak
resident memory (VmHWM) to its log.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from fedsec import client as fl
from fedsec.client import FLModel, ParamsType

parser = argparse.ArgumentParser()
parser.add_argument("--train-seconds", type=float, default=2.0)
parser.add_argument("--diff", type=float, default=0.0, help="the value of every entry of the weight difference")
args = parser.parse_args()

fl.init()
site = fl.site_name()
while fl.is_running():
    model = fl.receive()
    if model is None:
        break
    received = time.perf_counter()
    if model.task != "train" or model.params is None:
        fl.send(FLModel(metrics={}, meta={"num_examples": 1}))
        continue
    time.sleep(args.train_seconds)
    diff = {name: np.full(value.shape, args.diff, dtype=value.dtype) for name, value in model.params.items()}
    del model
    own = time.perf_counter() - received
    fl.send(
        FLModel(params=diff, params_type=ParamsType.DIFF, metrics={f"train_s.{site}": own}, meta={"num_examples": 1})
    )
    del diff

status = Path("/proc/self/status").read_text()
hwm = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
print(f"script site={site} vmhwm_kib={hwm}", flush=True)
