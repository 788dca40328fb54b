"""Which sites took part in a job: who fetched it, how often each one's script failed, who left and why.

The server parent owns this record (job folder, participation.json, written
atomically); the job's workflow process reads it when told the sites changed
(fedsec.workflow.fedavg.load_participation) and never writes it. Only a site
that fetched a job may report on it; a site whose script failed restarts it
(it stays assigned) up to the job's workflow.max_site_restarts times, provided
it had the script running since its last failure; otherwise it leaves the job
and is no longer assigned. This module never decides whether a job goes on:
the workflow does, from min_clients.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from fedsec import _fs, limits
from fedsec.errors import JobError

PARTICIPATION_FILE = "participation.json"  # fedsec.workflow.fedavg reads it by the same name
_FILE_LIMIT = limits.MAX_PARTICIPANTS * (limits.MAX_ERROR_TEXT + 256) + (64 << 10)


@dataclass
class JobSites:
    """The participation record of one job (see the module docstring)."""

    path: Path
    fetched: set[str] = field(default_factory=set)
    failures: dict[str, int] = field(default_factory=dict)
    left: dict[str, str] = field(default_factory=dict)  # site -> its error text, in the order they left

    @classmethod
    def load(cls, job_dir: Path) -> JobSites:
        """The record in job_dir (empty if none yet); JobError if it is unreadable."""
        path = job_dir / PARTICIPATION_FILE
        if not path.exists():
            return cls(path)
        try:
            doc = json.loads(_fs.read_bounded(path, _FILE_LIMIT, "participation record", JobError))
            return cls(path, set(doc["fetched"]), dict(doc["failures"]), dict(doc["left"]))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise JobError("participation record: malformed") from exc

    def save(self) -> None:
        doc = {"fetched": sorted(self.fetched), "failures": self.failures, "left": self.left}
        _fs.write_atomic(self.path, json.dumps(doc).encode(), mode=0o600)

    def fail(self, site: str, error: str, *, was_running: bool, max_restarts: int) -> bool:
        """Count a failure of site's script; return whether the site leaves the job (else it restarts)."""
        count = self.failures.get(site, 0) + 1
        self.failures[site] = count
        leaves = not was_running or count > max_restarts
        if leaves:
            self.left[site] = error.strip()[-limits.MAX_ERROR_TEXT :]
        return leaves
