"""A training script that tries what job code must not do, records each outcome, then trains like a good one.

Each probe prints `probe NAME: refused ERROR` or `probe NAME: ALLOWED ...`, so a
test reads from the job's log what the sandbox and the site let through.
"""

# ruff: noqa: E402 - the imports follow a look at what was imported before this script ran

from __future__ import annotations

import sys

PRELOADED = sorted(m for m in ("numpy", "torch") if m in sys.modules)  # before this script imports anything

import argparse
import os
import socket
from collections.abc import Callable
from pathlib import Path

import grpc

from fedsec import client as fl
from fedsec.client import FLModel
from fedsec.jobs.env import ENV_JOB_TOKEN, ENV_SOCKET
from fedsec.transport.local import TOKEN_METADATA, unix_channel
from fedsec.wire import fedsec_pb2, fedsec_pb2_grpc

parser = argparse.ArgumentParser()
parser.add_argument("--kit", type=Path, required=True, help="this site's kit")
parser.add_argument("--port", type=int, required=True, help="the server's port on 127.0.0.1")
parser.add_argument("--other-job", default="", help="another job on this site")
parser.add_argument("--other-socket", default="", help="that job's local socket")
args = parser.parse_args()


def probe(name: str, attempt: Callable[[], object]) -> None:
    try:
        got = attempt()
    except (OSError, grpc.RpcError) as exc:
        code = exc.code().name if isinstance(exc, grpc.Call) else type(exc).__name__
        print(f"probe {name}: refused {code}", flush=True)
        return
    print(f"probe {name}: ALLOWED {str(got)[:60]!r}", flush=True)


def connect(host: str, port: int) -> object:
    with socket.create_connection((host, port), timeout=5):
        return "connected"


def task_call(path: str, job_id: str) -> object:
    stub = fedsec_pb2_grpc.FederationStub(unix_channel(Path(path)))
    request = fedsec_pb2.TaskRequest(job_id=job_id, wait_seconds=0)
    token = os.environ[ENV_JOB_TOKEN]
    return list(stub.GetTask(request, timeout=10, metadata=((TOKEN_METADATA, token),)))


site = args.kit.name
print(f"probe preloaded: {PRELOADED}", flush=True)
probe("site key", (args.kit / "startup" / f"{site}.key").read_bytes)
probe("he context", (args.kit / "startup" / "client_context.tenseal").read_bytes)
probe("kit listing", lambda: os.listdir(args.kit))
probe("spool", lambda: os.listdir(args.kit / "tracking"))
probe("jobs folder", lambda: os.listdir(args.kit / "jobs"))
probe("server port", lambda: connect("127.0.0.1", args.port))
probe("internet", lambda: connect("1.1.1.1", 443))
if args.other_job:
    probe("other job folder", lambda: os.listdir(args.kit / "jobs" / args.other_job))
    probe("other job by name", lambda: task_call(os.environ[ENV_SOCKET], args.other_job))
    probe("other job socket", lambda: task_call(args.other_socket, args.other_job))

fl.init()
while fl.is_running():
    model = fl.receive()
    if model is None:
        break
    fl.send(FLModel(params=model.params if model.task == "train" else None, meta={"num_examples": 10}))
print("probe script done", flush=True)
