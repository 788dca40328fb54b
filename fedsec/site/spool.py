"""The site's durable queue of tracking events, one per job, and what the server acknowledged.

A training script's events are appended to <kit>/tracking/<job_id>/events.jsonl
(and fsync'd) before the script is told they are stored; `cursor` holds the
byte offset up to which the server has acknowledged them. After a crash the
site sends again from the cursor; the server drops what it already has.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from fedsec import _fs, limits
from fedsec.errors import JobError, WireError
from fedsec.tracking.events import MAX_BATCH_BYTES, MAX_JSON_LINE_BYTES, Event, from_json_line, to_json_line

log = logging.getLogger(__name__)

Forward = Callable[[str, list[Event]], None]  # (job_id, events): returns once the server stored them


class EventSpool:
    def __init__(self, root: Path) -> None:
        self._root = root
        self._lock = threading.Lock()

    def _dir(self, job_id: str) -> Path:
        return self._root / _fs.check_name("job id", job_id)

    def append(self, job_id: str, events: Sequence[Event]) -> None:
        """Store events durably; WireError when the job's spool is full, JobError when it cannot be written."""
        folder = self._dir(job_id)
        data = b"".join(to_json_line(e) for e in events)
        with self._lock:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            path = folder / "events.jsonl"
            size = path.stat().st_size if path.exists() else 0
            if size + len(data) > limits.MAX_SPOOL_BYTES:
                raise WireError(f"job {job_id}: the site's event spool is full ({limits.MAX_SPOOL_BYTES} bytes)")
            try:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    written = os.write(fd, data)
                    if written != len(data):
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    os.fsync(fd)
                except OSError:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, size)  # no cut line stays behind for the next append to run into
                    raise
                finally:
                    os.close(fd)
            except OSError as exc:
                full = "the site's disk is full: " if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
                raise JobError(f"job {job_id}: {full}cannot store events in the site's spool: {exc.strerror}") from exc

    def jobs(self) -> list[str]:
        return sorted(p.name for p in self._root.iterdir()) if self._root.is_dir() else []

    def pending(self, job_id: str) -> bool:
        folder = self._dir(job_id)
        path = folder / "events.jsonl"
        return path.exists() and path.stat().st_size > self._cursor(folder)

    def forward(self, job_id: str, send: Forward, batch: int = limits.MAX_EVENTS_PER_BATCH) -> int:
        """Send the job's unacknowledged events in batches; return how many were acknowledged.

        Raises what send raises (the cursor then stays where the server left it).
        """
        folder = self._dir(job_id)
        path = folder / "events.jsonl"
        sent = 0
        while path.exists():
            offset = self._cursor(folder)
            lines: list[bytes] = []
            size = 0
            with path.open("rb") as f:  # a batch bounded by count and by bytes (a message's size cap)
                f.seek(offset)
                while len(lines) < batch and size < MAX_BATCH_BYTES // 2:
                    line = f.readline(MAX_JSON_LINE_BYTES + 1)
                    if not line.endswith(b"\n"):
                        break  # the end, or a line being written right now
                    lines.append(line)
                    size += len(line)
            if not lines:
                return sent
            events = [from_json_line(line, f"spool of job {job_id}") for line in lines]
            send(job_id, events)
            _fs.write_atomic(folder / "cursor", str(offset + sum(len(x) for x in lines)).encode(), mode=0o600)
            sent += len(events)
        return sent

    def discard(self, job_id: str) -> None:
        shutil.rmtree(self._dir(job_id), ignore_errors=True)

    @staticmethod
    def _cursor(folder: Path) -> int:
        try:
            return int((folder / "cursor").read_text() or 0)
        except (OSError, ValueError):
            return 0
