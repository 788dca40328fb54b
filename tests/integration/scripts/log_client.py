"""A training script for the job-log tests: it writes log lines the test can wait for, then sends the model back.

--wait-site waits, before its first round, until a file named "go" appears in its work folder (the
test creates it): what it prints after that was written after the test started reading the log.
Every site then sends the global model back unchanged each round.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fedsec import client as fl
from fedsec.client import FLModel

parser = argparse.ArgumentParser()
parser.add_argument("--wait-site", default="", help="this site waits for the file 'go' before its first round")
args = parser.parse_args()

fl.init()
site = fl.site_name()
print(f"{site}: started", flush=True)
if site == args.wait_site:
    print(f"{site}: waiting for go", flush=True)
    while not Path("go").exists():
        time.sleep(0.1)
    print(f"{site}: go seen, written after the reader started", flush=True)

while fl.is_running():
    model = fl.receive()
    if model is None:
        break
    print(f"{site}: round {model.current_round} {model.task}", flush=True)
    if model.task == "evaluate":
        fl.send(FLModel(metrics={"seen": 1.0}, meta={"num_examples": 1}))
    else:
        fl.send(FLModel(params=model.params, meta={"num_examples": 1}))
print(f"{site}: done", flush=True)
