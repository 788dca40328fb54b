"""Session against a fake server stub: what it signs, and what it does with the ids and files a server returns."""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedsec.api import Session
from fedsec.errors import AuthError, JobError, WireError
from fedsec.jobs import pack
from fedsec.jobs.signing import JobSignature, new_job_id, sign_archive, verify_archive
from fedsec.kit import load_kit, read_ca
from fedsec.pki import certs
from fedsec.wire import fedsec_pb2, streams
from tests.unit.jobs.test_meta import write_job

ADMIN = "admin@acme.org"
JOB = "0b5d4c3e-6f7a-4b8c-9d0e-1f2a3b4c5d6e"


def _zip(entries: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return out.getvalue()


RESULT = _zip({"job.json": b"{}", "models/global.bin": b"weights", "workflow.log": b"log"})


class FakeStub:
    """The server side of the calls under test; every request is kept in calls."""

    def __init__(self, job_id: str = JOB, result: bytes = RESULT) -> None:
        self.job_id = job_id
        self.result = result
        self.calls: list[tuple[str, Any]] = []
        self.archive_info: fedsec_pb2.JobArchiveInfo | None = None
        self.reply_id: str | None = None  # the id the server answers a submission with (None: the signed one)

    def GetJobMeta(self, ref: fedsec_pb2.JobRef, **_: Any) -> fedsec_pb2.JobInfo:
        self.calls.append(("GetJobMeta", ref.job_id))
        return fedsec_pb2.JobInfo(job_id=self.job_id, name="job", status="finished:completed")

    def DownloadJob(self, ref: fedsec_pb2.JobRef, **_: Any) -> Iterator[fedsec_pb2.ArchivePart]:
        self.calls.append(("DownloadJob", ref.job_id))
        yield fedsec_pb2.ArchivePart(info=streams.describe_bytes(self.result))
        for chunk in streams.bytes_chunks(self.result):
            yield fedsec_pb2.ArchivePart(data=chunk)

    def SubmitJob(self, parts: Iterator[fedsec_pb2.SubmitPart], **_: Any) -> fedsec_pb2.JobInfo:
        got = list(parts)
        self.calls.append(("SubmitJob", got))
        sig = got[0].signature
        return fedsec_pb2.JobInfo(job_id=sig.job_id if self.reply_id is None else self.reply_id)

    def GetJobArchiveInfo(self, ref: fedsec_pb2.JobRef, **_: Any) -> fedsec_pb2.JobArchiveInfo:
        self.calls.append(("GetJobArchiveInfo", ref.job_id))
        assert self.archive_info is not None
        return self.archive_info

    def CloneJob(self, request: fedsec_pb2.CloneRequest, **_: Any) -> fedsec_pb2.JobInfo:
        self.calls.append(("CloneJob", request))
        return fedsec_pb2.JobInfo(job_id=request.signature.job_id if self.reply_id is None else self.reply_id)


@pytest.fixture
def kit(prod: Path) -> Path:
    return prod / ADMIN


def _session(kit: Path, stub: FakeStub) -> Session:
    s = Session(kit)
    s._stub = stub  # type: ignore[assignment]
    s._token = "a session token"  # logged in
    return s


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- download_job_result


def test_download_lands_in_dest_slash_job_id(kit: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    with _session(kit, FakeStub()) as s:
        path = s.download_job_result(JOB[:8], dest)
    assert path == dest / JOB
    assert _tree(path) == {"job.json": b"{}", "models/global.bin": b"weights", "workflow.log": b"log"}
    assert [p.name for p in dest.iterdir()] == [JOB]  # no staging folder left behind


def test_download_default_is_the_kits_transfer_folder(kit: Path) -> None:
    with _session(kit, FakeStub()) as s:
        assert s.download_job_result(JOB) == kit / "transfer" / JOB
    assert (kit / "transfer" / JOB / "job.json").is_file()


def test_download_never_replaces_an_existing_folder(kit: Path, tmp_path: Path) -> None:
    mine = tmp_path / "dest" / JOB
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("the admin's own notes")
    stub = FakeStub()
    with _session(kit, stub) as s, pytest.raises(JobError, match=f"download job {JOB}: .* exists already"):
        s.download_job_result(JOB, tmp_path / "dest")
    assert _tree(tmp_path / "dest") == {f"{JOB}/notes.txt": b"the admin's own notes"}
    assert ("DownloadJob", JOB) not in stub.calls  # refused before anything was fetched


def test_download_never_follows_a_link_in_place_of_the_folder(kit: Path, tmp_path: Path) -> None:
    (tmp_path / "dest").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "dest" / JOB).symlink_to(tmp_path / "elsewhere")
    with _session(kit, FakeStub()) as s, pytest.raises(JobError, match="exists already"):
        s.download_job_result(JOB, tmp_path / "dest")
    assert list((tmp_path / "elsewhere").iterdir()) == []


@pytest.mark.parametrize(
    "returned",
    ["../x", "..", "/etc", "a/b", f"../{JOB}", f"{JOB}/..", JOB.upper(), "", "x" * 36, new_job_id()],
    ids=["dotdot-x", "dotdot", "absolute", "slash", "dotdot-job", "job-dotdot", "upper", "empty", "junk", "another"],
)
def test_download_refuses_a_server_id_that_is_not_the_job(kit: Path, tmp_path: Path, returned: str) -> None:
    dest = tmp_path / "area" / "dest"
    dest.mkdir(parents=True)
    (dest / "keep.txt").write_text("keep")
    (tmp_path / "area" / "x").mkdir()
    before = _tree(tmp_path)
    stub = FakeStub(job_id=returned)
    with _session(kit, stub) as s, pytest.raises(WireError, match=r"job '0b5d4c3e'"):
        s.download_job_result(JOB[:8], dest)
    assert _tree(tmp_path) == before  # nothing deleted, nothing written
    assert sorted(p.name for p in (tmp_path / "area").iterdir()) == ["dest", "x"]
    assert [c for c in stub.calls if c[0] == "DownloadJob"] == []


@pytest.mark.parametrize(
    "entries",
    [
        {"../escape.txt": b"x"},
        {"/abs.txt": b"x"},
        {"ok/../../escape.txt": b"x"},
        {"fine.txt": b"x", "../../escape.txt": b"y"},
    ],
    ids=["parent", "absolute", "dotdot inside", "second entry"],
)
def test_download_refuses_result_names_that_escape(kit: Path, tmp_path: Path, entries: dict[str, bytes]) -> None:
    dest = tmp_path / "area" / "dest"
    before = _tree(tmp_path)
    with _session(kit, FakeStub(result=_zip(entries))) as s, pytest.raises(JobError, match="job archive"):
        s.download_job_result(JOB, dest)
    assert _tree(tmp_path) == before  # nothing written anywhere
    assert list(dest.iterdir()) == []  # not even the staging folder is left


# ---------------------------------------------------------------- submit_job and clone_job


def test_submit_signs_a_fresh_job_id_and_the_time(kit: Path, tmp_path: Path) -> None:
    folder = write_job(tmp_path / "job")
    stub = FakeStub()
    began = int(time.time())
    with _session(kit, stub) as s:
        job_id = s.submit_job(folder)
        second = s.submit_job(folder)
    first_parts = stub.calls[0][1]
    sig = first_parts[0].signature
    data = b"".join(p.data for p in first_parts[1:])
    assert data == pack(folder)
    assert sig.job_id == job_id != second  # each submission is its own signed run
    assert began <= sig.submit_time <= int(time.time())
    signature = JobSignature(sig.signature, sig.signer_cert, sig.job_id, sig.submit_time)
    root = read_ca(load_kit(kit))
    assert verify_archive(data, signature, root, "job", job_id=job_id).name == ADMIN
    with pytest.raises(AuthError, match="not for job"):
        verify_archive(data, signature, root, "job", job_id=second)


def test_submit_refuses_a_server_that_files_the_job_under_another_id(kit: Path, tmp_path: Path) -> None:
    stub = FakeStub()
    stub.reply_id = new_job_id()
    with _session(kit, stub) as s, pytest.raises(WireError, match="not under its signed job id"):
        s.submit_job(write_job(tmp_path / "job"))


def _stored(kit: Path, archive: bytes, job_id: str, key: certs.PrivateKey | None = None) -> fedsec_pb2.JobArchiveInfo:
    import hashlib

    startup = kit / "startup"
    key = key or certs.load_key((startup / f"{ADMIN}.key").read_bytes(), "k")
    sig = sign_archive(archive, key, (startup / f"{ADMIN}.crt").read_bytes(), job_id=job_id, submit_time=1_750_000_000)
    proto = fedsec_pb2.JobSignature(
        signature=sig.signature, signer_cert=sig.signer_cert, job_id=sig.job_id, submit_time=sig.submit_time
    )
    return fedsec_pb2.JobArchiveInfo(job_id=job_id, archive_sha256=hashlib.sha256(archive).digest(), signature=proto)


def test_clone_signs_the_stored_archive_as_a_new_job(kit: Path) -> None:
    archive = RESULT
    stub = FakeStub()
    stub.archive_info = _stored(kit, archive, JOB)
    with _session(kit, stub) as s:
        new = s.clone_job(JOB[:8])
    request = stub.calls[-1][1]
    assert request.job_id == JOB and request.signature.job_id == new != JOB
    sig = request.signature
    signature = JobSignature(sig.signature, sig.signer_cert, sig.job_id, sig.submit_time)
    assert verify_archive(archive, signature, read_ca(load_kit(kit)), "clone", job_id=new).name == ADMIN


def test_clone_refuses_a_stored_job_whose_signature_does_not_hold(kit: Path) -> None:
    """A server cannot get an admin to sign an archive that no admin signed."""
    stub = FakeStub()
    info = _stored(kit, RESULT, JOB)
    info.archive_sha256 = b"\0" * 32  # another archive than the one signed
    stub.archive_info = info
    with _session(kit, stub) as s, pytest.raises(AuthError, match="does not match its signature"):
        s.clone_job(JOB)
    assert [c for c in stub.calls if c[0] == "CloneJob"] == []


def test_clone_refuses_a_stored_signature_of_another_job(kit: Path) -> None:
    stub = FakeStub()
    info = _stored(kit, RESULT, new_job_id())
    info.job_id = JOB
    stub.archive_info = info
    with _session(kit, stub) as s, pytest.raises(AuthError, match="the signature is for job"):
        s.clone_job(JOB)
