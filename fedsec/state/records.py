"""The typed values the state interface stores and returns: frozen dataclasses and enums, nothing else.

These are the server's state as it exists today, one type per thing: a job's record
(JobRecord), one round's progress (RoundRecord), one refused update (Refusal), a site's
report of its script's end (SiteReport), which sites took part in a job (Participation),
what a job kept as its result (ResultMeta) and one admin command in the audit trail (AuditEntry). No backend
type (a row, a cursor) and no JSON text crosses the interface, except JobRecord.meta_json:
the job's signed meta.yml kept verbatim as a document, never read by the store.
This module imports nothing beyond the standard library.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field


class JobStatus(enum.Enum):
    """Where a job is in its life; the values are what the store and the wire carry."""

    SUBMITTED = "submitted"
    RUNNING = "running"
    COMPLETED = "finished:completed"
    ABORTED = "finished:aborted"
    FAILED = "finished:failed"

    @property
    def finished(self) -> bool:
        """True for the three final states."""
        return self.value.startswith("finished:")


# The final states each unfinished state may go to (a job never completes without running).
FINISH_FROM: Mapping[JobStatus, frozenset[JobStatus]] = {
    JobStatus.SUBMITTED: frozenset({JobStatus.ABORTED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset({JobStatus.COMPLETED, JobStatus.ABORTED, JobStatus.FAILED}),
}


@dataclass(frozen=True)
class NewJob:
    """What a submission records: the job as its admin signed it (job_id is the signed id)."""

    job_id: str
    name: str
    submitter: str
    submitter_org: str
    submitter_role: str
    meta_json: str  # the job's meta as JSON text (a JSON object)
    num_rounds: int
    archive_sha256: bytes = b""  # sha256 of the signed archive; b"" only for jobs stored before it was kept


@dataclass(frozen=True)
class JobRecord:
    """One job as the store holds it."""

    job_id: str
    name: str
    status: JobStatus
    submitter: str
    submitter_org: str
    submitter_role: str
    submit_time: float
    start_time: float | None
    end_time: float | None
    reason: str  # why it failed or was aborted; "" otherwise
    meta_json: str  # the job's meta as JSON text
    num_rounds: int
    current_round: int  # rounds completed so far
    resume_count: int  # how many times the job was resumed after a server restart
    archive_sha256: bytes = b""  # sha256 of the signed archive (b"": a job stored by a fedsec that did not keep it)


class RoundKind(enum.Enum):
    """What a round did: trained the model, or only evaluated it (the final evaluation)."""

    TRAIN = "train"
    EVALUATE = "evaluate"


@dataclass(frozen=True)
class RoundRecord:
    """One completed round of a job: who was asked, who was counted, who was refused and why, the metrics."""

    number: int  # from 0
    kind: RoundKind
    sampled: frozenset[str]
    accepted: frozenset[str]  # the sites whose update went into the aggregate
    refused: Mapping[str, str] = field(default_factory=dict)  # site -> why its update was refused
    failed: frozenset[str] = frozenset()  # sites whose script died during the round
    metrics: Mapping[str, float] = field(default_factory=dict)
    time: float = 0.0  # when it was recorded (set by the store)


@dataclass(frozen=True)
class Refusal:
    """A site's update that the job's workflow refused, and why (one line, bounded by the workflow)."""

    round: int  # from 0
    site: str
    reason: str
    time: float = 0.0  # when it was recorded (set by the store)


class SiteOutcome(enum.Enum):
    """How a site's training script ended, as the site reported it."""

    FINISHED = "finished"
    FAILED = "failed"


@dataclass(frozen=True)
class SiteReport:
    """A site's report of its script's end for one job (the latest one counts)."""

    site: str
    outcome: SiteOutcome
    error: str = ""
    log_tail: str = ""
    time: float = 0.0  # when it was recorded (set by the store)


@dataclass(frozen=True)
class Participation:
    """Which sites took part in a job: who fetched it, how often each one's script failed, who left and why."""

    fetched: frozenset[str] = frozenset()
    failures: Mapping[str, int] = field(default_factory=dict)
    left: Mapping[str, str] = field(default_factory=dict)  # site -> the error text it left with


class ResultOutcome(enum.Enum):
    """How the job ended: its final status without the "finished:" prefix."""

    COMPLETED = "completed"
    ABORTED = "aborted"
    FAILED = "failed"


@dataclass(frozen=True)
class ResultMeta:
    """What a job kept as its result: the outcome, and the global model kept (blob key, round, digest)."""

    outcome: ResultOutcome
    reason: str = ""
    model_key: str = ""  # the blob key of the model kept ("": none, no round completed)
    model_round: int | None = None  # the round (from 0) whose global model it is
    model_sha256: bytes = b""
    model_size: int = 0


@dataclass(frozen=True)
class AuditEntry:
    """One admin command, allowed or refused."""

    time: float
    admin: str
    org: str
    role: str
    command: str
    args: Mapping[str, str]
    outcome: str  # "allowed" | "refused" | "failed"
    detail: str = ""


@dataclass(frozen=True)
class Lease:
    """The server lease: which replica is active, until when, under which fencing token.

    fencing_token grows by one at every acquisition and never goes back, so a write
    that carries an older token is known to come from a replica that lost the lease.
    """

    holder: str  # the replica's name
    fencing_token: int
    deadline: float  # the store clock's time (seconds) when it lapses unless renewed
    acquired: float  # when this holder acquired it (renewals keep it)
