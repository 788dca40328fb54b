"""Which sites took part in a job: who fetched it, how often each one's script failed, who left and why.

The server parent owns this record: it lives in the server's state
(fedsec.state Participation), and the job's workflow process receives it over
its socket (fedsec.workflow.link: StartState, UpdateSites), never as a file. A
job stored by an older fedsec has only its participation.json: it is read from
there until the first save. Only a site that fetched a job may report on it; a site whose script
failed restarts it (it stays assigned) up to the job's
workflow.max_site_restarts times, provided it had the script running since its
last failure; otherwise it leaves the job and is no longer assigned. This module
never decides whether a job goes on: the workflow does, from min_clients.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from fedsec import _fs, limits
from fedsec.errors import JobError
from fedsec.state.interface import StateStore
from fedsec.state.records import Participation

PARTICIPATION_FILE = "participation.json"  # what an older fedsec kept in the job folder (read, never written)
_FILE_LIMIT = limits.MAX_PARTICIPANTS * (limits.MAX_ERROR_TEXT + 256) + (64 << 10)


@dataclass
class JobSites:
    """The participation record of one job (see the module docstring)."""

    state: StateStore
    job_id: str
    job_dir: Path
    fetched: set[str] = field(default_factory=set)
    failures: dict[str, int] = field(default_factory=dict)
    left: dict[str, str] = field(default_factory=dict)  # site -> its error text, in the order they left

    @classmethod
    def load(cls, state: StateStore, job_id: str, job_dir: Path) -> JobSites:
        """The job's record (empty if none yet); JobError if it cannot be read."""
        record = state.get_participation(job_id)
        if record == Participation() and (job_dir / PARTICIPATION_FILE).exists():
            record = _read_file(job_dir / PARTICIPATION_FILE)  # kept by an older fedsec
        return cls(state, job_id, job_dir, set(record.fetched), dict(record.failures), dict(record.left))

    def save(self) -> None:
        """Store the record. Raises JobError."""
        self.state.put_participation(self.job_id, self.record())

    def record(self) -> Participation:
        """The record as the state holds it."""
        return Participation(frozenset(self.fetched), dict(self.failures), dict(self.left))

    def fail(self, site: str, error: str, *, was_running: bool, max_restarts: int) -> bool:
        """Count a failure of site's script; return whether the site leaves the job (else it restarts)."""
        count = self.failures.get(site, 0) + 1
        self.failures[site] = count
        leaves = not was_running or count > max_restarts
        if leaves:
            self.left[site] = error.strip()[-limits.MAX_ERROR_TEXT :]
        return leaves


def _read_file(path: Path) -> Participation:
    try:
        doc = json.loads(_fs.read_bounded(path, _FILE_LIMIT, "participation record", JobError))
        return Participation(frozenset(doc["fetched"]), dict(doc["failures"]), dict(doc["left"]))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise JobError("participation record: malformed") from exc
