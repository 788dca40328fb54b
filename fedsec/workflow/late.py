"""`python -m fedsec.workflow.late --job-dir DIR --job-id ID --tracking-dir DIR --end END`: a job's late events.

A site that comes back after its job ended still has events in its spool. The
server parent takes them for limits.TRACKING_LATE_EVENTS_SECONDS after the
job's end: it checks each batch, stores it in <job>/late_events/ (one file per
batch, the EventBatch as the site sent it, with the site from its certificate),
acknowledges it, and starts this process, which never runs while the job's
workflow does. Here each batch goes through the job's tracker (the dedupe of
workspace/tracking.db, the job's backend), its file is deleted once written,
and the runs end again as the job ended (END: FINISHED, FAILED or KILLED).

It also writes what the job's process kept unwritten when it ended
(workspace/tracking_pending.json: round metrics, job params, the final model;
fedsec.workflow.tracking), which is why the parent starts it for a job that
left that file too.

Exit 0 when the folder is empty and nothing is pending; 1 when something is left (the backend is
down or did not open in time): the server parent starts it again later. The
parent never imports MLflow; this process does.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from google.protobuf.message import DecodeError

from fedsec import _fs, _proc, limits, logs
from fedsec.errors import FedsecError, JobError
from fedsec.jobs import load_job_folder
from fedsec.tracking.events import Event, check_batch
from fedsec.tracking.receivers import RunEnd
from fedsec.wire import fedsec_pb2
from fedsec.workflow.tracking import Tracker, open_tracker

log = logging.getLogger("fedsec.workflow.late")

LATE_DIR = "late_events"  # in the job's folder, written by the server parent
OPEN_SECONDS = 120.0  # how long this process waits for the job's backend to open


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedsec.workflow.late")
    parser.add_argument("--job-dir", required=True, type=Path)
    parser.add_argument("--job-id", required=True)
    parser.add_argument("--tracking-dir", required=True, type=Path)
    parser.add_argument("--end", required=True, choices=[e.value for e in RunEnd])
    args = parser.parse_args(argv)
    _proc.tune_malloc()
    logs.setup()
    folder: Path = args.job_dir / LATE_DIR
    try:
        meta, app = load_job_folder(args.job_dir / "job")
        workspace = args.job_dir / "workspace"
        workspace.mkdir(exist_ok=True, mode=0o700)
        tracker = open_tracker(args.job_id, meta.name, app.tracking, workspace, args.tracking_dir)
    except FedsecError as exc:
        log.error("late events of job %s: cannot open its tracking: %s", args.job_id, exc)
        return 1
    if tracker is None:  # tracking is off for this job: the events are taken and dropped, as during the job
        for path in _batches(folder):
            path.unlink(missing_ok=True)
        return 0
    try:
        written = write_late_events(folder, tracker)
    finally:
        tracker.close(RunEnd(args.end))
    return 0 if written and not tracker.pending else 1


def write_late_events(folder: Path, tracker: Tracker, open_seconds: float = OPEN_SECONDS) -> bool:
    """Write every stored batch of folder through tracker, deleting each once written; whether none is left."""
    deadline = time.monotonic() + open_seconds
    while not tracker.ready:
        if time.monotonic() > deadline:
            log.warning("late events: the tracking backend did not open within %.0f s; trying later", open_seconds)
            return False
        time.sleep(0.2)
    written = 0
    while paths := _batches(folder):  # batches stored meanwhile are taken too
        for path in paths:
            try:
                site, events = _read(path)
            except (FedsecError, DecodeError) as exc:  # checked before it was stored: a damaged file
                log.warning("late events: %s is unusable and is dropped: %s", path.name, exc)
                path.unlink(missing_ok=True)
                continue
            try:
                stored, duplicates = tracker.site_events(site, events)
            except JobError as exc:
                log.warning("late events: not written yet (kept for a later try): %s", exc)
                return False
            path.unlink(missing_ok=True)
            written += 1
            log.info("late events of site=%s written: %d stored, %d duplicates", site, stored, duplicates)
    log.info("late events: %d batches written", written)
    return True


def _batches(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.pb")) if folder.is_dir() else []


def _read(path: Path) -> tuple[str, list[Event]]:
    batch = fedsec_pb2.EventBatch.FromString(
        _fs.read_bounded(path, limits.MAX_MESSAGE_BYTES, f"late events {path.name}", JobError)
    )
    site = _fs.check_name("site", batch.site)
    return site, check_batch(batch, f"late events of {site}")


if __name__ == "__main__":
    _proc.end_process(main())  # MLflow loaded: no teardown of its modules (0.5-1 s of CPU)
