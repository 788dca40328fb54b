"""The job process's one way to its state: JobStateLink, over the local gRPC connection of its server parent.

The server parent keeps a job's state in its state store (fedsec.state); the job
process holds none of it in files. The protocol, all on the Workflow service
(fedsec.workflow.service) that the parent already calls:

- StartState (parent -> job process, once, when the process serves): the job's
  state as stored: rounds completed, the rounds and refusals recorded, the
  participation record. run() waits for it before its first round; a resumed job
  (a server restart, another replica taking over) continues from it.
- PullState (the parent polls; each call acknowledges what it recorded): the job
  process's reports, numbered from 1, oldest first: each completed round (with the
  rounds completed so far), each refused update kept, and last the job's outcome
  (completed or failed, its reason, the model kept). A report stays queued until
  acknowledged, so a lost reply is sent again; the parent records a report once
  (by number). A completed round's report is acknowledged before the driver goes
  on (and removes an older checkpoint), so the stored count always names a
  checkpoint on disk.
- UpdateSites (parent -> job process): besides the sites alive, the participation
  record when it changed and the sites that reported their script's end.

The link also keeps, in memory, what it reported on top of what it was handed
(its mirror), from which the driver reads the rounds done and the admins' progress
document (fedsec.state.progress) reads the same as the parent's. Checkpoints and
models stay files in the job's workspace (the parent's blob folder). This module
never touches a file and never decides anything about a job.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from fedsec import limits
from fedsec.errors import JobError, WireError
from fedsec.state.progress import progress_document
from fedsec.state.records import Participation, Refusal, ResultMeta, ResultOutcome, RoundKind, RoundRecord
from fedsec.wire import fedsec_pb2, job_state

ACK_SECONDS = 120.0  # how long a report that must be recorded before the driver goes on may wait for the parent
MAX_PULL_WAIT = 30.0  # the longest a PullState call is held open waiting for a report
MAX_PULL_REPORTS = 64  # reports in one PullState reply


@dataclass(frozen=True)
class JobState:
    """A job's state as the parent stores it (and as the link's mirror holds it)."""

    completed_rounds: int = 0
    counted: frozenset[str] = frozenset()  # the sites whose results counted in a round recorded before
    rounds: tuple[RoundRecord, ...] = ()  # the rounds this process reported (training and the final evaluation)
    refusals: tuple[Refusal, ...] = ()
    participation: Participation = field(default_factory=Participation)

    @classmethod
    def from_wire(cls, msg: fedsec_pb2.JobStart) -> JobState:
        """The state a StartState message hands over; WireError when it is malformed."""
        where = "the job's state from the server"
        if len(msg.counted) > limits.MAX_PARTICIPANTS or len(msg.refusals) > limits.MAX_REFUSALS_KEPT:
            raise WireError(f"{where}: more sites or refusals than the limits allow")
        final = job_state.round_from_wire(msg.final, where) if msg.HasField("final") else None
        if final is not None and final.kind is not RoundKind.EVALUATE:
            raise WireError(f"{where}: its final evaluation is a {final.kind.value} round")
        return cls(
            completed_rounds=msg.completed_rounds,
            counted=frozenset(msg.counted),
            rounds=() if final is None else (final,),
            refusals=tuple(job_state.refusal_from_wire(r, where) for r in msg.refusals),
            participation=job_state.participation_from_wire(msg.participation, where),
        )

    @property
    def final_evaluation(self) -> RoundRecord | None:
        """The job's final evaluation, when it was recorded (by this process, or before it: StartState)."""
        return next((r for r in self.rounds if r.kind is RoundKind.EVALUATE), None)


class JobStateLink:
    """The job process's end of the state protocol (see the module docstring). Thread-safe.

    in_process(): a link with no parent, whose reports count as recorded at once (tests, tools).
    """

    def __init__(self, *, ack_seconds: float = ACK_SECONDS) -> None:
        self._ack_seconds = ack_seconds
        self._cond = threading.Condition()
        self._started = False
        self._local = False
        self._state = JobState()
        self._queue: list[fedsec_pb2.StateReport] = []  # sent, not yet acknowledged
        self._seq = 0  # the last report's number
        self._acked = 0  # the parent recorded every report up to this one
        self._reported: set[str] = set()  # sites that reported their script's end
        self._sites_left: dict[str, str] = {}  # what the driver applied of the participation record
        self._failures: dict[str, int] = {}
        self._kept: dict[str, Any] | None = None  # the result kept in this process, sent with the outcome
        self._ended = False  # the outcome was sent: no report comes after it

    @classmethod
    def in_process(cls, state: JobState | None = None) -> JobStateLink:
        """A link already started with state (default: a new job) whose reports are recorded at once."""
        link = cls()
        link._local = True
        link.start(state or JobState())
        return link

    # ------------------------------------------------------------ the parent's end (the service's RPCs)

    def start(self, state: JobState) -> None:
        """Take the job's state from the parent; JobError when it was handed over already."""
        with self._cond:
            if self._started:
                raise JobError("the job's state was handed over already")
            self._state = state
            self._started = True
            self._cond.notify_all()

    def pull(self, acked: int, wait: float) -> list[fedsec_pb2.StateReport]:
        """Forget the reports up to acked (the parent recorded them); the next ones, waiting up to wait seconds."""
        deadline = time.monotonic() + max(0.0, min(wait, MAX_PULL_WAIT))
        with self._cond:
            if acked > self._acked:
                self._acked = min(acked, self._seq)
                self._queue = [r for r in self._queue if r.seq > self._acked]
                self._cond.notify_all()
            while not self._queue and not self._ended and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            batch: list[fedsec_pb2.StateReport] = []
            size = 0
            for report in self._queue[:MAX_PULL_REPORTS]:  # the first always; then while the reply stays small
                size += report.ByteSize()
                if batch and size > limits.MAX_MESSAGE_BYTES // 2:
                    break
                batch.append(report)
            return batch

    def sites_reported(self, sites: Iterable[str]) -> None:
        """The parent says these sites reported their script's end."""
        with self._cond:
            self._reported |= set(sites)
            self._cond.notify_all()

    # ------------------------------------------------------------ the job process's end

    def wait_started(self, timeout: float) -> JobState:
        """The job's state once the parent handed it over; JobError when it did not within timeout seconds."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._started, timeout):
                raise JobError(f"the server did not hand over the job's state within {timeout:g} s")
            return self._state

    @property
    def completed_rounds(self) -> int:
        with self._cond:
            return self._state.completed_rounds

    def state(self) -> JobState:
        """The job's state: what the parent handed over and what this process reported since (the sites
        counted include those of the rounds reported, as the parent's would)."""
        with self._cond:
            return replace(
                self._state, counted=self._state.counted | {s for r in self._state.rounds for s in r.accepted}
            )

    def round_done(self, record: RoundRecord, completed_rounds: int | None = None) -> None:
        """Report a completed round (completed_rounds: the count after a training round) and wait until
        the parent recorded it. A refused site's reason comes from the refusals reported in that round.

        Raises JobError when the parent did not record it within the link's ack time.
        """
        with self._cond:
            reasons = {r.site: r.reason for r in self._state.refusals if r.round == record.number}
            record = replace(record, refused={s: record.refused.get(s) or reasons.get(s, "") for s in record.refused})
            others = [r for r in self._state.rounds if (r.number, r.kind) != (record.number, record.kind)]
            count = self._state.completed_rounds if completed_rounds is None else completed_rounds
            self._state = replace(self._state, rounds=(*others, record), completed_rounds=count)
            report = fedsec_pb2.StateReport(round=job_state.round_to_wire(record), completed_rounds=count)
            seq = self._send(report)
        self._await_ack(seq, f"round {record.number}")

    def refused(self, refusal: Refusal) -> bool:
        """Report a refused update if it is kept (at most limits.MAX_REFUSALS_PER_ROUND a round, the newest
        limits.MAX_REFUSALS_KEPT in all, as the store keeps them); whether it was. Does not wait."""
        with self._cond:
            kept = list(self._state.refusals)
            if sum(1 for r in kept if r.round == refusal.round) >= limits.MAX_REFUSALS_PER_ROUND:
                return False
            kept = [*kept, refusal][-limits.MAX_REFUSALS_KEPT :]
            self._state = replace(self._state, refusals=tuple(kept))
            self._send(fedsec_pb2.StateReport(refusal=job_state.refusal_to_wire(refusal)))
            return True

    def note_sites(self, left: dict[str, str], failures: dict[str, int]) -> None:
        """What the driver applied of the parent's participation record (for progress(); nothing is sent:
        the parent owns that record)."""
        with self._cond:
            self._sites_left, self._failures = dict(left), dict(failures)

    def keep(self, entry: dict[str, Any] | None) -> None:
        """The result this process keeps ({"model", "round", "completed_rounds"}): sent with the outcome."""
        with self._cond:
            self._kept = dict(entry) if entry is not None else None

    @property
    def kept(self) -> dict[str, Any] | None:
        with self._cond:
            return dict(self._kept) if self._kept is not None else None

    def end(self, completed: bool, reason: str, timeout: float = ACK_SECONDS) -> bool:
        """Report the job's outcome, with the result kept; whether the parent recorded it within timeout seconds."""
        outcome = fedsec_pb2.WorkflowOutcome(completed=completed, reason=reason)
        kept = self.kept
        if kept is not None:
            outcome.kept.CopyFrom(fedsec_pb2.KeptModel(model=str(kept["model"]), round=int(kept["round"])))
        with self._cond:
            seq = self._send(fedsec_pb2.StateReport(outcome=outcome))
            self._ended = True
            return self._cond.wait_for(lambda: self._acked >= seq, timeout)

    def wait_reported(self, sites: set[str], timeout: float) -> set[str]:
        """Wait until each of sites reported its script's end (or timeout); the sites that did not."""
        with self._cond:
            self._cond.wait_for(lambda: sites <= self._reported, timeout)
            return sites - self._reported

    def progress(self) -> dict[str, Any]:
        """The admins' progress document of this job as this process knows it (fedsec.state.progress)."""
        with self._cond:
            state, left, failures, kept = self._state, self._sites_left, self._failures, self._kept
        result = None
        if kept is not None:
            result = ResultMeta(ResultOutcome.COMPLETED, model_key=str(kept["model"]), model_round=int(kept["round"]))
        return progress_document(state.rounds, state.refusals, Participation(frozenset(), failures, left), result)

    def sites_counted(self) -> set[str]:
        """The sites whose results counted in a round or the final evaluation, as recorded."""
        with self._cond:
            return set(self._state.counted) | {s for r in self._state.rounds for s in r.accepted}

    def _send(self, report: fedsec_pb2.StateReport) -> int:
        """Queue report under the next number (the lock held); a link with no parent records it at once."""
        self._seq += 1
        report.seq = self._seq
        if self._local:
            self._acked = self._seq
        else:
            self._queue.append(report)
        self._cond.notify_all()
        return self._seq

    def _await_ack(self, seq: int, what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._acked >= seq, self._ack_seconds):
                raise JobError(f"the server did not record {what} within {self._ack_seconds:g} s")
