"""`python -m fedsec.workflow --job-dir DIR --socket PATH`: one server job process.

Started by the server parent. Writes workspace/result.json when it ends
(completed or failed with a reason) and exits 0; any other exit is a crash
the parent reports.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path
from types import FrameType

from fedsec import _fs, _proc, logs
from fedsec.errors import FedsecError
from fedsec.jobs import load_job_folder
from fedsec.transport.local import serve_unix
from fedsec.wire import fedsec_pb2_grpc
from fedsec.workflow.fedavg import FedAvg
from fedsec.workflow.service import WorkflowService

log = logging.getLogger("fedsec.workflow")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedsec.workflow")
    parser.add_argument("--job-dir", required=True, type=Path)
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--socket", required=True, type=Path)
    parser.add_argument("--he-context", type=Path, help="the server's HE context (no secret key)")
    args = parser.parse_args(argv)
    _proc.tune_malloc()
    logs.setup()
    workspace = args.job_dir / "workspace"
    workspace.mkdir(exist_ok=True, mode=0o700)

    def _on_term(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, _on_term)
    try:
        meta, app = load_job_folder(args.job_dir / "job")
        he_context = None
        if app.he.enabled and args.he_context is not None:
            from fedsec.he.context import load_server_context  # tenseal: only in HE jobs

            he_context = load_server_context(args.he_context.read_bytes(), f"server HE context {args.he_context}")
        fedavg = FedAvg(args.job_id, args.job_dir / "job", workspace, meta, app, he_context)
        service = WorkflowService(fedavg, app.workflow.num_rounds)
        server = serve_unix(args.socket, lambda s: fedsec_pb2_grpc.add_WorkflowServicer_to_server(service, s), 32)
    except FedsecError as exc:
        return _end(workspace, "failed", f"cannot start the workflow: {exc}")
    try:
        fedavg.run()
        status, reason = "completed", ""
    except FedsecError as exc:
        status, reason = "failed", str(exc)
        fedavg.finish()
    server.stop(grace=2).wait()
    return _end(workspace, status, reason)


def _end(workspace: Path, status: str, reason: str) -> int:
    log.info("workflow ended status=%s reason=%s", status, reason)
    _fs.write_atomic(workspace / "result.json", json.dumps({"status": status, "reason": reason}).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
