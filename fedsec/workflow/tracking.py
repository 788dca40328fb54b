"""The job's tracking sink: drops events it already has, then writes the rest to the receivers.

Sites may send an event again after a restart; (site, writer, seq) identifies
it, and tracking.db in the job's workspace remembers what was written. An
event is marked written only after every receiver took it, in one
transaction, so a failed write is retried by the site and nothing is lost.

A metric point (site, tag, step) is written once per job (table ``points``):
a round replayed after the server was killed makes the site's script log the
steps it logged before again (with a new writer id when the site restarted
it, with the same one when it kept running), and those points are dropped
here, so the first value stays: a replayed round replaces, never adds. MLflow's
log_batch would append a second value, and dropping works the same for every
receiver. A point is dropped when another writer, or the same writer before
this job process started, wrote it; a writer that logs one step several times
within one process (a script without global_step logs everything at step 0)
keeps every point. The server's own metrics are one value per round (table
``rounds``), however often a round is written again.

Tracking never takes a job down. The receivers are opened by a thread of
their own, retried with growing pauses until they open, so a slow or absent
backend never holds up the job's start. Until then a site's events are refused
(the site keeps them and sends them again), and the server's round metrics and
final model wait here. Every backend failure is a WARNING in the job's log
(at most one a minute, with a count of those left out), never a failed job.
close() ends the runs as the job ended: FINISHED, FAILED or KILLED.
"""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from fedsec.errors import JobError
from fedsec.jobs.meta import TrackingConfig
from fedsec.tracking.backends import ENV_TRACKING_BACKEND, ENV_TRACKING_MLFLOW_URI, Backend
from fedsec.tracking.events import Event, EventKind
from fedsec.tracking.receivers import Receiver, RunEnd, open_receivers

log = logging.getLogger(__name__)

RETRY_SECONDS = (2.0, 5.0, 10.0, 30.0, 60.0)  # pauses between tries to open the receivers; the last repeats
WARN_EVERY = 60.0  # seconds between two warnings about the same backend
_CLOSE_WAIT = 1.0  # seconds close() gives an opening in progress

Opener = Callable[[], Sequence[Receiver]]


def open_tracker(
    job_id: str, name: str, config: TrackingConfig, workspace: Path, tracking_dir: Path | None
) -> Tracker | None:
    """The job's tracker, writing to the backend the server named for it (never one the job names).

    The server parent passes the backend it checked at submission in the environment (a URI may hold
    credentials: never in argv). None (tracking off, a warning) when the server named none. JobError when
    the job's tracking database cannot be opened.
    """
    if tracking_dir is None:
        return None
    backend_name = os.environ.get(ENV_TRACKING_BACKEND, "")
    if backend_name != config.backend:
        log.warning(
            "tracking: backend %r of this job is not one of the server's tracking backends (any more); "
            "tracking is off for this job",
            config.backend,
        )
        return None
    backend = Backend(backend_name, os.environ.get(ENV_TRACKING_MLFLOW_URI, ""))
    # a down MLflow server must fail a batch in seconds (the site sends it again), not hold the job for minutes
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    where: Path = tracking_dir

    def opener() -> list[Receiver]:
        return open_receivers(job_id, name, where, backend, config.tensorboard)

    return Tracker(workspace / "tracking.db", opener, backend.name)


class Tracker:
    """Deduplicates site events and writes them, and the server's metrics, to receivers opened in the background."""

    def __init__(
        self, db_path: Path, opener: Opener, backend: str, *, retry_seconds: Sequence[float] = RETRY_SECONDS
    ) -> None:
        """Open the dedupe database and start opening the receivers. JobError when the database cannot be opened."""
        self._opener = opener
        self._backend = backend
        self._retry = tuple(retry_seconds) or RETRY_SECONDS
        self._lock = threading.Lock()
        self._receivers: list[Receiver] | None = None
        self._metrics: dict[int, Mapping[str, float]] = {}  # rounds not written yet
        self._model: list[Path | None] = []  # the final model, while not written yet
        self._closed = False
        self._end = RunEnd.KILLED
        self._stop = threading.Event()
        self._warned_at = 0.0
        self._unwarned = 0
        self._process = secrets.token_hex(8)  # which job process wrote a point (a replay comes from a later one)
        try:
            self._db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None)
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS seen (site TEXT, writer TEXT, seq INTEGER, PRIMARY KEY (site, writer, seq))"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS points"
                " (site TEXT, tag TEXT, step INTEGER, writer TEXT, process TEXT, PRIMARY KEY (site, tag, step))"
            )
            self._db.execute("CREATE TABLE IF NOT EXISTS rounds (round INTEGER PRIMARY KEY)")
        except sqlite3.Error as exc:
            raise JobError(f"tracking database workspace/{db_path.name}: {exc}") from exc
        self._thread = threading.Thread(target=self._connect, name="tracking-open", daemon=True)
        self._thread.start()

    @property
    def ready(self) -> bool:
        """Whether the receivers are open."""
        with self._lock:
            return self._receivers is not None

    def site_events(self, site: str, events: Sequence[Event]) -> tuple[int, int]:
        """Write the events not seen before; (stored, duplicates). JobError (the site sends them again) otherwise."""
        with self._lock:
            if self._receivers is None:
                raise JobError(f"tracking backend {self._backend} is not open yet; send the events again later")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                fresh = []
                for event in events:
                    cur = self._db.execute(
                        "INSERT OR IGNORE INTO seen VALUES (?, ?, ?)", (site, event.writer, event.seq)
                    )
                    if cur.rowcount == 1 and self._new_point(site, event):
                        fresh.append(event)
                if fresh:
                    for receiver in self._receivers:
                        receiver.site_events(site, fresh)
                self._db.execute("COMMIT")
            except BaseException as exc:
                self._db.execute("ROLLBACK")
                if isinstance(exc, JobError):
                    self._warn(f"events of {site} not written (the site sends them again): {exc}")
                raise
        return len(fresh), len(events) - len(fresh)

    def global_metrics(self, current_round: int, metrics: Mapping[str, float]) -> None:
        """Write a round's metrics now, or when the receivers open; never a round written before. Never raises."""
        with self._lock:
            if self._db.execute("SELECT 1 FROM rounds WHERE round = ?", (current_round,)).fetchone():
                log.info("tracking: metrics of round %d were written before; not again", current_round)
                return
            self._metrics[current_round] = dict(metrics)
            self._flush()

    def final_model(self, path: Path | None) -> None:
        """Keep the final model now, or when the receivers open. Never raises."""
        with self._lock:
            self._model = [path]
            self._flush()

    def close(self, end: RunEnd = RunEnd.FINISHED) -> None:
        """End the runs as end, after a last try to write what waits. Never raises."""
        self._stop.set()
        self._thread.join(_CLOSE_WAIT)
        with self._lock:
            if self._closed:
                return
            self._closed, self._end = True, end
            if self._receivers is None:
                log.warning("tracking: backend %s never opened; this job's runs were not written there", self._backend)
            else:
                self._flush()
                if self._metrics or self._model:
                    log.warning(
                        "tracking: backend %s: some round metrics or the final model were not written", self._backend
                    )
                for receiver in self._receivers:
                    receiver.close(end)
            self._db.close()

    # -- internals --

    def _new_point(self, site: str, event: Event) -> bool:
        """Whether event is a metric point (site, tag, step) not written before by another writer or process.

        Call inside the transaction of site_events. Events other than scalars are always new.
        """
        if event.kind is not EventKind.SCALAR:
            return True
        point = (site, event.tag, event.step)
        cur = self._db.execute(
            "INSERT OR IGNORE INTO points VALUES (?, ?, ?, ?, ?)", (*point, event.writer, self._process)
        )
        if cur.rowcount == 1:
            return True
        row = self._db.execute(
            "SELECT writer, process FROM points WHERE site = ? AND tag = ? AND step = ?", point
        ).fetchone()
        return row is not None and tuple(row) == (event.writer, self._process)

    def _connect(self) -> None:
        tries = 0
        while not self._stop.is_set():
            tries += 1
            try:
                receivers = list(self._opener())
            except JobError as exc:
                pause = self._retry[min(tries - 1, len(self._retry) - 1)]
                with self._lock:
                    self._warn(f"cannot open it (try {tries}; the next in {pause:g} s; the job goes on): {exc}")
                self._stop.wait(pause)
                continue
            with self._lock:
                if self._closed:  # the job ended while the receivers opened
                    for receiver in receivers:
                        receiver.close(self._end)
                    return
                self._receivers = receivers
                if tries > 1:
                    log.warning("tracking: backend %s is open after %d tries", self._backend, tries)
                self._flush()
            return

    def _flush(self) -> None:
        """Write the waiting round metrics and final model (called with the lock held)."""
        if self._receivers is None:
            return
        for current_round in sorted(self._metrics):
            try:
                for receiver in self._receivers:
                    receiver.global_metrics(current_round, self._metrics[current_round])
            except JobError as exc:  # the round's result stands; the metrics are also in progress.json
                self._warn(f"metrics of round {current_round} not written yet: {exc}")
                return
            del self._metrics[current_round]
            self._db.execute("INSERT OR IGNORE INTO rounds VALUES (?)", (current_round,))
        if self._model:
            try:
                for receiver in self._receivers:
                    receiver.final_model(self._model[0])
            except JobError as exc:
                self._warn(f"final model not logged yet: {exc}")
                return
            self._model = []

    def _warn(self, text: str) -> None:
        """A warning about the backend, at most one per WARN_EVERY seconds (called with the lock held)."""
        now = time.monotonic()
        if self._warned_at and now - self._warned_at < WARN_EVERY:
            self._unwarned += 1
            return
        more = f" ({self._unwarned} more since the last warning)" if self._unwarned else ""
        log.warning("tracking: backend %s: %s%s", self._backend, text, more)
        self._warned_at, self._unwarned = now, 0
