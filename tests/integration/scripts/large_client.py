"""A training script for the large-model test: numpy only, no training.

Each round it reports a CRC-32 of the global model it received (so the test can
check every byte came through in order) and sends back a weight difference of
0.5 for every element of every tensor.
"""

from __future__ import annotations

import zlib

import numpy as np

from fedsec import client as fl
from fedsec.client import FLModel, ParamsType

fl.init()
while fl.is_running():
    model = fl.receive()
    if model is None:
        break
    params = model.params or {}
    crc = 0
    for tensor in params.values():  # in the container's order
        crc = zlib.crc32(np.ascontiguousarray(tensor).tobytes(), crc)
    metrics = {"crc": float(crc), "bytes": float(sum(t.nbytes for t in params.values()))}
    print(f"round {model.current_round} task {model.task} crc {crc:08x} bytes {metrics['bytes']:.0f}", flush=True)
    if model.task == "evaluate":
        fl.send(FLModel(metrics=metrics, meta={"num_examples": 1}))
        continue
    diff = {name: np.full_like(tensor, 0.5) for name, tensor in params.items()}
    accepted = fl.send(FLModel(params=diff, params_type=ParamsType.DIFF, metrics=metrics, meta={"num_examples": 1}))
    print(f"round {model.current_round} sent accepted={accepted}", flush=True)
