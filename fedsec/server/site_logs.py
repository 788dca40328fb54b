"""Sites' logs of a job's script as the sites send them while it runs (fedsec.site.logship): kept, capped, read.

Each site's log of a job is one file in the job's folder (site_logs/<site>.log) beside a small state
file (<site>.json: the run being appended, where it began in the file, whether it ended, the runs that
ended before, how many runs began: at most limits.MAX_SITE_LOG_RUNS, so a site that invents a run id
per call stops being written to). A piece is appended at its offset in its run, so a retry never adds anything twice; a
new run (the site started the job's script again) begins after a marker line. The server keeps at most
limits.MAX_SITE_JOB_LOG_BYTES of one site's log of one job: later pieces are dropped and the site is told.

Readers get text from a cursor, whole lines while the log grows, with control characters replaced (the
text comes from job code and ends up on an admin's terminal). Site names come from verified
certificates and are checked again before they name a file. Nothing returned here names a server path.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from fedsec import _fs, limits
from fedsec.errors import FedsecError, JobError, WireError

FOLDER = "site_logs"  # in the job's folder
RESTART_MARKER = b"[fedsec] the job's script started again on this site\n"
_RUN = re.compile(r"[0-9A-Za-z_-]{1,64}")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_MAX_ENDED_RUNS = 2 * (limits.MAX_SITE_RESTARTS + 1)
_STATE_LIMIT = 64 << 10
_LOCK = threading.Lock()  # appends of every job and site in this process: each is a few small writes


@dataclass(frozen=True)
class Appended:
    """What the server holds of a run after an append: send from offset on; full: send no more."""

    offset: int
    full: bool


@dataclass(frozen=True)
class LogPiece:
    """New text of one site's log for a reader at a cursor (see fedsec.wire's LogText)."""

    site: str
    offset: int
    text: str
    more: bool
    closed: bool
    full: bool


@dataclass
class _State:
    run: str = ""
    base: int = 0
    closed: bool = False
    ended: list[str] = field(default_factory=list)
    runs: int = 0  # runs begun, this one included (limits.MAX_SITE_LOG_RUNS)


def clean_text(data: bytes) -> str:
    """Log bytes as text for a terminal: UTF-8 (bad bytes replaced), a carriage return a new line,
    every other control character but newline and tab replaced by U+FFFD."""
    text = data.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("\ufffd", text)


class JobLogs:
    """The sites' logs of one job, in its folder on the server."""

    def __init__(self, job_dir: Path) -> None:
        self._folder = job_dir / FOLDER

    def sites(self) -> list[str]:
        """The sites that sent some of their log of this job, sorted."""
        if not self._folder.is_dir():
            return []
        return sorted(p.stem for p in self._folder.glob("*.log"))

    def has(self, site: str) -> bool:
        return self._log(site).is_file()

    def size(self, site: str) -> int:
        """How many bytes of site's log the server holds (0: none)."""
        try:
            return self._log(site).stat().st_size
        except FileNotFoundError:
            return 0

    def append(self, site: str, run: str, offset: int, data: bytes, last: bool) -> Appended:
        """Append a piece of site's log of run at offset; what the server then holds of the run.

        Raises WireError for a malformed piece, JobError when the server cannot store it.
        """
        if not _RUN.fullmatch(run):
            raise WireError("job log: the run id must be 1 to 64 letters, digits, '_' or '-'")
        if len(data) > limits.MAX_LOG_CHUNK_BYTES:
            raise WireError(f"job log: a piece of more than {limits.MAX_LOG_CHUNK_BYTES} bytes")
        path = self._log(site)
        with _LOCK:
            try:
                return self._append(site, path, run, offset, data, last)
            except OSError as exc:
                raise JobError(
                    f"the server cannot store the job's log of {site}: {exc.strerror or type(exc).__name__}"
                ) from exc

    def _append(self, site: str, path: Path, run: str, offset: int, data: bytes, last: bool) -> Appended:
        state = self._state(site)
        if run in state.ended:
            return Appended(0, True)  # a late piece of a run that ended: nothing more of it is wanted
        self._folder.mkdir(exist_ok=True, mode=0o700)
        size = path.stat().st_size if path.exists() else 0
        if run != state.run:
            if offset != 0:
                return Appended(0, False)  # nothing of this run is here yet: send it from its start
            if size >= limits.MAX_SITE_JOB_LOG_BYTES or state.runs >= limits.MAX_SITE_LOG_RUNS:
                return Appended(0, True)  # a full log, or a site inventing runs: nothing more is kept or written
            if state.run:
                state.ended = [*state.ended, state.run][-_MAX_ENDED_RUNS:]
                size += _write(path, _marker(path, size), size)
            state.run, state.base, state.closed, state.runs = run, size, False, state.runs + 1
            self._save(site, state)
        pos = state.base + offset
        if pos > size:
            return Appended(size - state.base, size >= limits.MAX_SITE_JOB_LOG_BYTES)
        new = data[size - pos :]
        written = _write(path, new, size)
        size += written
        if last and written == len(new) and not state.closed:
            state.closed = True
            self._save(site, state)
        return Appended(size - state.base, size >= limits.MAX_SITE_JOB_LOG_BYTES or state.closed)

    def read(self, site: str, offset: int | None, limit: int, *, from_start: bool, whole_lines: bool) -> LogPiece:
        """site's log from offset (None: from its last lines, or its start with from_start), at most limit bytes.

        whole_lines: a line still being written is left for the next read (unless it alone fills limit, or the
        site said its script ended).
        """
        path = self._log(site)
        state = self._state(site)
        try:
            with path.open("rb") as f:
                size = os.fstat(f.fileno()).st_size
                start = min(offset, size) if offset is not None else 0 if from_start else max(0, size - limit)
                f.seek(start)
                data = f.read(min(limit, size - start))
        except FileNotFoundError:
            return LogPiece(site, offset or 0, "", False, False, False)
        except OSError as exc:
            raise JobError(
                f"the server cannot read the job's log of {site}: {exc.strerror or type(exc).__name__}"
            ) from exc
        read_all = len(data)
        if offset is None and start > 0:  # a tail starts at a line's start
            cut = data.find(b"\n")
            start, data = (start + cut + 1, data[cut + 1 :]) if cut >= 0 else (start, data)
        if whole_lines and not state.closed and data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n")
            if cut >= 0 or len(data) < limit:  # a line longer than limit goes out in parts
                data = data[: cut + 1]
        end = start + len(data)
        full = size >= limits.MAX_SITE_JOB_LOG_BYTES
        more = end < size and read_all >= limit  # stopped by the limit, not by the end of what is there
        return LogPiece(site, end, clean_text(data), more, state.closed and end >= size, full)

    def tail(self, site: str, limit: int) -> str | None:
        """The last limit bytes of site's log as text from a line's start (None: no log), saying when it is capped."""
        if not self.has(site):
            return None
        piece = self.read(site, None, limit, from_start=False, whole_lines=False)
        if piece.full:
            return piece.text + capped_note()
        return piece.text

    def _log(self, site: str) -> Path:
        return self._folder / f"{_site_name(site)}.log"

    def _state(self, site: str) -> _State:
        path = self._folder / f"{_site_name(site)}.json"
        if not path.exists():
            return _State()
        try:
            doc = json.loads(_fs.read_bounded(path, _STATE_LIMIT, "site log state", JobError))
            ended = [str(r) for r in doc["ended"]]
            runs = int(doc.get("runs", len(ended) + 1))  # a state written before runs were counted
            return _State(str(doc["run"]), int(doc["base"]), bool(doc["closed"]), ended, runs)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise JobError(f"the server's record of the job's log of {site} is malformed") from exc

    def _save(self, site: str, state: _State) -> None:
        doc = {"run": state.run, "base": state.base, "closed": state.closed, "ended": state.ended, "runs": state.runs}
        _fs.write_atomic(self._folder / f"{_site_name(site)}.json", json.dumps(doc).encode(), mode=0o600)


def capped_note() -> str:
    """The line that ends a site's log the server stopped keeping."""
    return (
        f"\n[fedsec] the server keeps the first {limits.MAX_SITE_JOB_LOG_BYTES >> 20} MiB of a site's log of a job"
        " (limits.MAX_SITE_JOB_LOG_BYTES); the rest is only on the site\n"
    )


def _marker(path: Path, size: int) -> bytes:
    """The line that says a new run begins, after a newline if the log's last line is unfinished."""
    if size == 0:
        return RESTART_MARKER
    with path.open("rb") as f:
        f.seek(size - 1)
        return RESTART_MARKER if f.read(1) == b"\n" else b"\n" + RESTART_MARKER


def _write(path: Path, data: bytes, size: int) -> int:
    """Append as much of data as the cap leaves room for at size (the file's size); the bytes written."""
    data = data[: max(0, limits.MAX_SITE_JOB_LOG_BYTES - size)]
    if not data:
        return 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    return len(data)


def _site_name(site: str) -> str:
    try:
        return _fs.check_name("site", site)
    except FedsecError as exc:
        raise WireError(str(exc)) from exc
