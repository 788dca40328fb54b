"""`python -m fedsec.workflow --job-dir DIR --socket PATH`: one server job process.

Started by the server parent. Writes workspace/result.json when it ends
(completed or failed with a reason, and the result it keeps) and exits 0; any
other exit is a crash the parent reports. A job that fails, or that the server
stops (SIGTERM: an abort, or the server stopping), keeps the global model of its
last completed round in workspace/result (fedsec.jobs.result).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from fedsec import _fs, _proc, logs
from fedsec.errors import FedsecError
from fedsec.jobs import load_job_folder
from fedsec.jobs.meta import AppConfig, JobMeta
from fedsec.tracking.receivers import RunEnd
from fedsec.transport.local import serve_unix
from fedsec.wire import fedsec_pb2_grpc
from fedsec.workflow.fedavg import PARTICIPATION_FILE, FedAvg, load_participation
from fedsec.workflow.service import WorkflowService
from fedsec.workflow.tracking import Tracker, job_params, open_tracker

log = logging.getLogger("fedsec.workflow")

DRAIN_SECONDS = 30.0  # how long the job waits, after its rounds, for the sites' last events


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedsec.workflow")
    parser.add_argument("--job-dir", required=True, type=Path)
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--socket", required=True, type=Path)
    parser.add_argument("--he-context", type=Path, help="the server's HE context (no secret key)")
    parser.add_argument("--tracking-dir", type=Path, help="the server's tracking folder (the embedded MLflow store)")
    parser.add_argument("--submitter", default="", help="the admin who submitted the job (the runs' user)")
    parser.add_argument("--server-kit", type=Path, help="the server's kit, never named in a reason an admin sees")
    args = parser.parse_args(argv)
    _proc.tune_malloc()
    logs.setup()
    workspace = args.job_dir / "workspace"
    workspace.mkdir(exist_ok=True, mode=0o700)

    def _on_term(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, _on_term)
    tracker: Tracker | None = None
    fedavg: FedAvg | None = None
    end = RunEnd.KILLED  # what the runs become if the server stops this process
    try:
        try:
            meta, app = load_job_folder(args.job_dir / "job")
            he_context = None
            if app.he.enabled and args.he_context is not None:
                from fedsec.he.context import load_server_context  # tenseal: only in HE jobs

                he_context = load_server_context(args.he_context.read_bytes(), "the server's HE context")
            tracker = _open_tracking(args, meta, app, workspace)
            fedavg = FedAvg(args.job_id, args.job_dir / "job", workspace, meta, app, he_context, tracker)
            participation = args.job_dir / PARTICIPATION_FILE
            fedavg.apply_participation(load_participation(participation))  # on resume: the sites that left stay out
            service = WorkflowService(fedavg, app.workflow.num_rounds, participation)
            server = serve_unix(args.socket, lambda s: fedsec_pb2_grpc.add_WorkflowServicer_to_server(service, s), 32)
        except FedsecError as exc:
            end = RunEnd.FAILED
            return _end(workspace, "failed", _public(f"cannot start the workflow: {exc}", args))
        try:
            fedavg.run()
            status, reason, end = "completed", "", RunEnd.FINISHED
        except FedsecError as exc:
            status, reason, end = "failed", _public(str(exc), args), RunEnd.FAILED
            fedavg.finish()
        kept = fedavg.keep_last_result() if status == "failed" else None
        _await_sites(args.job_dir, fedavg.participants)
        server.stop(grace=2).wait()
        return _end(workspace, status, reason, kept)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # keep the result, end the runs; the server KILLs after its grace
        if fedavg is not None and end is not RunEnd.FINISHED:
            fedavg.keep_last_result()
        if tracker is not None:
            _close_tracking(tracker, fedavg, end)


def _open_tracking(args: argparse.Namespace, meta: JobMeta, app: AppConfig, workspace: Path) -> Tracker | None:
    """The job's tracker (None: tracking is off), given the job's settings to log."""
    tracker = open_tracker(args.job_id, meta.name, app.tracking, workspace, args.tracking_dir, args.submitter)
    if tracker is not None:
        tracker.job_params(job_params(args.job_id, meta, app, args.submitter))
    return tracker


def _close_tracking(tracker: Tracker, fedavg: FedAvg | None, end: RunEnd) -> None:
    """End the runs as end; a job open to every site first logs num_sites: the sites that took part."""
    if fedavg is not None and not fedavg.meta.sites:
        tracker.job_params({"num_sites": str(len(fedavg.sites_taking_part()))})
    tracker.close(end)


def _public(text: str, args: argparse.Namespace) -> str:
    """text without the server kit's absolute path (reasons go to admins)."""
    if args.server_kit is None and args.tracking_dir is None:
        return text
    kit = Path(args.server_kit or Path(args.tracking_dir).parent)
    for root in sorted({str(kit.resolve()), str(kit.absolute())}, key=len, reverse=True):
        text = text.replace(root, "<server kit>")
    return text


def _await_sites(job_dir: Path, sites: set[str], timeout: float = DRAIN_SECONDS) -> None:
    """Wait until every site that took part reported its end (it sends its last events before that)."""
    deadline = time.monotonic() + timeout
    missing = set(sites)
    while missing and time.monotonic() < deadline:
        missing = {s for s in missing if not (job_dir / "sites" / f"{s}.json").exists()}
        time.sleep(0.1)
    if missing:
        log.warning("sites %s did not report the end of the job within %.0f s", ",".join(sorted(missing)), timeout)


def _end(workspace: Path, status: str, reason: str, kept: dict[str, Any] | None = None) -> int:
    """Write result.json: the outcome, and the result kept when the job did not complete ("result": its entry)."""
    log.info("workflow ended status=%s reason=%s", status, reason)
    outcome: dict[str, Any] = {"status": status, "reason": reason}
    if kept is not None:
        outcome["result"] = kept
    try:
        _fs.write_atomic(workspace / "result.json", json.dumps(outcome).encode())
    except OSError as exc:  # the parent reports the exit, and sees a full disk itself
        log.error("cannot write workspace/result.json: %s", exc.strerror or exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
