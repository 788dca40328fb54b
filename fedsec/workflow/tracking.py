"""The job's tracking sink: drops events it already has, then writes the rest to the receivers.

Sites may send an event again after a restart; (site, writer, seq) identifies
it, and tracking.db in the job's workspace remembers what was written. An
event is marked written only after every receiver took it, in one
transaction, so a failed write is retried by the site and nothing is lost.

The metric names users read (README, "Tracking"): a round's metrics, the
weighted average the workflow computes, go to the job's own run at step =
round, and each site's own value of them (what its script sent with its
result) to the site's run under the same name and step, so one chart of
`accuracy` shows the global curve and every site's. The final evaluation (the
final global model's metrics) is one more step, num_rounds, under the same
names, and also `final_<name>` at that step, in the job's run and in each
site's. The job's settings go to the job's run as params (job_params()).

A metric point (site, tag, step) is written once per job (table ``points``):
a round replayed after the server was killed makes the site's script log the
steps it logged before again (with a new writer id when the site restarted
it, with the same one when it kept running), and those points are dropped
here, so the first value stays: a replayed round replaces, never adds. MLflow's
log_batch would append a second value, and dropping works the same for every
receiver. A point is dropped when another writer, or the same writer before
this job process started, wrote it; a writer that logs one step several times
within one process (a script without global_step logs everything at step 0)
keeps every point. A site's metrics of a round count as a writer of their own
(RESULT_WRITER): a script that also logs `accuracy` at the round's step with
its SummaryWriter keeps whichever came first. The server's own metrics are one
value per round (table ``rounds``), however often a round is written again.

What a job process could not write before it ended (the backend never opened
in time, or was down at the end: round metrics, job params, the final model)
is kept in workspace/tracking_pending.json (fedsec.tracking.backends.PENDING_FILE);
the next tracker of the job (a resumed job process, or the server's late-events
writer, which the server parent starts when it sees the file) takes it up, and
the rounds table keeps a round from being written twice.

Tracking never takes a job down. The receivers are opened by a thread of
their own, retried with growing pauses until they open, so a slow or absent
backend never holds up the job's start. Until then a site's events are refused
(the site keeps them and sends them again), and the server's round metrics and
final model wait here. Every backend failure is a WARNING in the job's log
(at most one a minute, with a count of those left out), never a failed job.
close() ends the runs as the job ended: FINISHED, FAILED or KILLED.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import shlex
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedsec import _fs, limits
from fedsec.errors import JobError
from fedsec.jobs.meta import AppConfig, JobMeta, TrackingConfig, to_plain
from fedsec.tracking.backends import ENV_TRACKING_BACKEND, ENV_TRACKING_MLFLOW_URI, PENDING_FILE, Backend
from fedsec.tracking.events import MAX_PARAM_VALUE, Event, EventKind
from fedsec.tracking.receivers import Receiver, RunEnd, SiteMetrics, open_receivers

log = logging.getLogger(__name__)

FINAL_PREFIX = "final_"  # + name: a metric of the final global model (also logged under its own name)
RESULT_WRITER = "result"  # the writer of a site's metrics of a round in table points (never a writer id)
MAX_SCRIPT_ARG_PARAMS = 50  # --name value pairs of the script's arguments logged as params
RETRY_SECONDS = (2.0, 5.0, 10.0, 30.0, 60.0)  # pauses between tries to open the receivers; the last repeats
WARN_EVERY = 60.0  # seconds between two warnings about the same backend
_CLOSE_WAIT = 1.0  # seconds close() gives an opening in progress

Opener = Callable[[], Sequence[Receiver]]


@dataclass(frozen=True)
class _RoundMetrics:
    metrics: Mapping[str, float]
    sites: SiteMetrics
    stamp: float  # the points' time, given when the round is handed over and kept with it until written


def open_tracker(
    job_id: str, name: str, config: TrackingConfig, workspace: Path, tracking_dir: Path | None, submitter: str = ""
) -> Tracker | None:
    """The job's tracker, writing to the backend the server named for it (never one the job names).

    submitter: the admin who submitted the job, the runs' user in MLflow.

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
        return open_receivers(job_id, name, where, backend, config.tensorboard, user=submitter)

    return Tracker(workspace / "tracking.db", opener, backend.name)


def job_params(job_id: str, meta: JobMeta, app: AppConfig, submitter: str) -> dict[str, str]:
    """The job's settings as MLflow params of its run.

    job_id, job_name, submitter, strategy (the strategy's short name; its settings, defaults filled in,
    are strategy.*), min_clients, sites (the sites meta.yml lists, or "all"), num_sites (how many it
    lists; a job open to every site logs it when it ends), and every setting of app/config.yml under its
    path (workflow.num_rounds, he.enabled, ...; the other he.* settings only when HE is on). script.args
    is the argument line; each "--name value" or "--name=value" in it is also script.args.<name> (a
    "--flag" alone: "true"), so a script's local epochs show as script.args.epochs.
    """
    params = {
        "job_id": job_id,
        "job_name": meta.name,
        "submitter": submitter,
        "strategy": app.strategy.name.value,
        "min_clients": str(meta.min_clients),
        "sites": ",".join(meta.sites) or "all",
    }
    if meta.sites:
        params["num_sites"] = str(len(meta.sites))
    config = to_plain(app)
    config["strategy"] = {"name": app.strategy.name.value, **app.strategy.settings()}  # with its defaults
    if not app.he.enabled:
        config["he"] = {"enabled": False}
    params.update(_flatten(config, ""))
    params["script.args"] = shlex.join(app.script.args)
    params.update(script_arg_params(app.script.args))
    return {key: _param_text(value) for key, value in params.items()}


def script_arg_params(args: Sequence[str]) -> dict[str, str]:
    """script.args.<name> for each "--name value", "--name=value" or lone "--flag" (value "true") in args.

    A token that does not start with "--" after a value is taken is ignored; a token starting with "--" is
    never a value. At most MAX_SCRIPT_ARG_PARAMS names; a name given twice keeps its last value.
    """
    found: dict[str, str] = {}
    i = 0
    while i < len(args) and len(found) < MAX_SCRIPT_ARG_PARAMS:
        arg = args[i]
        i += 1
        if not arg.startswith("--") or arg == "--":
            continue
        name, eq, value = arg[2:].partition("=")
        if not name:
            continue
        if not eq:
            if i < len(args) and not args[i].startswith("--"):
                value = args[i]
                i += 1
            else:
                value = "true"
        found[f"script.args.{name}"] = value
    return found


def _flatten(value: object, prefix: str) -> dict[str, str]:
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    key = prefix.removesuffix(".")
    if isinstance(value, bool):
        return {key: "true" if value else "false"}  # as YAML writes them
    if isinstance(value, list):
        return {key: ",".join(str(v) for v in value)}
    return {key: str(value)}


def _param_text(value: str) -> str:
    """value cut to what MLflow keeps in a param."""
    return value if len(value) <= MAX_PARAM_VALUE else value[: MAX_PARAM_VALUE - 3] + "..."


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
        self._metrics: dict[int, _RoundMetrics] = {}  # rounds not written yet
        self._params: dict[str, str] = {}  # job params not written yet
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
        self._workspace = db_path.parent
        self._take_pending()
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

    def global_metrics(
        self, current_round: int, metrics: Mapping[str, float], sites: SiteMetrics | None = None
    ) -> None:
        """Write a round's metrics, global and each site's (under the same names), now or when the receivers
        open; never a round written before. Never raises."""
        with self._lock:
            if self._db.execute("SELECT 1 FROM rounds WHERE round = ?", (current_round,)).fetchone():
                log.info("tracking: metrics of round %d were written before; not again", current_round)
                return
            per_site = {site: dict(values) for site, values in (sites or {}).items()}
            self._metrics[current_round] = _RoundMetrics(dict(metrics), per_site, time.time())
            self._flush()

    def final_metrics(self, step: int, metrics: Mapping[str, float], sites: SiteMetrics | None = None) -> None:
        """Write the final global model's metrics (global and each site's) at step, under their names and as
        final_<name>. Never raises."""
        self.global_metrics(step, _with_final(metrics), {site: _with_final(v) for site, v in (sites or {}).items()})

    def job_params(self, params: Mapping[str, str]) -> None:
        """Write the job's settings as params of its run, now or when the receivers open. Never raises."""
        with self._lock:
            self._params.update(params)
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
                log.warning("tracking: backend %s did not open while the job process ran", self._backend)
            else:
                self._write_waiting()
                for receiver in self._receivers:
                    receiver.close(end)
            self._keep_pending(announce=True)
            self._db.close()

    @property
    def pending(self) -> bool:
        """Whether round metrics, job params or the final model wait to be written (kept for the next tracker)."""
        with self._lock:
            return bool(self._metrics or self._params or self._model)

    # -- internals --

    def _take_pending(self) -> None:
        """Take up what an earlier tracker of this job kept unwritten (workspace/tracking_pending.json)."""
        path = self._workspace / PENDING_FILE
        if not path.exists():
            return
        try:
            doc = json.loads(_fs.read_bounded(path, limits.MAX_MESSAGE_BYTES, f"workspace/{PENDING_FILE}", JobError))
            metrics = {
                int(r): _RoundMetrics(_floats(m["metrics"]), _site_floats(m["sites"]), _stamp(m["stamp"]))
                for r, m in doc["metrics"].items()
            }
            params = {str(k): str(v) for k, v in doc["params"].items()}
            model = (
                [None if doc["model"] is None else self._workspace / _relative(doc["model"])]
                if doc["has_model"]
                else []
            )
        except (JobError, ValueError, KeyError, TypeError, AttributeError) as exc:  # JSONDecodeError: a ValueError
            log.warning("tracking: workspace/%s is unusable and is dropped: %s", PENDING_FILE, exc)
            path.unlink(missing_ok=True)
            return
        self._metrics.update(metrics)
        self._params = {**params, **self._params}
        self._model = model or self._model
        log.info(
            "tracking: took up %d rounds, %d params%s left unwritten by an earlier job process",
            len(metrics),
            len(params),
            " and the final model" if model else "",
        )

    def _keep_pending(self, *, announce: bool) -> None:
        """Keep what waits unwritten for the next tracker of this job, or remove the file (called with the lock).

        announce: warn about what is kept (when the job process ends).
        """
        path = self._workspace / PENDING_FILE
        if not (self._metrics or self._params or self._model):
            path.unlink(missing_ok=True)
            return
        try:
            model = self._model[0] if self._model else None
            doc = {
                "metrics": {
                    str(r): {
                        "metrics": dict(m.metrics),
                        "sites": {s: dict(v) for s, v in m.sites.items()},
                        "stamp": m.stamp,
                    }
                    for r, m in self._metrics.items()
                },
                "params": self._params,
                "has_model": bool(self._model),
                "model": None if model is None else str(model.relative_to(self._workspace)),
            }
            _fs.write_atomic(path, json.dumps(doc).encode(), mode=0o600)
        except (OSError, ValueError) as exc:  # ValueError: a model outside the workspace
            self._warn(f"what waits to be written cannot be kept in workspace/{PENDING_FILE}: {exc}")
            return
        if not announce:
            return
        log.warning(
            "tracking: backend %s: %d rounds, %d params%s not written yet; kept in workspace/%s for the "
            "server to write later",
            self._backend,
            len(self._metrics),
            len(self._params),
            " and the final model" if self._model else "",
            PENDING_FILE,
        )

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
        """Write what waits, and keep what still waits on disk (called with the lock held).

        Kept on disk before the write and again after it, not only at close(): a job process killed while
        its backend is down, or in the middle of a write, loses nothing (a round already written is not
        written again: the rounds table).
        """
        if self._receivers is not None and (self._metrics or self._params or self._model):
            self._keep_pending(announce=False)
        self._write_waiting()
        self._keep_pending(announce=False)

    def _write_waiting(self) -> None:
        """Write the waiting job params, round metrics and final model (called with the lock held)."""
        if self._receivers is None:
            return
        if self._params:
            try:
                for receiver in self._receivers:
                    receiver.job_params(self._params)
            except JobError as exc:
                self._warn(f"job params not written yet: {exc}")
                return
            self._params = {}
        for current_round in sorted(self._metrics):
            try:
                self._write_round(current_round, self._metrics[current_round])
            except JobError as exc:  # the round's result stands; its metrics are also in the job's state
                self._warn(f"metrics of round {current_round} not written yet: {exc}")
                return
            del self._metrics[current_round]
        if self._model:
            try:
                for receiver in self._receivers:
                    receiver.final_model(self._model[0])
            except JobError as exc:
                self._warn(f"final model not logged yet: {exc}")
                return
            self._model = []

    def _write_round(self, current_round: int, pending: _RoundMetrics) -> None:
        """Write one round's metrics to every receiver and mark it written, in one transaction; a site's metric
        at a (tag, step) that a SummaryWriter wrote before is left out. JobError when a receiver fails."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if self._db.execute("SELECT 1 FROM rounds WHERE round = ?", (current_round,)).fetchone():
                self._db.execute("COMMIT")  # taken up from tracking_pending.json, and written since
                return
            sites: dict[str, dict[str, float]] = {}
            for site, values in sorted(pending.sites.items()):
                kept = {}
                for tag, value in values.items():
                    row = (site, tag, current_round, RESULT_WRITER, self._process)
                    if self._db.execute("INSERT OR IGNORE INTO points VALUES (?, ?, ?, ?, ?)", row).rowcount == 1:
                        kept[tag] = value
                sites[site] = kept
            for receiver in self._receivers or ():
                receiver.global_metrics(current_round, pending.metrics, sites, stamp=pending.stamp)
            self._db.execute("INSERT OR IGNORE INTO rounds VALUES (?)", (current_round,))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _warn(self, text: str) -> None:
        """A warning about the backend, at most one per WARN_EVERY seconds (called with the lock held)."""
        now = time.monotonic()
        if self._warned_at and now - self._warned_at < WARN_EVERY:
            self._unwarned += 1
            return
        more = f" ({self._unwarned} more since the last warning)" if self._unwarned else ""
        log.warning("tracking: backend %s: %s%s", self._backend, text, more)
        self._warned_at, self._unwarned = now, 0


def _floats(value: object) -> dict[str, float]:
    """A JSON object of finite numbers, as metrics; ValueError otherwise."""
    if not isinstance(value, dict):
        raise ValueError("metrics are not an object")
    out = {str(k): float(v) for k, v in value.items()}
    if not all(math.isfinite(v) for v in out.values()):
        raise ValueError("a metric is not a finite number")
    return out


def _stamp(value: object) -> float:
    """A kept round's time: seconds since the epoch, finite and positive; ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e11:
        raise ValueError("a round's time is not a number of seconds since the epoch")
    return float(value)


def _site_floats(value: object) -> dict[str, dict[str, float]]:
    if not isinstance(value, dict):
        raise ValueError("site metrics are not an object")
    return {str(site): _floats(v) for site, v in value.items()}


def _relative(text: object) -> str:
    """A path inside the workspace, as kept (relative, no ..); ValueError otherwise."""
    if not isinstance(text, str) or text.startswith("/") or ".." in Path(text).parts:
        raise ValueError("the final model's path is not inside the workspace")
    return text


def _with_final(metrics: Mapping[str, float]) -> dict[str, float]:
    """metrics, and each of them again as final_<name>."""
    return {**metrics, **{FINAL_PREFIX + key: value for key, value in metrics.items()}}
