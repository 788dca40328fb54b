"""Session: the admin Python API over the server's admin port.

A Session opens a mutual-TLS channel with the admin kit's certificate, logs
in by signing a fresh server challenge with the kit's key, and sends the
session token with every call; when the server says the session expired it
logs in again once and retries. A kit that lists several replicas of the
server uses one at a time: a call that finds it unreachable (or a standby)
moves to the next endpoint in the kit's order, logs in there and is made
again, until every endpoint was tried once; then UnreachableError names them all.

Jobs are signed with the kit's key before upload, each for one run: the
session picks the new job's id and submit time and signs them with the archive
(fedsec.jobs.signing); cloning a job signs the stored archive's digest again,
after checking the stored job's own signature.
Results are downloaded into DEST/<job id> (DEST: the kit's transfer/ folder by
default) through a staging folder in DEST, a plain job's final model also as
global_model.safetensors (fedsec.wire.model_file); every id and file name the server
returns is checked before it names a path, and nothing the session did not
create is ever deleted or replaced.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from fedsec import _fs, limits
from fedsec.errors import (
    ConfigError,
    FedsecError,
    JobError,
    KitError,
    SessionExpiredError,
    UnreachableError,
    WireError,
)
from fedsec.jobs import load_job_folder, pack, unpack
from fedsec.jobs.signing import (
    JobSignature,
    check_job_id,
    new_job_id,
    sign_archive,
    sign_digest,
    verify_digest,
)
from fedsec.kit import AdminConfig, load_kit, read_ca
from fedsec.pki import certs, login
from fedsec.transport.failover import Endpoints, address, unreachable
from fedsec.transport.tls import channel, error_from_rpc
from fedsec.wire import fedsec_pb2, fedsec_pb2_grpc, streams

log = logging.getLogger(__name__)

FINISHED_PREFIX = "finished:"
SESSION_HEADER = "fedsec-session"
ALL_SITES = "*"  # get_job_log target: every site's reported error (no site can be named so)
Progress = Callable[[int, int], None]  # (bytes done, total)
QUIET_SECONDS = 10.0  # monitor_job calls its callback at least this often, even when nothing changed
PROBE_SECONDS = 5.0  # after waiting for the server in vain, how long one call may take to tell down from slow
ROUND_PAUSE_SECONDS = 0.5  # with several endpoints and wait_for_server: the pause before trying them all again
SITES_POLL_SECONDS = 5.0  # while a job waits for sites, monitor_job asks for the site list at most this often
SERVER_LOG = "_server.log"  # download_job_log: the server's log of the job, beside <site>.log files
FOLLOW_END_SECONDS = 15.0  # after a job's end, how long a followed log waits for a site that never completes its log


@dataclass(frozen=True)
class SiteWait:
    """The sites a job waits for before its first round: fewer than min_clients of its sites are connected."""

    needed: int  # the job's min_clients
    expected: tuple[str, ...]  # the sites the job names; () for any site
    connected: tuple[str, ...]  # connected sites the job may use, sorted

    @property
    def missing(self) -> tuple[str, ...]:
        """The sites the job names that are not connected (() when it names none)."""
        return tuple(s for s in self.expected if s not in self.connected)

    def line(self) -> str:
        """ "waiting for sites: 2 of 3 connected, site-3 missing"."""
        total = len(self.expected) or self.needed
        text = f"waiting for sites: {len(self.connected)} of {total} connected"
        if self.missing:
            text += f", {', '.join(self.missing)} missing"
        elif self.connected:
            text += f" ({', '.join(self.connected)})"
        if total != self.needed:
            text += f"; the job starts with {self.needed}"
        return text


def site_wait(meta: dict[str, Any], clients: Sequence[dict[str, Any]]) -> SiteWait | None:
    """What a job with this meta still waits for, given list_clients; None when enough sites are connected."""
    listed = meta.get("sites")
    expected = tuple(str(s) for s in listed) if isinstance(listed, list) else ()
    wanted = meta.get("min_clients")
    needed = wanted if isinstance(wanted, int) and wanted > 0 else 1
    connected = tuple(
        sorted(
            str(c.get("name"))
            for c in clients
            if c.get("alive") and not c.get("removed") and (not expected or c.get("name") in expected)
        )
    )
    if len(connected) >= needed:
        return None
    return SiteWait(needed, expected, connected)


@dataclass(frozen=True)
class JobInfo:
    """A job as the server reports it."""

    job_id: str
    name: str
    status: str
    submitter: str
    submitter_org: str
    submit_time: float
    start_time: float | None
    end_time: float | None
    reason: str
    current_round: int
    num_rounds: int
    meta: dict[str, Any]
    progress: dict[str, Any]
    waiting: SiteWait | None = None  # set by monitor_job before the first round: the sites still missing

    @property
    def finished(self) -> bool:
        return self.status.startswith(FINISHED_PREFIX)

    @property
    def refusals(self) -> list[str]:
        """The refused updates the server kept, oldest first, one line each:

        "site-2 round 0: update refused: tensor 'w' has shape (9, 1), the model has (8, 1)".
        """
        entries = self.progress.get("refused")
        return [refusal_line(e) for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def refusal_line(entry: dict[str, Any]) -> str:
    """One refused update of a job's progress as a line (the format the server's reply to the site has too)."""
    return f"{entry.get('site', '?')} round {entry.get('round', '?')}: update refused: {entry.get('reason', '')}"


def _info(msg: fedsec_pb2.JobInfo) -> JobInfo:
    return JobInfo(
        job_id=msg.job_id,
        name=msg.name,
        status=msg.status,
        submitter=msg.submitter,
        submitter_org=msg.submitter_org,
        submit_time=msg.submit_time,
        start_time=msg.start_time or None,
        end_time=msg.end_time or None,
        reason=msg.reason,
        current_round=msg.current_round,
        num_rounds=msg.num_rounds,
        meta=json.loads(msg.meta_json) if msg.meta_json else {},
        progress=json.loads(msg.progress_json) if msg.progress_json else {},
    )


class Session:
    """An admin's connection to the server. Use it in a `with` block."""

    def __init__(self, kit_dir: str | Path, *, timeout: float = 30.0) -> None:
        kit = load_kit(Path(kit_dir))
        if kit.kind is not certs.Kind.ADMIN or not isinstance(kit.config, AdminConfig):
            raise KitError(f"kit {kit.name}: is a {kit.kind.value} kit, not an admin kit")
        self.kit = kit
        self.config: AdminConfig = kit.config
        self.admin = kit.name
        self.role = kit.config.role
        self.on_relogin: Callable[[], None] | None = None
        self.on_failover: Callable[[str, str], None] | None = None  # (the address left, the one used now)
        self._timeout = timeout
        self._key = certs.load_key(kit.key_path.read_bytes(), f"kit {kit.name}: key")
        self._cert_pem = kit.cert_path.read_bytes()
        self._root_ca = read_ca(kit)
        self._endpoints = Endpoints(kit.config.endpoints)
        self._channels: dict[int, grpc.Channel] = {}  # by endpoint index; kept until close()
        self.server_address = ""
        self._stub: fedsec_pb2_grpc.AdminStub
        self._use(0)
        self._token = ""

    def _use(self, index: int) -> None:
        """Send every later call to endpoint index: the one place the session's server is chosen."""
        end = self._endpoints.all[index]
        if index not in self._channels:
            self._channels[index] = channel(self.kit, end.host, end.port, end.name)
        self.server_address = address(end)
        self._stub = fedsec_pb2_grpc.AdminStub(self._channels[index])

    def _next_endpoint(self, tried: list[str]) -> bool:
        """Note the endpoint in use as unreachable and move to the next; False when that one was tried already."""
        left = self.server_address
        tried.append(left)
        self._endpoints.advance(self._endpoints.index)
        self._use(self._endpoints.index)
        if self.server_address != left:
            self._token = ""  # a login belongs to the replica that granted it
        if self.server_address in tried:
            return False
        log.info("the server at %s does not answer; trying %s", left, self.server_address)
        if self.on_failover is not None:
            self.on_failover(left, self.server_address)
        return True

    def _unreachable(self, tried: list[str], err: FedsecError) -> FedsecError:
        """What a call that reached no endpoint raises: err itself for a kit of one endpoint."""
        return unreachable(tried) if len(self._endpoints) > 1 else err

    def __enter__(self) -> Session:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        for opened in self._channels.values():
            opened.close()

    # ------------------------------------------------------------ login and calls

    def login(self, *, wait_for_server: bool = False) -> None:
        """Log in with a fresh challenge signed by the kit's key, at the endpoint in use or else the next ones.

        Raises AuthError when refused, UnreachableError naming every endpoint tried when none answers.
        """
        tried: list[str] = []
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                return self._login_here(self._waits(wait_for_server))
            except UnreachableError as exc:
                if not self._next_endpoint(tried) and not self._round_again(tried, wait_for_server, deadline):
                    raise self._unreachable(tried, exc) from exc

    def _waits(self, wait_for_server: bool) -> bool:
        """Whether a call waits for its server to come up: only with one endpoint; with several a
        server that does not answer is skipped at once and the ring tried again (_round_again)."""
        return wait_for_server and len(self._endpoints) == 1

    def _round_again(self, tried: list[str], wait_for_server: bool, deadline: float) -> bool:
        """With wait_for_server and several endpoints, before the deadline: pause, then try every endpoint again."""
        if not wait_for_server or len(self._endpoints) == 1 or time.monotonic() + ROUND_PAUSE_SECONDS > deadline:
            return False
        time.sleep(ROUND_PAUSE_SECONDS)  # a standby is taking the lease over: it answers within lease_ttl
        tried.clear()
        return True

    def _login_here(self, wait_for_server: bool) -> None:
        try:
            challenge = self._stub.GetChallenge(
                fedsec_pb2.Empty(), timeout=self._timeout, wait_for_ready=wait_for_server
            )
            signature = login.sign_login(self._key, challenge.nonce, self._endpoints.current.name, self.admin)
            reply = self._stub.Login(
                fedsec_pb2.LoginRequest(nonce=challenge.nonce, signature=signature), timeout=self._timeout
            )
        except grpc.RpcError as exc:
            raise self._error(exc, "login", waited=wait_for_server) from exc
        self._token = reply.token
        log.info("logged in as %s (%s)", reply.admin, reply.role)

    def _call(self, what: str, fn: Callable[[list[tuple[str, str]]], Any], *, wait_for_server: bool = False) -> Any:
        """Run fn(metadata), logging in first or again when needed, at the next endpoint when unreachable."""
        relogged = False
        tried: list[str] = []
        deadline = time.monotonic() + self._timeout
        while True:
            if not self._token:
                self.login(wait_for_server=wait_for_server)
            try:
                return fn([(SESSION_HEADER, self._token)])
            except grpc.RpcError as exc:
                err = self._error(exc, what, waited=self._waits(wait_for_server))
                if isinstance(err, SessionExpiredError) and not relogged:
                    relogged = True
                    self._token = ""
                    self.login(wait_for_server=wait_for_server)
                    if self.on_relogin is not None:
                        self.on_relogin()
                    continue
                if isinstance(err, UnreachableError):
                    if self._next_endpoint(tried) or self._round_again(tried, wait_for_server, deadline):
                        continue
                    raise self._unreachable(tried, err) from exc
                raise err from exc

    def _error(self, exc: grpc.RpcError, what: str, *, waited: bool) -> FedsecError:
        """The fedsec error for a failed call; a call that waited for the server in vain says it is unreachable.

        A call made with wait_for_ready ends DEADLINE_EXCEEDED whether the server is down
        or slow: one short call without waiting (PROBE_SECONDS) tells them apart.
        """
        err = error_from_rpc(exc, what, self.server_address)
        if not waited or not isinstance(exc, grpc.Call) or exc.code() is not grpc.StatusCode.DEADLINE_EXCEEDED:
            return err
        try:
            self._stub.GetChallenge(fedsec_pb2.Empty(), timeout=PROBE_SECONDS)
        except grpc.RpcError as probe:
            probed = error_from_rpc(probe, what, self.server_address)
            if isinstance(probed, UnreachableError):
                return probed
        return err

    def _text(self, what: str, rpc: str, request: Any) -> Any:
        """Call the Admin method named rpc, which answers a TextReply, on the stub in use when each try is made."""
        reply = self._call(what, lambda md: getattr(self._stub, rpc)(request, timeout=self._timeout, metadata=md))
        return json.loads(reply.text)

    # ------------------------------------------------------------ jobs

    def submit_job(self, folder: str | Path, progress: Progress | None = None) -> str:
        """Check, sign and upload a job folder; return the new job's id (chosen and signed here).

        Raises JobError for a bad folder, WireError when the server files the job under another id.
        """
        folder = Path(folder)
        load_job_folder(folder)  # clear local errors before anything is sent
        data = pack(folder)
        if len(data) > limits.MAX_JOB_ARCHIVE_BYTES:
            raise JobError(f"job folder {folder}: {len(data)} bytes zipped, over {limits.MAX_JOB_ARCHIVE_BYTES}")
        job_id = new_job_id()
        sig = sign_archive(data, self._key, self._cert_pem, job_id=job_id, submit_time=int(time.time()))
        signature = _signature_proto(sig)

        def parts() -> Iterator[fedsec_pb2.SubmitPart]:
            yield fedsec_pb2.SubmitPart(info=streams.describe_bytes(data), signature=signature)
            sent = 0
            for chunk in streams.bytes_chunks(data):
                yield fedsec_pb2.SubmitPart(data=chunk)
                sent += len(chunk)
                if progress is not None:
                    progress(sent, len(data))

        timeout = max(self._timeout, 120)
        reply = self._call("submit_job", lambda md: self._stub.SubmitJob(parts(), timeout=timeout, metadata=md))
        return _same_job(reply.job_id, job_id)

    def list_jobs(
        self,
        name_prefix: str = "",
        id_prefix: str = "",
        max_results: int = 0,
        *,
        mine: bool = False,
        reverse: bool = False,
    ) -> list[JobInfo]:
        """Jobs newest first (oldest first with reverse); mine: only those this admin submitted."""
        request = fedsec_pb2.ListJobsRequest(name_prefix=name_prefix, id_prefix=id_prefix, max_results=max_results)
        reply = self._call("list_jobs", lambda md: self._stub.ListJobs(request, timeout=self._timeout, metadata=md))
        jobs = [_info(j) for j in reply.jobs]
        if mine:
            jobs = [j for j in jobs if j.submitter == self.admin]
        return jobs[::-1] if reverse else jobs

    def get_job_meta(self, job_id: str, *, wait_for_server: bool = False) -> JobInfo:
        """The job's record and progress; with wait_for_server, wait out a server restart (up to the timeout)."""
        return self._meta(job_id, "get_job_meta", wait_for_server=wait_for_server)

    def _meta(self, job_id: str, what: str, *, wait_for_server: bool = False) -> JobInfo:
        """get_job_meta for the command `what`, which its errors name."""
        ref = fedsec_pb2.JobRef(job_id=job_id)

        def call(md: list[tuple[str, str]]) -> fedsec_pb2.JobInfo:
            reply: fedsec_pb2.JobInfo = self._stub.GetJobMeta(
                ref, timeout=self._timeout, metadata=md, wait_for_ready=self._waits(wait_for_server)
            )
            return reply

        return _info(self._call(what, call, wait_for_server=wait_for_server))

    def abort_job(self, job_id: str) -> JobInfo:
        ref = fedsec_pb2.JobRef(job_id=job_id)
        return _info(self._call("abort_job", lambda md: self._stub.AbortJob(ref, timeout=self._timeout, metadata=md)))

    def clone_job(self, job_id: str) -> str:
        """Submit a copy of a stored job, signed by this admin as a new job; return the new job's id.

        The stored job's own signature is checked first, so this admin signs only an
        archive that an admin of the project signed. Raises AuthError when it does not
        verify (or is of the old format: submit the folder again), WireError when the
        server answers with another job.
        """
        ref = fedsec_pb2.JobRef(job_id=job_id)
        info = self._call("clone_job", lambda md: self._stub.GetJobArchiveInfo(ref, timeout=self._timeout, metadata=md))
        old_id = _server_job_id(info.job_id, job_id)
        original = _signature(info.signature)
        verify_digest(info.archive_sha256, original, self._root_ca, f"job {old_id}", job_id=old_id)
        new_id = new_job_id()
        sig = sign_digest(info.archive_sha256, self._key, self._cert_pem, job_id=new_id, submit_time=int(time.time()))
        request = fedsec_pb2.CloneRequest(job_id=old_id, signature=_signature_proto(sig))
        reply = self._call("clone_job", lambda md: self._stub.CloneJob(request, timeout=self._timeout, metadata=md))
        return _same_job(reply.job_id, new_id)

    def delete_job(self, job_id: str) -> None:
        ref = fedsec_pb2.JobRef(job_id=job_id)
        self._call("delete_job", lambda md: self._stub.DeleteJob(ref, timeout=self._timeout, metadata=md))

    def monitor_job(
        self,
        job_id: str,
        callback: Callable[[JobInfo], None] | None = None,
        *,
        timeout: float | None = None,
        poll: float = 1.0,
        quiet: float = QUIET_SECONDS,
    ) -> JobInfo:
        """Follow a job until it has finished; return its last JobInfo. Raises JobError on timeout.

        callback is called on every change, and at least every `quiet` seconds while
        nothing changes, so that a follower can say what the job waits for. Until the
        job's first round has completed, the JobInfo passed carries `waiting`: the
        sites it still needs (None once enough are connected), from list_clients.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        last: tuple[Any, ...] | None = None
        called = time.monotonic()
        clients: list[dict[str, Any]] = []
        clients_at: float | None = None
        while True:
            info = self.get_job_meta(job_id, wait_for_server=True)
            now = time.monotonic()
            if callback is not None and not info.finished and not info.progress.get("rounds"):
                if clients_at is None or now - clients_at >= SITES_POLL_SECONDS:
                    clients, clients_at = self.list_clients(), now
                info = dataclasses.replace(info, waiting=site_wait(info.meta, clients))
            key = (info.status, info.current_round, json.dumps(info.progress, sort_keys=True), info.waiting)
            if callback is not None and (key != last or now - called >= quiet):
                callback(info)
                called = now
            last = key
            if info.finished:
                return info
            if deadline is not None and time.monotonic() > deadline:
                raise JobError(f"job {job_id}: still {info.status} after {timeout} s")
            time.sleep(poll)

    def wait_for_job(self, job_id: str, timeout: float | None = None, poll: float = 1.0) -> JobInfo:
        return self.monitor_job(job_id, None, timeout=timeout, poll=poll)

    def download_job_result(
        self, job_id: str, dest: str | Path | None = None, progress: Progress | None = None
    ) -> Path:
        """Download a finished job's result folder into dest/<job id>; return that folder.

        dest defaults to the kit's transfer/ folder and is created if missing. The
        result is unpacked in a staging folder inside dest and renamed into place.
        Raises JobError when dest/<job id> exists already (nothing is replaced: move
        or delete it first) or the result's file names are unsafe, WireError when the
        server answers with something that is not the job asked for.
        """
        info = self._meta(job_id, "download_job")
        found = _server_job_id(info.job_id, job_id)
        folder = Path(dest) if dest is not None else self.kit.root / "transfer"
        target = folder / found
        if target.exists() or target.is_symlink():
            raise JobError(f"download job {found}: {target} exists already; move or delete it first")
        ref = fedsec_pb2.JobRef(job_id=found)

        def fetch(md: list[tuple[str, str]]) -> bytes:
            parts = self._stub.DownloadJob(ref, timeout=max(self._timeout, 300), metadata=md)
            first = next(parts)
            if first.WhichOneof("part") != "info":
                raise FedsecError("download did not start with its size")
            total = first.info.total_size

            def data() -> Iterator[bytes]:
                got = 0
                for part in parts:
                    got += len(part.data)
                    if progress is not None:
                        progress(got, total)
                    yield part.data

            return streams.receive_bytes(data(), first.info, limits.MAX_JOB_ARCHIVE_BYTES, "job result")

        archive: bytes = self._call("download_job", fetch)
        _unpack_result(archive, folder, target)
        return target

    def show_stats(self, job_id: str) -> dict[str, Any]:
        info = self._meta(job_id, "show_stats")
        return {
            **info.progress,
            "status": info.status,
            "current_round": info.current_round,
            "num_rounds": info.num_rounds,
        }

    def show_errors(self, job_id: str) -> dict[str, Any]:
        """The job's failure reason, each site's reported error, and the updates the server refused.

        {"reason": str, "sites": {site: error}, "refused": ["site-2 round 0: update refused: ...", ...]}
        """
        info = self._meta(job_id, "show_errors")
        request = fedsec_pb2.TargetRequest(job_id=info.job_id, target=ALL_SITES)
        sites: dict[str, str] = self._text("show_errors", "GetJobLog", request)["errors"]
        return {"reason": info.reason, "sites": sites, "refused": info.refusals}

    def get_job_log(self, job_id: str, target: str = "server") -> str:
        """The end of a job's log on the server (target "server") or on a site, as far as the site has sent it.

        A site sends its log while the job's script runs, and the rest when it ends, fails or is aborted.
        Raises JobError when the site has sent nothing yet, AuthError without the right (download_job).
        """
        request = fedsec_pb2.TargetRequest(job_id=job_id, target=target)
        return str(self._text("get_job_log", "GetJobLog", request)["log"])

    def tail_job_log(
        self, job_id: str, site: str | None = None, follow: bool = False, *, poll: float = 1.0
    ) -> Generator[str, None, None]:
        """The last lines of the sites' logs of a job, then, with follow, each new line as the sites send it.

        A generator of lines (without their newline): one site's as written, or, with site None,
        every site's, each line "site-1: ...". Following ends once the job has ended and each
        site's log is complete (a site that never completes it: FOLLOW_END_SECONDS after the
        end); close the generator, or press Ctrl-C, to stop sooner. Raises JobError when there
        is no such job, AuthError without the right to its logs (download_job, as get_job_log).
        """
        for piece in self._log_pieces("tail_job_log", job_id, site, follow=follow, from_start=False, poll=poll):
            for line in piece.text.splitlines():
                yield line if site else f"{piece.site}: {line}"

    def download_job_log(
        self, job_id: str, dest: str | Path | None = None, *, follow: bool = False, poll: float = 1.0
    ) -> Path:
        """Write each site's whole log of a job (as far as the server keeps it) to dest/<job id>.logs/<site>.log.

        With follow, go on appending what the sites send until the job has ended (as tail_job_log);
        the server's log of the job is written last, as _server.log (no site name starts with '_').
        dest defaults to the kit's transfer/ folder. Raises JobError when the folder exists already
        (nothing is replaced) or a site name the server sent is not a safe file name.
        """
        info = self._meta(job_id, "download_job_log")
        found = _server_job_id(info.job_id, job_id)
        folder = (Path(dest) if dest is not None else self.kit.root / "transfer") / f"{found}.logs"
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            folder.mkdir(mode=0o700)
        except FileExistsError as exc:
            raise JobError(f"download_job_log {found}: {folder} exists already; move or delete it first") from exc
        except OSError as exc:
            raise JobError(f"download_job_log {found}: cannot create {folder}: {exc.strerror or exc}") from exc
        try:
            for piece in self._log_pieces("download_job_log", found, None, follow=follow, from_start=True, poll=poll):
                name = _fs.check_name("site", piece.site)
                with (folder / f"{name}.log").open("a", encoding="utf-8") as f:
                    f.write(piece.text)
            server_log = self.get_job_log(found, "server")
            (folder / SERVER_LOG).write_text(server_log, encoding="utf-8")
        except ConfigError as exc:
            raise JobError(f"download_job_log {found}: the server sent {exc}") from exc
        except OSError as exc:
            raise JobError(f"download_job_log {found}: cannot write in {folder}: {exc.strerror or exc}") from exc
        return folder

    def _tail_call(self, request: fedsec_pb2.LogTailRequest) -> Callable[[list[tuple[str, str]]], Any]:
        return lambda md: self._stub.TailJobLog(request, timeout=self._timeout, metadata=md)

    def _log_pieces(
        self, what: str, job_id: str, site: str | None, *, follow: bool, from_start: bool, poll: float
    ) -> Iterator[fedsec_pb2.LogText]:
        """The TailJobLog replies' pieces with text, read from the cursors they return (see tail_job_log)."""
        cursors: dict[str, int] = {}
        again = False
        ended_at: float | None = None
        while True:
            request = fedsec_pb2.LogTailRequest(
                job_id=job_id, site=site or "", from_start=from_start, again=again,
                cursors=[fedsec_pb2.LogCursor(site=k, offset=v) for k, v in cursors.items()],
            )  # fmt: skip
            reply: fedsec_pb2.LogTail = self._call(what, self._tail_call(request))
            again = True
            more = False
            for piece in reply.logs:
                cursors[piece.site] = piece.offset
                more |= piece.more
                if piece.text:
                    yield piece
            if more:
                continue
            if not follow:
                return
            if reply.status.startswith(FINISHED_PREFIX):
                ended_at = ended_at if ended_at is not None else time.monotonic()
                complete = all(p.closed or p.full for p in reply.logs)
                if complete or time.monotonic() - ended_at > FOLLOW_END_SECONDS:
                    return
            time.sleep(poll)

    # ------------------------------------------------------------ sites and the server

    def check_status(self, target: str, sites: Sequence[str] = ()) -> dict[str, Any]:
        request = fedsec_pb2.TargetRequest(target=target, sites=list(sites))
        result: dict[str, Any] = self._text("check_status", "CheckStatus", request)
        return result

    def list_clients(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._text("list_clients", "ListClients", fedsec_pb2.Empty())
        return result

    def remove_client(self, site: str) -> None:
        ref = fedsec_pb2.SiteRef(site=site)
        self._call("remove_client", lambda md: self._stub.RemoveClient(ref, timeout=self._timeout, metadata=md))

    def enable_client(self, site: str) -> None:
        ref = fedsec_pb2.SiteRef(site=site)
        self._call("enable_client", lambda md: self._stub.EnableClient(ref, timeout=self._timeout, metadata=md))

    def sys_info(self, target: str = "server") -> dict[str, Any]:
        result: dict[str, Any] = self._text("sys_info", "SysInfo", fedsec_pb2.TargetRequest(target=target))
        return result

    def shutdown(self, target: str, sites: Sequence[str] = ()) -> dict[str, Any]:
        request = fedsec_pb2.TargetRequest(target=target, sites=list(sites))
        result: dict[str, Any] = self._text("shutdown", "Shutdown", request)
        return result

    def version(self) -> dict[str, Any]:
        result: dict[str, Any] = self._text("version", "Version", fedsec_pb2.Empty())
        return result

    def show_audit(self, max_results: int = 50) -> list[dict[str, Any]]:
        request = fedsec_pb2.TargetRequest(max_results=max_results)
        result: list[dict[str, Any]] = self._text("show_audit", "ShowAudit", request)
        return result


def _unpack_result(archive: bytes, folder: Path, target: Path) -> None:
    """Unpack a result into target (which must not exist) with its model also as safetensors; all or nothing.

    A plain job's global_model.fsa gets a global_model.safetensors beside it, the file users open
    (fedsec.load_model, or safetensors alone). Raises JobError when target exists or a name is unsafe,
    WireError when the model is not a valid container.
    """
    from fedsec.wire import model_file  # numpy: only when there is a result to convert

    try:
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.download-", dir=folder))
    except OSError as exc:
        raise JobError(f"download job {target.name}: cannot create {folder}: {exc.strerror or exc}") from exc
    try:
        unpack(archive, staging / target.name)  # checks every name
        model = staging / target.name / f"{model_file.GLOBAL_MODEL}{model_file.CONTAINER_SUFFIX}"
        if model.is_file():
            model_file.container_to_safetensors(model, model.with_suffix(model_file.SAFETENSORS_SUFFIX))
        if target.exists() or target.is_symlink():
            raise JobError(f"download job {target.name}: {target} exists already; move or delete it first")
        (staging / target.name).rename(target)
    except OSError as exc:
        raise JobError(f"download job {target.name}: cannot write {target}: {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _server_job_id(returned: str, asked: str) -> str:
    """The job id the server returned, if it is a job id and the job asked for (asked may be a prefix)."""
    try:
        found = check_job_id(returned, "the server's job id")
    except JobError as exc:
        raise WireError(f"job {asked[:40]!r}: {exc}") from exc
    if not found.startswith(asked.lower()):
        raise WireError(f"job {asked[:40]!r}: the server answered with another job, {found}")
    return found


def _same_job(returned: str, signed: str) -> str:
    if returned != signed:
        raise WireError(f"the server filed job {signed} as {returned[:40]!r}, not under its signed job id")
    return signed


def _signature(msg: fedsec_pb2.JobSignature) -> JobSignature:
    return JobSignature(msg.signature, msg.signer_cert, msg.job_id, msg.submit_time)


def _signature_proto(sig: JobSignature) -> fedsec_pb2.JobSignature:
    return fedsec_pb2.JobSignature(
        signature=sig.signature, signer_cert=sig.signer_cert, job_id=sig.job_id, submit_time=sig.submit_time
    )
