"""A training script for the tracking tests: logs --events probe scalars, then answers like linear_client.

The probe tag carries a random token (not the pid: in a site's sandbox every
script may be pid 2), so the events of one writer can be told from those of a
restarted script on the same site.
"""

from __future__ import annotations

import argparse
import secrets
import time
from pathlib import Path

import numpy as np

from fedsec import client as fl
from fedsec.client import FLModel, ParamsType
from fedsec.client.tracking import SummaryWriter

parser = argparse.ArgumentParser()
parser.add_argument("--events", type=int, default=50)
args = parser.parse_args()

fl.init()
for _ in range(2400):  # the test says when: it first freezes the server's job process
    if Path("go").exists():
        break
    time.sleep(0.05)
writer = SummaryWriter()
tag = f"probe_{secrets.token_hex(4)}"
for step in range(args.events):
    writer.add_scalar(tag, float(step) / 10, step)
writer.flush()  # the site has them (spooled) from here on
Path("logged").write_text(tag)

while fl.is_running():
    model = fl.receive()
    if model is None:
        break
    assert model.params is not None
    writer.add_scalar("round_seen", 1.0, model.current_round)
    if model.task == "evaluate":
        fl.send(FLModel(metrics={"done": 1.0}, meta={"num_examples": 1}))
        continue
    zeros = {k: np.zeros_like(v) for k, v in model.params.items()}
    fl.send(FLModel(params=zeros, params_type=ParamsType.DIFF, metrics={"x": 1.0}, meta={"num_examples": 1}))
writer.close()
