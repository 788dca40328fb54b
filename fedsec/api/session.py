"""Session: submit, list, follow, abort and download jobs as an admin.

A Session opens a mutual-TLS channel to the server's admin port with the
admin kit's certificate; the server knows the admin only from it. Job
results are downloaded into the kit's transfer/ folder.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from fedsec import limits
from fedsec.errors import FedsecError, JobError, KitError
from fedsec.jobs import load_job_folder, pack, unpack
from fedsec.kit import AdminConfig, load_kit
from fedsec.pki.certs import Kind
from fedsec.transport.tls import channel, error_from_rpc
from fedsec.wire import fedsec_pb2, fedsec_pb2_grpc, streams

log = logging.getLogger(__name__)

FINISHED_PREFIX = "finished:"


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

    @property
    def finished(self) -> bool:
        return self.status.startswith(FINISHED_PREFIX)


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
        if kit.kind is not Kind.ADMIN or not isinstance(kit.config, AdminConfig):
            raise KitError(f"kit {kit.name}: is a {kit.kind.value} kit, not an admin kit")
        self.kit = kit
        self._timeout = timeout
        server = kit.config.server
        self._channel = channel(kit, server.host, server.port, server.name)
        self._stub = fedsec_pb2_grpc.AdminStub(self._channel)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, what) from exc

    def submit_job(self, folder: str | Path) -> str:
        """Check and upload a job folder; return the new job's id. Raises JobError for a bad folder."""
        folder = Path(folder)
        load_job_folder(folder)  # clear local errors before anything is sent
        data = pack(folder)
        if len(data) > limits.MAX_JOB_ARCHIVE_BYTES:
            raise JobError(f"job folder {folder}: {len(data)} bytes zipped, over {limits.MAX_JOB_ARCHIVE_BYTES}")

        def parts() -> Iterator[fedsec_pb2.SubmitPart]:
            yield fedsec_pb2.SubmitPart(info=streams.describe_bytes(data))
            for chunk in streams.bytes_chunks(data):
                yield fedsec_pb2.SubmitPart(data=chunk)

        reply = self._call("submit_job", lambda: self._stub.SubmitJob(parts(), timeout=max(self._timeout, 120)))
        return str(reply.job_id)

    def list_jobs(self, name_prefix: str = "", id_prefix: str = "", max_results: int = 0) -> list[JobInfo]:
        request = fedsec_pb2.ListJobsRequest(name_prefix=name_prefix, id_prefix=id_prefix, max_results=max_results)
        reply = self._call("list_jobs", lambda: self._stub.ListJobs(request, timeout=self._timeout))
        return [_info(j) for j in reply.jobs]

    def get_job_meta(self, job_id: str, *, wait_for_server: bool = False) -> JobInfo:
        """The job's record and progress; with wait_for_server, wait out a server restart (up to the timeout)."""
        ref = fedsec_pb2.JobRef(job_id=job_id)
        call = lambda: self._stub.GetJobMeta(ref, timeout=self._timeout, wait_for_ready=wait_for_server)  # noqa: E731
        return _info(self._call("get_job_meta", call))

    def abort_job(self, job_id: str) -> JobInfo:
        ref = fedsec_pb2.JobRef(job_id=job_id)
        return _info(self._call("abort_job", lambda: self._stub.AbortJob(ref, timeout=self._timeout)))

    def monitor_job(
        self,
        job_id: str,
        callback: Callable[[JobInfo], None] | None = None,
        *,
        timeout: float | None = None,
        poll: float = 1.0,
    ) -> JobInfo:
        """Follow a job until it has finished; call callback on every change. Raises JobError on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last: tuple[str, int, str] | None = None
        while True:
            info = self.get_job_meta(job_id, wait_for_server=True)
            key = (info.status, info.current_round, json.dumps(info.progress, sort_keys=True))
            if key != last and callback is not None:
                callback(info)
            last = key
            if info.finished:
                return info
            if deadline is not None and time.monotonic() > deadline:
                raise JobError(f"job {job_id}: still {info.status} after {timeout} s")
            time.sleep(poll)

    def wait_for_job(self, job_id: str, timeout: float | None = None, poll: float = 1.0) -> JobInfo:
        return self.monitor_job(job_id, None, timeout=timeout, poll=poll)

    def download_job_result(self, job_id: str, dest: str | Path | None = None) -> Path:
        """Download a finished job's result folder into dest (default: the kit's transfer/<job_id>)."""
        info = self.get_job_meta(job_id)
        target = Path(dest) if dest is not None else self.kit.root / "transfer" / info.job_id
        ref = fedsec_pb2.JobRef(job_id=info.job_id)

        def fetch() -> bytes:
            parts = self._stub.DownloadJob(ref, timeout=max(self._timeout, 300))
            first = next(parts)
            if first.WhichOneof("part") != "info":
                raise FedsecError("download did not start with its size")
            data = (p.data for p in parts)
            return streams.receive_bytes(data, first.info, limits.MAX_JOB_ARCHIVE_BYTES, "job result")

        archive: bytes = self._call("download_job", fetch)
        if target.exists():
            shutil.rmtree(target)
        unpack(archive, target)
        return target
