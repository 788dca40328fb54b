"""The round driver: rounds of sample -> send the global model -> gather updates -> the strategy's result.

RoundDriver (FedAvg is its older name) owns sampling, deadlines, site failures,
checkpoints and progress; the job's strategy (fedsec.workflow.strategies: fedavg,
fedprox, fedopt, scaffold) owns how each accepted plain update is folded in and
what the next global model is; the job's update codec (fedsec.workflow.codec),
picked once from the signed job's he section, owns what differs between plain
arrays and HE ciphertexts: the models' file suffix, the cap on sampled sites,
each round's fold (plain: the strategy's; encrypted: the sum of ciphertexts, or
the sites' sealed step kept unread for a strategy the sites step under HE),
whether an update's size is judged from its header, and whether the strategy's
state is restored. The driver never asks whether a job uses HE.

The job's state (rounds completed, each round's sites and metrics, refused
updates, the result kept) goes to the server parent through the driver's
JobStateLink (fedsec.workflow.link), which also hands it the state to resume
from, so a restarted server, or another replica, resumes from the last completed
round. The models stay files in the job's workspace: checkpoints/round_NNNNN.fsa
(the global model after that round; round_NNNNN.state.fsa beside it holds the
strategy's state, if it has any, such as FedOpt's float64 moments). Service
threads call get_task / submit / update_sites / apply_participation; run() drives
rounds. The result folder (fedsec.jobs.result) holds the final model of a
completed job, or, through keep_last_result(), the last completed round's model
of one that failed or was stopped; the link carries which round it is. A write
that fails for a full disk fails the job with a reason that starts "server disk full:".

Round rules: each sampled site has workflow.round_timeout from when it received
its task (from the round's opening if it never asked); the round closes when
every sampled site answered, failed, went away or is past its own deadline. An
upload cut short leaves the site pending (it may send again); only a complete
upload that fails its checks uses up the site's turn. A site whose script died
leaves the open round; one that left the job (the server parent decides, from
workflow.max_site_restarts) is never sampled again, and the job fails only when
fewer than min_clients sites remain. This module never decides who may report
a failure: the server parent checks that and hands over the result.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsec import _schema, limits
from fedsec.errors import HEError, JobError, TransferInterruptedError, WireError
from fedsec.jobs import result
from fedsec.jobs.meta import AppConfig, JobMeta
from fedsec.state.records import Refusal, RoundKind, RoundRecord
from fedsec.wire import arrays, fedsec_pb2, streams
from fedsec.workflow import codec, strategies
from fedsec.workflow.codec import ENCRYPTED_SUFFIX, RoundFold, UpdateCodec
from fedsec.workflow.link import JobStateLink
from fedsec.workflow.tracking import Tracker

log = logging.getLogger(__name__)

TRAIN, EVALUATE = "train", "evaluate"
_PARAMS_TYPES = ("full", "diff")
_MAX_WEIGHT = 1e12
_POLL_SECONDS = 0.5  # how often a waiting driver looks at the clock again (it is also woken on every change)
TASK_MODEL = "task_model.fsa"  # a training task's model when the strategy adds to it (scaffold: c)


@dataclass
class _Round:
    number: int
    kind: str
    model: Path
    specs: tuple[arrays.TensorSpec, ...]
    payload: fedsec_pb2.PayloadInfo  # the model's size and SHA-256, read once when the round opens
    sampled: frozenset[str]
    pending: set[str]
    fold: RoundFold
    metric_sums: dict[str, float] = field(default_factory=dict)
    metric_weights: dict[str, float] = field(default_factory=dict)
    site_metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # site -> the metrics it sent
    contributors: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # sampled sites whose script died during the round
    opened: float = 0.0  # the driver's clock when the round opened
    received: dict[str, float] = field(default_factory=dict)  # site -> when it received its task

    def deadline(self, site: str, timeout: float) -> float:
        """When site's time to answer ends: timeout after it received its task (or after the opening)."""
        return self.received.get(site, self.opened) + timeout

    def metrics(self) -> dict[str, float]:
        return {k: self.metric_sums[k] / self.metric_weights[k] for k in sorted(self.metric_sums)}


@dataclass(frozen=True)
class Task:
    """What get_task answers: a status, and for a task the round, the model file to stream and its size and digest."""

    status: fedsec_pb2.TaskStatus
    kind: str = ""
    current_round: int = 0
    model: Path | None = None
    payload: fedsec_pb2.PayloadInfo | None = None

    @property
    def encrypted(self) -> bool:
        return self.model is not None and self.model.suffix == ENCRYPTED_SUFFIX


@dataclass(frozen=True)
class Participation:
    """What the server parent decided about the sites of a job: failures reported, and the sites that left.

    failures: site -> how many times its script failed (each new one takes the
    site out of the open round); left: site -> the error text it left with;
    fetched: the sites that fetched the job (for a job open to every site, the
    sites that remain are those that fetched it or connected, less those that left).
    """

    failures: Mapping[str, int] = field(default_factory=dict)
    left: Mapping[str, str] = field(default_factory=dict)
    fetched: frozenset[str] = frozenset()


class RoundDriver:
    """One job on the server: its rounds, driven for the job's strategy."""

    def __init__(
        self,
        job_id: str,
        job_folder: Path,
        workspace: Path,
        meta: JobMeta,
        app: AppConfig,
        he_context: Any = None,
        tracker: Tracker | None = None,
        clock: Callable[[], float] = time.monotonic,
        link: JobStateLink | None = None,
        strategy: strategies.Strategy | None = None,
    ) -> None:
        """he_context: the server's HE context (no key), required when the job enables HE.

        clock: the driver's time source for deadlines (seconds, monotonic).
        link: the job's way to its state (default: one with no parent, JobStateLink.in_process()).
        strategy: the job's strategy (default: the one app/config.yml's strategy section names).
        Leftovers of an earlier process on this workspace (temporary checkpoint
        files, half-received uploads) are removed here. Raises JobError when the
        job enables HE without he_context, or with a strategy that cannot run under it.
        """
        self.job_id = job_id
        self.meta = meta
        self.cfg = app.workflow
        self.codec: UpdateCodec = codec.make(job_id, app.he, he_context, workspace / "incoming")
        if strategy is None:
            strategy = strategies.make(app.strategy, len(meta.sites), self.codec.encrypted)
        self.codec.check(strategy)
        self.strategy = strategy
        self.tracker = tracker
        self.participants: set[str] = set()  # every site that answered a round: the sites whose end is awaited
        self._initial = job_folder / "app" / app.initial_model
        self._ws = workspace
        for sub in ("checkpoints", "incoming", "result"):
            (workspace / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        _remove_leftovers(workspace)
        self._clock = clock
        self._cond = threading.Condition()
        self._live: set[str] = set()
        self._known: set[str] = set()  # every site live or that fetched the job: the pool of a job open to every site
        self._left: dict[str, str] = {}  # site -> the error text it left the job with
        self._failures: dict[str, int] = {}  # site -> failures of its script applied so far
        self._round: _Round | None = None
        self._done = False
        self.link = link if link is not None else JobStateLink.in_process()

    # ------------------------------------------------------------ service side

    def update_sites(self, sites: Iterable[str]) -> None:
        allowed = set(self.meta.sites)
        with self._cond:
            self._live = {s for s in sites if (not allowed or s in allowed) and s not in self._left}
            self._known |= self._live
            self._cond.notify_all()

    def apply_participation(self, participation: Participation) -> None:
        """Take in the server parent's decisions: new failures leave the open round, sites that left go for good."""
        with self._cond:
            self._known |= participation.fetched
        for site in sorted(set(participation.failures) | set(participation.left)):
            count = participation.failures.get(site, 0)
            gone = site in participation.left
            with self._cond:
                new_failure = count > self._failures.get(site, 0)
                if new_failure:
                    self._failures[site] = count
                new_left = gone and site not in self._left
            if new_failure or new_left:
                self.site_failed(site, participation.left.get(site, ""), left=gone)

    def site_failed(self, site: str, reason: str, *, left: bool) -> None:
        """site's script died: it leaves the open round; left: it leaves the job for good, with reason (its text)."""
        with self._cond:
            rnd = self._round
            if rnd is not None and site in rnd.pending:
                rnd.pending.discard(site)
                rnd.failed.append(site)
                log.warning("job=%s round=%d site=%s left the round: its script failed", self.job_id, rnd.number, site)
            newly_left = left and site not in self._left
            if newly_left:
                self._left[site] = reason
                self._live.discard(site)
                self.participants.discard(site)  # its end is not awaited
            self._cond.notify_all()
        if newly_left:
            log.warning("job=%s site=%s left the job", self.job_id, site)
        self._write_progress()

    def get_task(self, site: str, wait: float) -> Task:
        deadline = time.monotonic() + max(0.0, min(wait, 30.0))
        with self._cond:
            while True:
                if self._done:
                    return Task(fedsec_pb2.TASK_STATUS_DONE)
                rnd = self._round
                if rnd is not None and site in rnd.pending:
                    rnd.received.setdefault(site, self._clock())  # its deadline counts from its first receipt
                    return Task(fedsec_pb2.TASK_STATUS_TASK, rnd.kind, rnd.number, rnd.model, rnd.payload)
                left = deadline - time.monotonic()
                if left <= 0:
                    return Task(fedsec_pb2.TASK_STATUS_WAIT)
                self._cond.wait(left)

    def submit(
        self, site: str, header: fedsec_pb2.ResultHeader, chunks: Iterable[bytes | fedsec_pb2.PayloadInfo]
    ) -> tuple[bool, str]:
        """Receive, check and aggregate one site's result; (accepted, reason).

        chunks: the update's bytes, then, for an update streamed as it was made (header.payload_trailer),
        its size and digest (a PayloadInfo).
        """
        where = f"result of {site} for round {header.current_round}"
        with self._cond:
            rnd = self._round
            problem = self._why_not(rnd, site, header)
        if problem or rnd is None:
            log.info("job=%s refused %s: %s", self.job_id, where, problem)
            return False, problem or "no round is open"
        fd, name = tempfile.mkstemp(prefix=f"{site}-", suffix=".fsa", dir=self._ws / "incoming")
        os.close(fd)
        tmp = Path(name)  # one file per submission: two streams from one site never share it
        try:
            weight, params_type = _parse_meta(header.meta_json, where)
            metrics = _check_metrics(dict(header.metrics), where)
            if rnd.fold.updates:  # training; HE fedopt's final evaluation brings the sites' step too
                self._receive_update(rnd, header, chunks, tmp, where)
            elif header.payload.total_size != 0 or header.payload_trailer:
                raise WireError(f"{where}: an evaluation result carries no model")
            with self._cond:
                if self._round is not rnd or site not in rnd.pending:
                    return False, "the round closed before this result was complete"
                if rnd.fold.updates:
                    rnd.fold.add(site, tmp, weight, params_type, where)
                for key, value in metrics.items():
                    rnd.metric_sums[key] = rnd.metric_sums.get(key, 0.0) + weight * value
                    rnd.metric_weights[key] = rnd.metric_weights.get(key, 0.0) + weight
                rnd.site_metrics[site] = metrics
                rnd.pending.discard(site)
                rnd.contributors.append(site)
                self.participants.add(site)
                self._cond.notify_all()
        except TransferInterruptedError as exc:
            # nothing was checked, so nothing is held against the site: it stays pending and may send again
            log.info("job=%s interrupted %s: %s", self.job_id, where, exc)
            return False, f"{exc}; the upload was interrupted: send it again"
        except (WireError, HEError) as exc:
            log.warning("job=%s rejected %s: %s", self.job_id, where, exc)
            with self._cond:  # a bad result uses up the site's turn: the round goes on without it
                rnd.pending.discard(site)
                rnd.rejected.append(site)
                self._cond.notify_all()
            return False, self._refused(rnd.number, site, str(exc).removeprefix(f"{where}: "))
        finally:
            tmp.unlink(missing_ok=True)
        log.info("job=%s round=%d accepted site=%s weight=%g", self.job_id, rnd.number, site, weight)
        return True, ""

    def _receive_update(
        self,
        rnd: _Round,
        header: fedsec_pb2.ResultHeader,
        chunks: Iterable[bytes | fedsec_pb2.PayloadInfo],
        tmp: Path,
        where: str,
    ) -> None:
        """Receive an update into tmp and check it fits the model; WireError (or HEError) naming what does not.

        An update whose size is not the model's is refused from its header alone, naming the tensors
        that differ, before the rest of it is received. An update streamed as it was made (HE) announces
        an upper bound, and its size and digest come in a trailer after the data.
        """
        payload = header.payload
        if payload.total_size == 0:
            raise WireError(f"{where}: a training result carries no model (FLModel.params is empty)")
        if self.codec.sized_by_header and payload.total_size != rnd.payload.total_size:
            raise WireError(f"{where}: {_misfit(iter(chunks), rnd.specs)}")
        with streams.PayloadWriter(tmp, payload, limits.MAX_MODEL_BYTES, where, header.payload_trailer) as writer:
            for chunk in chunks:
                writer.write(chunk)
            writer.finish()
        rnd.fold.check(tmp, where)

    def _refused(self, number: int, site: str, reason: str) -> str:
        """Report to the job's state that site's update of round number was refused; the line for the site.

        The state keeps at most limits.MAX_REFUSALS_PER_ROUND per round and the newest
        limits.MAX_REFUSALS_KEPT in all, each reason cut to limits.MAX_REFUSAL_TEXT characters.
        """
        entry = refusal(number, site, reason)
        self.link.refused(Refusal(number, site, entry["reason"]))
        return refusal_line(entry)

    def _why_not(self, rnd: _Round | None, site: str, header: fedsec_pb2.ResultHeader) -> str:
        if self._done:
            return "the job has ended"
        if rnd is None:
            return "no round is open"
        if header.current_round != rnd.number or header.task != rnd.kind:
            return f"stale result: round {rnd.number} ({rnd.kind}) is open"
        if site not in rnd.sampled:
            return f"{site} is not sampled in round {rnd.number}"
        if site in rnd.failed:
            return f"{site} left round {rnd.number}: its script failed"
        if site not in rnd.pending:
            return f"{site} already answered round {rnd.number}"
        return ""

    # ------------------------------------------------------------ driver side

    def run(self) -> None:
        """Run the remaining rounds; raise JobError when the job cannot go on (a full disk: "server disk full")."""
        started = self.link.wait_started(self.cfg.start_timeout)
        done_rounds = started.completed_rounds
        final = started.final_evaluation if done_rounds >= self.cfg.num_rounds else None
        model = self._checkpoint(done_rounds - 1) if done_rounds else self._initial
        specs = self.codec.update_specs(self.strategy, arrays.read_specs(self._initial, "initial model"))
        if done_rounds:
            log.info("job=%s resuming after round %d", self.job_id, done_rounds - 1)
            self.codec.restore(self.strategy, self._checkpoint(done_rounds - 1), done_rounds - 1)
        if final is not None:  # the sites were told they are done: ask them nothing more
            log.info("job=%s resuming after its final evaluation: the sites are not asked again", self.job_id)
            stepped = self._checkpoint(self.cfg.num_rounds)  # the final evaluation's model (HE fedopt: the sites' step)
            model = stepped if stepped.exists() else model
        elif done_rounds < self.cfg.num_rounds or self.cfg.evaluate_final:
            self._wait_for_sites(self.cfg.start_timeout, "start")
        for number in range(done_rounds, self.cfg.num_rounds):
            rnd = self._run_round(number, TRAIN, model, specs)
            try:
                if rnd.fold.count < self.meta.min_clients:
                    raise JobError(
                        f"round {number}: only {rnd.fold.count} of min_clients={self.meta.min_clients} results "
                        "arrived" + self._left_text("; ")
                    )
                new_model = self._checkpoint(number)
                with _server_writes(f"the checkpoint of round {number}"):
                    rnd.fold.write(model, new_model, number)
                    model = new_model
                    self._record(number, rnd)
            finally:
                rnd.fold.close()
        if self.cfg.evaluate_final and final is None:
            rnd = self._run_round(self.cfg.num_rounds, EVALUATE, model, specs)
            try:
                if rnd.fold.updates:  # the answers bring the final model (HE fedopt: the sites' last step),
                    stepped = self._checkpoint(self.cfg.num_rounds)  # kept before the evaluation is recorded
                    with _server_writes("the final evaluation's model"):
                        rnd.fold.write(model, stepped, self.cfg.num_rounds)
                    model = stepped
            finally:
                rnd.fold.close()
            final = _round_record(rnd, RoundKind.EVALUATE)
            if self.tracker is not None:  # handed over (and kept) before the evaluation counts as recorded
                self.tracker.final_metrics(self.cfg.num_rounds, rnd.metrics(), rnd.site_metrics)
            self.link.round_done(final)
        elif final is not None and self.tracker is not None:  # resumed: handed over before, unless it died first
            self.tracker.final_metrics(self.cfg.num_rounds, dict(final.metrics))
        self.finish()  # the sites are done: their scripts end while the result is kept and tracked
        with _server_writes("the job's result"):
            entry = self._keep(self.cfg.num_rounds - 1, model)
            if self.tracker is not None:
                self.tracker.final_model(self._ws / "result" / entry["model"])

    def keep_last_result(self) -> dict[str, Any] | None:
        """Keep the last completed round's global model as the result (the job was aborted or failed); its entry.

        None when no round completed. Never raises: a result that cannot be written is logged.
        """
        try:
            done = self.link.completed_rounds
            model = self._checkpoint(done - 1)
            if done == 0 or not model.is_file():
                return None
            entry = self.link.kept
            if entry is not None and entry.get("completed_rounds") == done:
                return entry  # kept already
            entry = self._keep(done - 1, model)
        except (OSError, JobError) as exc:
            log.warning("job=%s cannot keep its last global model as its result: %s", self.job_id, exc)
            return None
        log.info("job=%s keeps the global model of round %d as its result", self.job_id, done - 1)
        return entry

    def _keep(self, number: int, model: Path) -> dict[str, Any]:
        entry = result.keep_model(self._ws, number, model)
        self.link.keep(entry)
        return entry

    def sites_taking_part(self) -> set[str]:
        """The sites whose results counted in a round or the final evaluation (this and earlier processes)."""
        counted = self.link.sites_counted()
        with self._cond:
            return counted | self.participants

    def finish(self) -> None:
        with self._cond:
            self._done = True
            self._round = None
            self._cond.notify_all()

    def _wait_for_sites(self, timeout: float, what: str) -> set[str]:
        need = self.meta.min_clients
        deadline = self._clock() + timeout
        with self._cond:
            while len(self._live) < need:
                self._check_remaining()
                left = deadline - self._clock()
                if left <= 0:
                    raise JobError(
                        f"{what}: only {len(self._live)} of min_clients={need} sites connected within {timeout:g} s"
                        + self._left_text("; ")
                    )
                self._cond.wait(min(left, _POLL_SECONDS))
            return set(self._live)

    def _check_remaining(self) -> None:
        """Raise JobError when the sites that left leave fewer than min_clients (call with the lock held)."""
        if not self._left:
            return
        if self.meta.sites:
            pool = set(self.meta.sites)
        else:  # a job open to every site: judged once it had min_clients sites (before, the waits for sites decide)
            pool = self._known | self._live
            if len(pool) < self.meta.min_clients:
                return
        remaining = pool - set(self._left)
        if len(remaining) < self.meta.min_clients:
            raise JobError(
                f"only {len(remaining)} of min_clients={self.meta.min_clients} sites remain" + self._left_text(": ")
            )

    def _left_text(self, lead: str) -> str:
        if not self._left:
            return ""
        return lead + "; ".join(f"{site} left: {_one_line(reason)}" for site, reason in self._left.items())

    def _run_round(self, number: int, kind: str, model: Path, specs: tuple[arrays.TensorSpec, ...]) -> _Round:
        live = sorted(self._wait_for_sites(self.cfg.round_timeout, f"round {number}"))
        if kind == TRAIN:
            k = min(len(live), max(self.meta.min_clients, math.ceil(self.cfg.sample_fraction * len(live))))
            k = self.codec.sample_cap(k)  # an encrypted sum holds at most he.max_clients contributions
            seed = self.job_id if self.cfg.sample_seed is None else self.cfg.sample_seed
            rng = random.Random(f"{seed}:{number}")  # noqa: S311 - sampling, not secrecy
            sampled = frozenset(rng.sample(live, k))
        else:
            sampled = frozenset(live)
        fold = self.codec.fold(self.strategy, specs, final=kind == EVALUATE)
        if kind == TRAIN and model.suffix != ENCRYPTED_SUFFIX:  # what the strategy sends with it (scaffold: c)
            with _server_writes(f"the task of round {number}"):
                model = self.strategy.task_model(model, self._ws / TASK_MODEL)
        rnd = _Round(number, kind, model, specs, streams.describe_file(model), sampled, set(sampled), fold)
        log.info("job=%s round=%d %s sampled=%s", self.job_id, number, kind, ",".join(sorted(sampled)))
        timeout = self.cfg.round_timeout
        with self._cond:
            rnd.opened = self._clock()
            self._round = rnd
            self._cond.notify_all()
            try:
                while True:
                    self._check_remaining()
                    now = self._clock()
                    ends = [rnd.deadline(s, timeout) for s in rnd.pending & self._live]
                    waiting = [end for end in ends if end > now]
                    if not waiting:
                        break
                    self._cond.wait(min(_POLL_SECONDS, min(waiting) - now))
            finally:
                self._round = None
        missing = sorted(rnd.pending)
        if missing:
            log.warning("job=%s round=%d closed without %s", self.job_id, number, ",".join(missing))
        return rnd

    def _record(self, number: int, rnd: _Round) -> None:
        """Record round number as completed. Its metrics go to the tracker first, which keeps them (on disk
        while unwritten): once the round counts as completed, a resumed process never hands them over again."""
        if self.tracker is not None:
            self.tracker.global_metrics(number, rnd.metrics(), rnd.site_metrics)
        self.link.round_done(_round_record(rnd, RoundKind.TRAIN), completed_rounds=number + 1)
        previous = self._checkpoint(number - 2)
        previous.unlink(missing_ok=True)  # keep the last two checkpoints
        codec.state_path(previous).unlink(missing_ok=True)
        log.info("job=%s round=%d done metrics=%s", self.job_id, number, rnd.metrics())

    def _write_progress(self) -> None:
        """Tell the link the sites that left or restarted, as applied here (the parent holds their record)."""
        with self._cond:
            left, failures = dict(self._left), dict(self._failures)
        self.link.note_sites(left, failures)

    def _checkpoint(self, number: int) -> Path:
        return self._ws / "checkpoints" / f"round_{number:05d}{self.codec.suffix}"


FedAvg = RoundDriver  # the driver's name before strategies were split out of it


def _round_record(rnd: _Round, kind: RoundKind) -> RoundRecord:
    """A closed round as the job's state records it (a refused site's reason: the link adds it)."""
    return RoundRecord(
        rnd.number, kind, rnd.sampled, frozenset(rnd.contributors), dict.fromkeys(rnd.rejected, ""),
        frozenset(rnd.failed), rnd.metrics(),
    )  # fmt: skip


def _remove_leftovers(workspace: Path) -> None:
    """Remove what a killed process left: temporary checkpoint files and half-received uploads."""
    leftovers = [*(workspace / "checkpoints").glob(".round_*.tmp"), *(workspace / "incoming").iterdir()]
    for path in leftovers:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if leftovers:
        log.info("removed %d leftover temporary files from an earlier run", len(leftovers))


@contextmanager
def _server_writes(what: str) -> Iterator[None]:
    """Turn a failed write of the server's own files into a JobError whose text says why (a full disk first)."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise JobError(f"server disk full: cannot write {what}: {exc.strerror}") from exc
        raise JobError(f"server cannot write {what}: {exc.strerror or exc}") from exc


def _one_line(text: str, limit: int = 1000) -> str:
    """A site's error text for a job's reason: stripped, its last limit characters."""
    text = text.strip() or "it reported a failure with no error text"
    return text if len(text) <= limit else "..." + text[-limit:]


def refusal(number: int, site: str, reason: str) -> dict[str, Any]:
    """A refused update as the job's progress keeps it: round, site and reason (one line, bounded)."""
    text = " ".join(reason.split())
    if len(text) > limits.MAX_REFUSAL_TEXT:
        text = text[: limits.MAX_REFUSAL_TEXT - 3] + "..."
    return {"round": number, "site": site, "reason": text}


def refusal_line(entry: Mapping[str, Any]) -> str:
    """ "site-2 round 0: update refused: tensor 'w' has shape (9, 1), the model has (8, 1)"."""
    return f"{entry['site']} round {entry['round']}: update refused: {entry['reason']}"


def _misfit(chunks: Iterator[bytes | fedsec_pb2.PayloadInfo], specs: tuple[arrays.TensorSpec, ...]) -> str:
    """Why an update whose size is not the model's does not fit it, in model terms, from its header alone.

    Reads from chunks only the container's prefix and header (bounded by fedsec.limits); the rest is never
    received. Names the tensors that differ; an update whose header agrees says its data does not.
    """
    buffered = bytearray()
    pos = 0

    def read(n: int) -> bytes:
        nonlocal pos
        while len(buffered) - pos < n:
            chunk = next(chunks, None)
            if not isinstance(chunk, bytes):  # the end, or a trailer: no more data
                break
            buffered.extend(chunk)
        out = bytes(buffered[pos : pos + n])
        pos += len(out)
        return out

    try:
        got = arrays.read_header(read, "the update")
    except WireError as exc:
        return f"{exc} (not a model in fedsec's array format)"
    found = arrays.differences(got, specs)
    if not found:
        return "the update's tensors match the model, but its data does not match its own header"
    text = "; ".join(found[: arrays.MAX_DIFFERENCES])
    more = len(found) - arrays.MAX_DIFFERENCES
    return text + (f"; and {more} more differences" if more > 0 else "")


def _parse_meta(text: str, where: str) -> tuple[float, str]:
    meta = _schema.parse_json(text or "{}", f"{where}: meta", limit=limits.MAX_META_JSON_BYTES, error=WireError)
    if not isinstance(meta, dict):
        raise WireError(f"{where}: meta is not a JSON object")
    weight = meta.get("num_examples", 1)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight <= _MAX_WEIGHT:
        raise WireError(f"{where}: num_examples must be a positive number, got {weight!r}")
    params_type = meta.get("params_type", "full")
    if params_type not in _PARAMS_TYPES:
        raise WireError(f"{where}: params_type must be one of {', '.join(_PARAMS_TYPES)}")
    return float(weight), str(params_type)


def _check_metrics(metrics: dict[str, float], where: str) -> dict[str, float]:
    if len(metrics) > limits.MAX_METRICS:
        raise WireError(f"{where}: more than {limits.MAX_METRICS} metrics")
    for key, value in metrics.items():
        if len(key) > limits.MAX_TENSOR_NAME or not math.isfinite(value):
            raise WireError(f"{where}: metric {key[:40]!r} is not a finite number with a short name")
    return metrics
