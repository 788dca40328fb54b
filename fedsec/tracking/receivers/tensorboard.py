"""The TensorBoard receiver: a job's tracking data as TensorBoard event files.

Layout under the log dir (workspace/tensorboard): one folder per site with its
events and its metrics of each round, and "server" with the global metrics
(step = round), the job's settings (text "params") and a text naming the
final model. A round's metrics have the same tag in "server" and in each
site's folder, so TensorBoard draws them in one chart. A site named "server" writes to "_site_server" (no site name
starts with "_"), so the two never mix. `tensorboard --logdir <log dir>` shows
each folder as a run.

What an event becomes: scalar -> a scalar summary (tag, step, the event's
wall time); text -> a text summary; params / tags -> a text summary "params" /
"tags" holding the event's JSON object. tensorboardX builds the summaries and
frames the records. Each folder gets a new event file per receiver (a
restarted job process adds a file, as TensorBoard expects; the file name
carries the pid and a random suffix so that nothing is overwritten).

The records are written synchronously and flushed at the end of each call:
tensorboardX's SummaryWriter queues them to a thread per writer and drops
write errors there, which would ack events that never reached the disk (and
cost a thread per site). Every OSError becomes a JobError. This module must
never read the event files back nor delete any.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fedsec import _deps, _fs
from fedsec.errors import ConfigError, JobError
from fedsec.tracking.events import Event, EventKind
from fedsec.tracking.receivers.base import RunEnd, SiteMetrics

try:
    from tensorboardX.event_file_writer import EventsWriter  # type: ignore[import-untyped]
    from tensorboardX.proto.event_pb2 import Event as RecordEvent  # type: ignore[import-untyped]
    from tensorboardX.summary import scalar, text  # type: ignore[import-untyped]
except ImportError as exc:  # the tracking extra is not installed
    raise _deps.missing("tensorboardX", exc) from exc

log = logging.getLogger(__name__)

SERVER_RUN = "server"
SERVER_NAMED_SITE_RUN = "_site_server"
PARAMS_TAG = "params"
TAGS_TAG = "tags"
FINAL_MODEL_TAG = "final_model"


class _RunWriter:
    """One event file in one folder, written synchronously."""

    def __init__(self, folder: Path, suffix: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._writer = EventsWriter(str(folder / "events"), suffix)

    def add(self, summary: Any, step: int, wall_time: float) -> None:
        self._writer.write_event(RecordEvent(summary=summary, step=step, wall_time=wall_time))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class TensorBoardReceiver:
    """Writes a job's tracking data as TensorBoard event files under logdir (see the module docstring)."""

    def __init__(self, logdir: Path, *, label: str | None = None) -> None:
        """Make logdir. label names it in logs and errors (None: its path). Raises JobError when it cannot be made."""
        self.logdir = logdir.resolve()
        self._shown = label or str(self.logdir)
        self._suffix = f".{os.getpid()}.{secrets.token_hex(4)}"
        self._lock = threading.Lock()
        self._writers: dict[str, _RunWriter] = {}
        self._last_round = 0
        self._closed = False
        with self._backend("open"):
            self.logdir.mkdir(parents=True, exist_ok=True)

    def how_to_open(self) -> str:
        """One line telling a user where to see the event files."""
        return f"TensorBoard: tensorboard --logdir {self._shown}"

    def site_events(self, site: str, events: Sequence[Event]) -> None:
        """Append a site's events to its event file. Raises JobError."""
        folder = _site_folder(site)
        with self._lock, self._backend(f"site {site}"):
            writer = self._writer(folder)
            for e in events:
                writer.add(_summary(e), e.step, e.wall_time)
            writer.flush()

    def global_metrics(
        self,
        current_round: int,
        metrics: Mapping[str, float],
        sites: SiteMetrics | None = None,
        *,
        stamp: float | None = None,
    ) -> None:
        """Append a round's metrics (step = round, wall time stamp, None: now): the aggregate to the server's
        event file, each site's value under the same tag to the site's. Raises JobError."""
        now = time.time() if stamp is None else stamp
        targets = [(SERVER_RUN, metrics)]
        targets += [(_site_folder(site), values) for site, values in sorted((sites or {}).items())]
        with self._lock, self._backend(f"metrics of round {current_round}"):
            for folder, values in targets:
                if not values:
                    continue
                writer = self._writer(folder)
                for key, value in values.items():
                    writer.add(scalar(key, float(value)), current_round, now)
                writer.flush()
            self._last_round = max(self._last_round, current_round)

    def job_params(self, params: Mapping[str, str]) -> None:
        """Append the job's settings to the server's event file as the text "params" (a JSON object). Raises
        JobError."""
        if not params:
            return
        with self._lock, self._backend("job params"):
            writer = self._writer(SERVER_RUN)
            writer.add(text(PARAMS_TAG, json.dumps(dict(params), sort_keys=True)), 0, time.time())
            writer.flush()

    def final_model(self, path: Path | None) -> None:
        """Note the final model's file name and size as the server's text "final_model". Raises JobError."""
        if path is None:
            return
        with self._lock, self._backend(f"final model {path.name}"):
            note = f"{path.name} ({path.stat().st_size} bytes)"
            writer = self._writer(SERVER_RUN)
            writer.add(text(FINAL_MODEL_TAG, note), self._last_round, time.time())
            writer.flush()

    def close(self, end: RunEnd = RunEnd.FINISHED) -> None:
        """Flush and close every event file (how the job ended changes nothing here). Never raises: logs a warning."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for name, writer in self._writers.items():
                try:
                    writer.close()
                except OSError as exc:
                    log.warning("tensorboard at %s: %s not closed: %s", self._shown, name, self._text(exc))
            self._writers.clear()

    def __enter__(self) -> TensorBoardReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _backend(self, what: str) -> Iterator[None]:
        if self._closed:
            raise JobError(f"tensorboard at {self._shown}: {what}: the receiver is closed")
        try:
            yield
        except OSError as exc:
            raise JobError(f"tensorboard at {self._shown}: {what}: {self._text(exc)}") from exc

    def _text(self, exc: OSError) -> str:
        return str(exc).replace(str(self.logdir), self._shown)

    def _writer(self, folder: str) -> _RunWriter:
        writer = self._writers.get(folder)
        if writer is None:
            writer = _RunWriter(self.logdir / folder, self._suffix)
            self._writers[folder] = writer
        return writer


def _site_folder(site: str) -> str:
    try:
        _fs.check_name("site", site)
    except ConfigError as exc:
        raise JobError(f"tensorboard: {exc}") from exc
    return SERVER_NAMED_SITE_RUN if site == SERVER_RUN else site


def _summary(e: Event) -> Any:
    if e.kind is EventKind.SCALAR:
        return scalar(e.tag, e.value)
    if e.kind is EventKind.TEXT:
        return text(e.tag, e.text)
    return text(PARAMS_TAG if e.kind is EventKind.PARAMS else TAGS_TAG, e.text)
