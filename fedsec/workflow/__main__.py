"""`python -m fedsec.workflow --job-dir DIR --socket PATH`: one server job process.

Started by the server parent, which hands it the job's state and takes its
reports over the process's own socket (fedsec.workflow.link). When it ends it
reports its outcome (completed or failed with a reason, and the result it keeps)
and exits 0 once the parent recorded it; any other exit is a crash the parent
reports. A job that fails, or that the server stops (SIGTERM: an abort, or the
server stopping), keeps the global model of its last completed round in
workspace/result (fedsec.jobs.result).
"""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path
from types import FrameType
from typing import Any

from fedsec import _proc, logs
from fedsec.errors import FedsecError
from fedsec.jobs import load_job_folder
from fedsec.jobs.meta import AppConfig, JobMeta
from fedsec.tracking.receivers import RunEnd
from fedsec.transport.local import serve_unix
from fedsec.wire import fedsec_pb2_grpc
from fedsec.workflow.fedavg import FedAvg
from fedsec.workflow.link import ACK_SECONDS, JobStateLink
from fedsec.workflow.service import LinkService, WorkflowService
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
    link = JobStateLink()
    server = None
    end = RunEnd.KILLED  # what the runs become if the server stops this process
    try:
        try:
            meta, app = load_job_folder(args.job_dir / "job")
            he_context = None
            if app.he.enabled and args.he_context is not None:
                from fedsec.he.context import load_server_context  # tenseal: only in HE jobs

                he_context = load_server_context(args.he_context.read_bytes(), "the server's HE context")
            tracker = _open_tracking(args, meta, app, workspace)
            fedavg = FedAvg(args.job_id, args.job_dir / "job", workspace, meta, app, he_context, tracker, link=link)
            service = WorkflowService(fedavg, app.workflow.num_rounds)
            server = serve_unix(args.socket, lambda s: fedsec_pb2_grpc.add_WorkflowServicer_to_server(service, s), 32)
        except FedsecError as exc:
            end = RunEnd.FAILED
            reason = _public(f"cannot start the workflow: {exc}", args)
            return _end(link, False, reason, server or _serve_link(args.socket, link))
        try:
            fedavg.run()
            completed, reason, end = True, "", RunEnd.FINISHED
        except FedsecError as exc:
            completed, reason, end = False, _public(str(exc), args), RunEnd.FAILED
            fedavg.finish()
            fedavg.keep_last_result()
        _await_sites(link, fedavg.participants)
        return _end(link, completed, reason, server)
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


def _serve_link(sock: Path, link: JobStateLink) -> Any:
    """Serve only the link on sock (the job could not be set up), so the outcome reaches the parent; None if not."""
    try:
        return serve_unix(sock, lambda s: fedsec_pb2_grpc.add_WorkflowServicer_to_server(LinkService(link), s), 4)
    except (RuntimeError, OSError) as exc:  # grpc's failure to bind: the parent reports the exit and the log
        log.error("cannot serve on the workflow socket: %s", exc)
        return None


def _await_sites(link: JobStateLink, sites: set[str], timeout: float = DRAIN_SECONDS) -> None:
    """Wait until every site that took part reported its end (it sends its last events before that)."""
    missing = link.wait_reported(set(sites), timeout)
    if missing:
        log.warning("sites %s did not report the end of the job within %.0f s", ",".join(sorted(missing)), timeout)


def _end(link: JobStateLink, completed: bool, reason: str, server: Any) -> int:
    """Report the outcome (with the result kept) and stop serving once the parent recorded it; the exit status.

    A process that could not even serve (server None) has no parent to tell: it exits 1 and the parent
    reports its last output.
    """
    log.info("workflow ended status=%s reason=%s", "completed" if completed else "failed", reason)
    if server is None:
        return 1
    recorded = link.end(completed, reason)
    server.stop(grace=2).wait()
    if not recorded:
        log.error("the server did not record the job's outcome within %.0f s", ACK_SECONDS)
        return 1
    return 0


if __name__ == "__main__":
    _proc.end_process(main())  # MLflow loaded: no teardown of its modules (0.5-1 s of CPU)
