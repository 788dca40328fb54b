"""A signed archive whose central directory declares millions of entries is refused before it is parsed.

The server reads the zip's end records itself and checks the declared entry count and
central-directory size before zipfile builds anything, and it receives archives into a file,
never whole into memory: its parent's peak memory stays where it was.
"""

from __future__ import annotations

import struct
import time
import uuid
from pathlib import Path

import grpc
import pytest

from fedsec import limits
from fedsec.api import Session
from fedsec.jobs.signing import sign_archive
from fedsec.pki import certs
from fedsec.wire import fedsec_pb2, streams
from tests.integration.harness import Federation

ENTRIES = 2_000_000
HEADROOM_MIB = 64


def _directory_bomb(entries: int) -> bytes:
    """A zip64 archive of nothing but a central directory of entries one-letter entries (47 bytes each)."""
    record = struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0) + b"a"
    directory = record * entries
    end64 = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, len(directory), 0)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, len(directory), 1)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return directory + end64 + locator + end


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


@pytest.mark.federation(n_clients=1)
def test_a_two_million_entry_archive_is_refused_before_it_is_parsed(federation: Federation) -> None:
    federation.start("server1")
    data = _directory_bomb(ENTRIES)
    assert len(data) <= limits.MAX_JOB_ARCHIVE_BYTES  # only the entry count is over a limit
    with Session(federation.admin_kit) as admin:
        admin.login()
        key = certs.load_key(admin.kit.key_path.read_bytes(), "admin key")
        signed = sign_archive(
            data, key, admin.kit.cert_path.read_bytes(), job_id=str(uuid.uuid4()), submit_time=int(time.time())
        )
        signature = fedsec_pb2.JobSignature(
            signature=signed.signature,
            signer_cert=signed.signer_cert,
            job_id=signed.job_id,
            submit_time=signed.submit_time,
        )
        pid = federation.procs["server1"].pid
        before = _peak_rss_mib(pid)
        first = fedsec_pb2.SubmitPart(info=streams.describe_bytes(data), signature=signature)
        parts = (fedsec_pb2.SubmitPart(data=c) for c in streams.bytes_chunks(data))
        with pytest.raises(grpc.RpcError) as err:
            admin._stub.SubmitJob(iter([first, *parts]), timeout=300, metadata=[("fedsec-session", admin._token)])
        after = _peak_rss_mib(pid)
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert f"declares {ENTRIES} entries, more than the limit of {limits.MAX_JOB_FILES}" in (
            err.value.details() or ""
        )
        assert admin.list_jobs() == []
    print(
        f"\n{ENTRIES}-entry archive ({len(data) >> 20} MiB, signed): server parent peak RSS "
        f"{before:.0f} MiB before, {after:.0f} MiB after (+{after - before:.0f} MiB; allowed +{HEADROOM_MIB})"
    )
    assert after - before <= HEADROOM_MIB
    assert list((federation.kit("server1") / "store" / "jobs").iterdir()) == []  # no staging left behind


def _signed_first(admin: Session, data: bytes, **change: bytes) -> fedsec_pb2.SubmitPart:
    key = certs.load_key(admin.kit.key_path.read_bytes(), "admin key")
    signed = sign_archive(
        data, key, admin.kit.cert_path.read_bytes(), job_id=str(uuid.uuid4()), submit_time=int(time.time())
    )
    fields = {"signature": signed.signature, "signer_cert": signed.signer_cert} | change
    signature = fedsec_pb2.JobSignature(**fields, job_id=signed.job_id, submit_time=signed.submit_time)
    return fedsec_pb2.SubmitPart(info=streams.describe_bytes(data), signature=signature)


@pytest.mark.federation(n_clients=1)
def test_upload_framing_is_bounded(federation: Federation) -> None:
    federation.start("server1")
    data = bytes(range(256)) * 1024  # 256 KiB: four chunks of the minimum size
    with Session(federation.admin_kit) as admin:
        admin.login()
        md = [("fedsec-session", admin._token)]
        cases = [
            ([_signed_first(admin, data), *(fedsec_pb2.SubmitPart(data=data[i : i + 1]) for i in range(5000))],
             "chunk of 1 bytes before the payload's end"),
            ([_signed_first(admin, data, signer_cert=b"-" * (20 << 10))],
             f"signer certificate is larger than {limits.MAX_SIGNER_CERT_BYTES} bytes"),
            ([_signed_first(admin, data), fedsec_pb2.SubmitPart(info=streams.describe_bytes(data))],
             "an upload carries only data chunks"),
        ]  # fmt: skip
        for parts, fragment in cases:
            with pytest.raises(grpc.RpcError) as err:
                admin._stub.SubmitJob(iter(parts), timeout=60, metadata=md)
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert fragment in (err.value.details() or "")
        assert admin.list_jobs() == []
