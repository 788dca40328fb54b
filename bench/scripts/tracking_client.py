"""Benchmark script for bench/tracking_bench.py: logs probe events, then answers one round.

--burst N: log N scalars as fast as possible (tag "burst"), then flush.
--paced N: then log N scalars (tag "paced", value = wall time) 0.2 s apart, for the delay figure.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from fedsec import client as fl
from fedsec.client import FLModel, ParamsType
from fedsec.client.tracking import SummaryWriter

parser = argparse.ArgumentParser()
parser.add_argument("--burst", type=int, default=20000)
parser.add_argument("--paced", type=int, default=30)
args = parser.parse_args()

fl.init()
writer = SummaryWriter()
start = time.perf_counter()
for step in range(args.burst):
    writer.add_scalar("burst", float(step), step)
queued = time.perf_counter() - start
writer.flush(timeout=300)
print(f"burst: {args.burst} add_scalar calls took {queued:.3f} s; flushed after {time.perf_counter() - start:.3f} s")
for step in range(args.paced):
    writer.add_scalar("paced", time.time(), step)
    time.sleep(0.2)
writer.flush()

while fl.is_running():
    model = fl.receive()
    if model is None:
        break
    assert model.params is not None
    if model.task == "evaluate":
        fl.send(FLModel(metrics={}, meta={"num_examples": 1}))
        continue
    zeros = {k: np.zeros_like(v) for k, v in model.params.items()}
    fl.send(FLModel(params=zeros, params_type=ParamsType.DIFF, meta={"num_examples": 1}))
writer.close()
