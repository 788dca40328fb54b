"""The MLflow receiver: a job's tracking data as MLflow runs.

Layout: one experiment per job name (created when missing); in it one parent
run per job (run name "<job name>-<first 8 of the job id>", tags fedsec.job_id
and fedsec.job_name) holding the job's settings as params, the server's global
metrics (step = round) and the final model (artifact "model/<file>"); under it
one child run per site (tag mlflow.parentRunId, fedsec.site, fedsec.job_id),
created when the site's first event or metric arrives. A round's metrics have
the same key in the parent run (the aggregate) and in each site's run (the
site's value), so MLflow draws them in one chart. Every run's user
(mlflow.user) is the job's submitter. Reopening for the same job id (a
restarted job process) finds these runs by their tags and goes on writing to
them; it never makes a second. close() ends the parent and every site's run
alike: FINISHED, FAILED or KILLED.

What a site's events become in its child run:

* scalar -> a metric (key = tag, step, timestamp = wall time in ms), sent with
  log_batch in chunks of MLflow's limit;
* text -> an artifact ``text/<tag>/step_<step>.txt`` (texts can be 64 KiB,
  more than a tag holds); a later text for the same tag and step replaces it,
  texts of one batch for the same tag and step are joined by newlines;
* params -> params. MLflow params never change: the first value stays, and a
  later, different value is kept in the tag ``fedsec.param.<key>`` (a warning
  is logged);
* tags -> tags. Keys under ``mlflow.`` and ``fedsec.`` belong to MLflow and to
  fedsec (they link the runs together): a site's own such key is written as
  ``site.<key>`` so that no training script can move or relabel runs.

Keys (metric, param and tag names, text artifact folders) are made valid for
MLflow: characters it refuses become "_", empty and "."/".." path parts are
dropped or replaced, and keys are cut at 250 characters. Every exception MLflow
raises becomes a JobError naming the tracking URI (without credentials), or
for the embedded store its label, never the server's path;
writes are idempotent (MLflow drops a metric it already has, params keep their
value, tags and texts are overwritten), so the caller may resend a batch that
failed half-way. This module must never touch MLflow's global state (the active
run, mlflow.set_tracking_uri, autolog): a server runs many jobs at once.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from fedsec import _deps
from fedsec.errors import JobError
from fedsec.tracking.backends import public_uri
from fedsec.tracking.events import Event, EventKind
from fedsec.tracking.receivers.base import RunEnd, SiteMetrics
from fedsec.tracking.receivers.store import SHOWN

try:
    from mlflow.entities import Metric, Param, Run, RunStatus, RunTag
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient
except ImportError as exc:  # the tracking extra is not installed
    raise _deps.missing("mlflow", exc) from exc

log = logging.getLogger(__name__)

TAG_JOB_ID = "fedsec.job_id"
TAG_JOB_NAME = "fedsec.job_name"
TAG_SITE = "fedsec.site"
TAG_PARENT = "mlflow.parentRunId"
TAG_USER = "mlflow.user"
TAG_CHANGED_PARAM = "fedsec.param."  # + key: the latest value of a param that changed
SITE_TAG_PREFIX = "site."  # + key: a site's tag whose key is reserved
RESERVED_TAG_PREFIXES = ("mlflow.", "fedsec.")
TEXT_ARTIFACTS = "text"
MODEL_ARTIFACTS = "model"
# The UI shows an experiment of this kind with its runs table first (not the GenAI overview).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}

# MLflow's limits (mlflow.utils.validation) on one log_batch call and on a key.
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_KEY = 250
_MAX_RESULTS = 1000  # runs per search page
_MESSAGE_CHARS = 500  # of an MLflow error, in a JobError

_BAD_KEY_CHARS = re.compile(r"[^/\w.\- :]")  # what MLflow accepts in a key (on POSIX)
_JOB_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")  # what goes inside a search filter's quotes
_T = TypeVar("_T")


def mlflow_key(name: str) -> str:
    """name as an MLflow metric, param or tag key, or an artifact folder: valid, at most MAX_KEY characters."""
    parts = _BAD_KEY_CHARS.sub("_", name)[:MAX_KEY].split("/")
    key = "/".join("_" if part in (".", "..") else part for part in parts if part)
    if key.startswith(".."):  # MLflow refuses any key that starts like a parent directory
        key = "_" + key[1:]
    return key or "_"


class MlflowReceiver:
    """Writes a job's tracking data to MLflow through an MlflowClient of its own (see the module docstring)."""

    def __init__(
        self,
        tracking_uri: str,
        job_id: str,
        job_name: str,
        *,
        artifact_location: str | None = None,
        label: str | None = None,
        user: str = "",
        shown: str = SHOWN,
    ) -> None:
        """Find or create the experiment and the job's parent run.

        shown: the embedded store's file relative to the server kit, as messages name it.

        user: the runs' user (the job's submitter); "" keeps the one a reopened parent run has.

        artifact_location is where a new experiment keeps its artifacts (None: the tracking server decides).
        label names the backend in logs and errors instead of the URI (the embedded store: no server path); the
        folder of a sqlite:/// store is then cut out of MLflow's error texts too.
        Raises JobError when MLflow cannot be reached, the experiment is deleted, or the job id is unusable.
        """
        if not _JOB_ID.fullmatch(job_id):
            raise JobError(f"mlflow: job id {job_id[:40]!r} is not letters, digits, '.', '_' or '-'")
        self.tracking_uri = tracking_uri
        self._label = label
        self._store_shown = shown  # the embedded store's file, relative to the server kit
        self._shown = label or f"mlflow at {public_uri(tracking_uri)}"
        self._private = str(Path(tracking_uri.removeprefix("sqlite:///")).parent) if label else ""
        self._job_id = job_id
        self._job_name = job_name
        self._user = user
        self._lock = threading.Lock()
        self._children: dict[str, str] = {}  # site -> run id
        self._params: dict[str, dict[str, str]] = {}  # run id -> params it has
        self._active: set[str] = set()  # runs set RUNNING by this receiver
        self._round_times: dict[int, int] = {}  # a resent round's metrics get the same timestamp
        self._closed = False
        with self._backend("open"):
            with warnings.catch_warnings():
                # MLflow's SQL store trips SQLAlchemy deprecation warnings when it is first imported.
                warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"mlflow\.")
                self._client = MlflowClient(tracking_uri=tracking_uri)
                self.experiment_id = self._experiment(artifact_location)
            self.run_id = self._open_runs()

    @property
    def run_name(self) -> str:
        return f"{self._job_name}-{self._job_id[:8]}"

    def how_to_open(self) -> str:
        """One line telling a user where to see the runs."""
        where = f"experiment {self._job_name!r} (id {self.experiment_id}), run {self.run_name} ({self.run_id})"
        if self._label is not None:
            return (
                f"MLflow: {self._label}: mlflow ui --backend-store-uri sqlite:///<server kit>/{self._store_shown}"
                f"  # {where}"
            )
        if self.tracking_uri.startswith("sqlite:"):
            return f"MLflow: mlflow ui --backend-store-uri {public_uri(self.tracking_uri)}  # {where}"
        if self.tracking_uri.startswith(("http:", "https:")):
            base = public_uri(self.tracking_uri).rstrip("/")
            return f"MLflow: {base}/#/experiments/{self.experiment_id}/runs/{self.run_id}  # {where}"
        return f"MLflow: tracking URI {public_uri(self.tracking_uri)}  # {where}"

    def site_events(self, site: str, events: Sequence[Event]) -> None:
        """Write a site's events into its child run (created on its first event). Raises JobError."""
        if not events:
            return
        metrics, params, changed, tags, texts = _split(events)
        with self._lock, self._backend(f"site {site}"):
            self._check_open()
            run_id = self._site_run(site)
            for metric_chunk in _chunks(metrics, MAX_METRICS_PER_BATCH):
                self._client.log_batch(run_id, metrics=metric_chunk, synchronous=True)
            self._log_params(run_id, params, changed)
            tag_list = [RunTag(k, v) for k, v in tags.items()]
            for tag_chunk in _chunks(tag_list, MAX_PARAMS_TAGS_PER_BATCH):
                self._client.log_batch(run_id, tags=tag_chunk, synchronous=True)
            for (key, step), text in texts.items():
                self._client.log_text(run_id, text, f"{TEXT_ARTIFACTS}/{key}/step_{step}.txt")

    def global_metrics(
        self,
        current_round: int,
        metrics: Mapping[str, float],
        sites: SiteMetrics | None = None,
        *,
        stamp: float | None = None,
    ) -> None:
        """Log a round's metrics at step current_round: the aggregate in the parent run, each site's value under
        the same key in the site's run (created when missing), at time stamp (None: now). Raises JobError."""
        with self._lock, self._backend(f"metrics of round {current_round}"):
            self._check_open()
            when = int((time.time() if stamp is None else stamp) * 1000)
            stamp_ms = self._round_times.setdefault(current_round, when)
            targets = [(self.run_id, metrics)] if metrics else []
            targets += [(self._site_run(site), values) for site, values in sorted((sites or {}).items()) if values]
            for run_id, values in targets:
                rows = [Metric(mlflow_key(k), float(v), stamp_ms, current_round) for k, v in values.items()]
                for chunk in _chunks(rows, MAX_METRICS_PER_BATCH):
                    self._client.log_batch(run_id, metrics=chunk, synchronous=True)

    def job_params(self, params: Mapping[str, str]) -> None:
        """Log the job's settings as params of the parent run; a value that changed is kept in a tag
        fedsec.param.<key> (MLflow params never change). Raises JobError."""
        if not params:
            return
        with self._lock, self._backend("job params"):
            self._check_open()
            self._log_params(self.run_id, {mlflow_key(k): v for k, v in params.items()}, {})

    def final_model(self, path: Path | None) -> None:
        """Keep the model file as the parent run's artifact model/<file name>; None logs nothing. Raises JobError."""
        if path is None:
            log.info("mlflow: job_id=%s has no final model to log", self._job_id)
            return
        if not path.is_file():
            raise JobError(f"mlflow: final model {path.name} is not a file")
        with self._lock, self._backend(f"final model {path.name}"):
            self._check_open()
            self._client.log_artifact(self.run_id, str(path), artifact_path=MODEL_ARTIFACTS)

    def close(self, end: RunEnd = RunEnd.FINISHED) -> None:
        """End the job's runs, the parent and every site's (also those this receiver did not write to, which an
        earlier job process ended), as FINISHED, FAILED or KILLED. Never raises: logs a warning."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                for run_id in sorted({self.run_id, *self._children.values()}):
                    self._client.set_terminated(run_id, end.value)
            except (MlflowException, OSError) as exc:
                log.warning(
                    "%s: runs of job_id=%s not marked %s: %s", self._shown, self._job_id, end.value, self._text(exc)
                )

    def __enter__(self) -> MlflowReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals (called with the lock held, inside _backend) --

    @contextmanager
    def _backend(self, what: str) -> Iterator[None]:
        try:
            yield
        except (MlflowException, OSError) as exc:
            raise JobError(f"{self._shown}: job {self._job_id}: {what}: {self._text(exc)}") from exc

    def _text(self, exc: BaseException) -> str:
        """exc's text, cut to _MESSAGE_CHARS, without the embedded store's folder."""
        text = str(exc)
        if self._private:
            text = text.replace(self._private, self._store_shown.rsplit("/", 1)[0])
        return text if len(text) <= _MESSAGE_CHARS else text[:_MESSAGE_CHARS] + "..."

    def _check_open(self) -> None:
        if self._closed:
            raise JobError(f"mlflow: the receiver of job {self._job_id} is closed")

    def _experiment(self, artifact_location: str | None) -> str:
        name = self._job_name
        experiment = self._client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return self._client.create_experiment(name, artifact_location=artifact_location, tags=EXPERIMENT_KIND)
            except MlflowException:  # another job process may have created it just now
                experiment = self._client.get_experiment_by_name(name)
                if experiment is None:
                    raise
        if experiment.lifecycle_stage != "active":
            raise JobError(
                f"{self._shown}: experiment {name!r} (id {experiment.experiment_id}) is deleted: "
                "restore it, or delete it for good (mlflow gc) so that a new one can be made"
            )
        return str(experiment.experiment_id)

    def _open_runs(self) -> str:
        """The parent run's id (found by the job id, else created); remembers the child runs found."""
        parents: list[Run] = []
        children: dict[str, Run] = {}
        for run in self._search(f"tags.`{TAG_JOB_ID}` = '{self._job_id}'"):
            site = run.data.tags.get(TAG_SITE)
            if site is None:
                parents.append(run)
            elif site not in children or run.info.start_time < children[site].info.start_time:
                children[site] = run
        for site, run in children.items():
            self._children[site] = run.info.run_id
            self._params[run.info.run_id] = dict(run.data.params)
        if parents:
            parents.sort(key=lambda r: r.info.start_time)
            if len(parents) > 1:
                log.warning("mlflow: job_id=%s has %d parent runs; using the oldest", self._job_id, len(parents))
            parent = parents[0]
            run_id = str(parent.info.run_id)
            self._params[run_id] = dict(parent.data.params)
            self._user = self._user or parent.data.tags.get(TAG_USER, "")
            self._reactivate(parent)
            log.info("mlflow: job_id=%s reuses run %s and %d site runs", self._job_id, run_id, len(children))
            return run_id
        tags = {TAG_JOB_ID: self._job_id, TAG_JOB_NAME: self._job_name, **self._user_tag()}
        run = self._client.create_run(self.experiment_id, tags=tags, run_name=self.run_name)
        self._active.add(run.info.run_id)
        self._params[run.info.run_id] = {}
        return str(run.info.run_id)

    def _user_tag(self) -> dict[str, str]:
        return {TAG_USER: self._user} if self._user else {}

    def _search(self, filter_string: str) -> Iterator[Run]:
        token: str | None = None
        while True:
            page = self._client.search_runs(
                [self.experiment_id], filter_string, max_results=_MAX_RESULTS, page_token=token
            )
            yield from page
            token = page.token
            if not token:
                return

    def _reactivate(self, run: Run) -> None:
        if run.info.status != RunStatus.to_string(RunStatus.RUNNING):
            self._client.update_run(run.info.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        self._active.add(run.info.run_id)

    def _site_run(self, site: str) -> str:
        run_id = self._children.get(site)
        if run_id is None:
            tags = {TAG_PARENT: self.run_id, TAG_SITE: site, TAG_JOB_ID: self._job_id, TAG_JOB_NAME: self._job_name}
            tags.update(self._user_tag())
            run = self._client.create_run(self.experiment_id, tags=tags, run_name=site)
            run_id = str(run.info.run_id)
            self._children[site] = run_id
            self._params[run_id] = {}
            self._active.add(run_id)
        elif run_id not in self._active:
            self._reactivate(self._client.get_run(run_id))
        return run_id

    def _log_params(self, run_id: str, params: dict[str, str], changed: dict[str, str]) -> None:
        have = self._params.setdefault(run_id, {})
        for key, value in params.items():
            if key in have and have[key] != value:
                changed.setdefault(key, value)
        fresh = [Param(k, v) for k, v in params.items() if k not in have]
        for chunk in _chunks(fresh, MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(run_id, params=chunk, synchronous=True)
            have.update((p.key, p.value) for p in chunk)
        if changed:
            log.warning("mlflow: run %s: params %s changed; the new values are tags", run_id, ",".join(sorted(changed)))
            rows = [RunTag(mlflow_key(TAG_CHANGED_PARAM + k), v) for k, v in changed.items()]
            for tag_chunk in _chunks(rows, MAX_PARAMS_TAGS_PER_BATCH):
                self._client.log_batch(run_id, tags=tag_chunk, synchronous=True)


def _split(
    events: Sequence[Event],
) -> tuple[list[Metric], dict[str, str], dict[str, str], dict[str, str], dict[tuple[str, int], str]]:
    """(metrics, params (first value), changed params (last different value), tags, texts by (key, step))."""
    metrics: list[Metric] = []
    params: dict[str, str] = {}
    changed: dict[str, str] = {}
    tags: dict[str, str] = {}
    texts: dict[tuple[str, int], list[str]] = {}
    for e in events:
        if e.kind is EventKind.SCALAR:
            metrics.append(Metric(mlflow_key(e.tag), e.value, int(e.wall_time * 1000), e.step))
        elif e.kind is EventKind.TEXT:
            texts.setdefault((mlflow_key(e.tag), e.step), []).append(e.text)
        elif e.kind is EventKind.PARAMS:
            for key, value in e.mapping().items():
                key = mlflow_key(key)
                if params.setdefault(key, value) != value:
                    changed[key] = value
        else:
            for key, value in e.mapping().items():
                tags[_site_tag_key(key)] = value
    return metrics, params, changed, tags, {k: "\n".join(v) for k, v in texts.items()}


def _site_tag_key(key: str) -> str:
    """A site's tag key, moved under SITE_TAG_PREFIX when it is one of MLflow's or fedsec's."""
    key = mlflow_key(key)
    return mlflow_key(SITE_TAG_PREFIX + key) if key.startswith(RESERVED_TAG_PREFIXES) else key


def _chunks(items: Sequence[_T], size: int) -> Iterator[list[_T]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
