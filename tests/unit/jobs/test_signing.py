from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from fedsec.errors import AuthError, JobError, KitError
from fedsec.jobs.signing import (
    MAX_JOB_SIGNATURE_BYTES,
    MAX_SIGNER_CERT_BYTES,
    JobSignature,
    check_job_id,
    new_job_id,
    sign_archive,
    sign_digest,
    verify_archive,
    verify_digest,
)
from fedsec.pki import certs
from fedsec.provision import load_project, provision
from tests.conftest import BASE_PROJECT, project_doc, write_project

ARCHIVE = b"PK\x03\x04" + bytes(range(256)) * 40 + b"end of a job archive"
ADMIN = "admin@acme.org"
WHERE = "job 1234abcd"
JOB = "0b5d4c3e-6f7a-4b8c-9d0e-1f2a3b4c5d6e"
OTHER_JOB = "7c1e2d3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"
SUBMIT_TIME = 1_750_000_000
RUN: dict[str, Any] = {"job_id": JOB, "submit_time": SUBMIT_TIME}


def _kit(prod: Path, name: str) -> tuple[certs.PrivateKey, bytes]:
    startup = prod / name / "startup"
    key = certs.load_key((startup / f"{name}.key").read_bytes(), name)
    return key, (startup / f"{name}.crt").read_bytes()


def _root(prod: Path) -> x509.Certificate:
    return certs.load_cert((prod / "site-1/startup/rootCA.pem").read_bytes(), "root")


def _root_key(prod: Path) -> certs.PrivateKey:
    return certs.load_key((prod.parent / "state" / "rootCA.key").read_bytes(), "root key")


def test_roundtrip_returns_the_signer(prod: Path) -> None:
    sig = sign_archive(ARCHIVE, *_kit(prod, ADMIN), **RUN)
    assert len(sig.signature) <= 72
    who = verify_archive(ARCHIVE, sig, _root(prod), WHERE, job_id=JOB)
    assert who == certs.Identity(ADMIN, "acme", certs.Kind.ADMIN, certs.Role.PROJECT_ADMIN)


@pytest.mark.parametrize(
    ("role", "org"),
    [("org_admin", "beta"), ("lead", "beta"), ("member", "gamma")],
)
def test_signer_role_and_org_come_from_the_certificate(tmp_path: Path, role: str, org: str) -> None:
    name = f"{role}@{org}.org"
    admin = {"name": name, "type": "admin", "org": org, "role": role}
    doc = project_doc(participants=[*BASE_PROJECT["participants"], admin])
    prod = provision(load_project(write_project(tmp_path / "project.yml", doc)), tmp_path / "ws").prod_dir
    who = verify_archive(ARCHIVE, sign_archive(ARCHIVE, *_kit(prod, name), **RUN), _root(prod), WHERE, job_id=JOB)
    assert who == certs.Identity(name, org, certs.Kind.ADMIN, certs.Role(role))


def _flip(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0x01
    return bytes(out)


@pytest.mark.parametrize(
    "changed",
    [
        _flip(ARCHIVE, 0),
        _flip(ARCHIVE, len(ARCHIVE) // 2),
        _flip(ARCHIVE, len(ARCHIVE) - 1),
        ARCHIVE + b"\0",
        ARCHIVE[:-1],
        b"",
    ],
    ids=["first byte", "middle byte", "last byte", "appended byte", "truncated", "empty"],
)
def test_changed_archive_refused(prod: Path, changed: bytes) -> None:
    sig = sign_archive(ARCHIVE, *_kit(prod, ADMIN), **RUN)
    with pytest.raises(AuthError, match=r"^job 1234abcd: job archive does not match its signature"):
        verify_archive(changed, sig, _root(prod), WHERE, job_id=JOB)


@pytest.mark.parametrize(("name", "kind"), [("site-1", "site"), ("site-2", "site"), ("server1", "server")])
def test_non_admin_signer_refused(prod: Path, name: str, kind: str) -> None:
    sig = sign_archive(ARCHIVE, *_kit(prod, name), **RUN)
    with pytest.raises(AuthError, match=f"job signed by {kind} certificate '{name}', not by an admin"):
        verify_archive(ARCHIVE, sig, _root(prod), WHERE, job_id=JOB)


def test_admin_cert_of_another_project_refused(prod: Path) -> None:
    other_key, other_root = certs.make_root("testproj", 10)  # same name, different root
    me = certs.Identity(ADMIN, "acme", certs.Kind.ADMIN, certs.Role.PROJECT_ADMIN)
    key, cert = certs.issue(other_key, other_root, me, 10)
    sig = sign_archive(ARCHIVE, key, certs.cert_pem(cert), **RUN)
    assert verify_archive(ARCHIVE, sig, other_root, WHERE, job_id=JOB) == me  # fine in its own project
    with pytest.raises(AuthError, match="not issued by this project's root CA"):
        verify_archive(ARCHIVE, sig, _root(prod), WHERE, job_id=JOB)


@pytest.mark.parametrize(
    ("when", "days"),
    [(dt.timedelta(days=-400), 30), (dt.timedelta(days=-2), 1), (dt.timedelta(days=30), 10)],
    ids=["expired long ago", "expired yesterday", "not yet valid"],
)
def test_cert_outside_its_validity_refused(
    prod: Path, monkeypatch: pytest.MonkeyPatch, when: dt.timedelta, days: int
) -> None:
    me = certs.Identity("late@acme.org", "acme", certs.Kind.ADMIN, certs.Role.LEAD)
    real_now = certs._now()
    with monkeypatch.context() as m:
        m.setattr(certs, "_now", lambda: real_now + when)  # issue as if at another time
        key, cert = certs.issue(_root_key(prod), _root(prod), me, days)
    assert abs(certs._now() - real_now) < dt.timedelta(minutes=1)  # the clock is back
    sig = sign_archive(ARCHIVE, key, certs.cert_pem(cert), **RUN)
    with pytest.raises(AuthError, match="certificate is not valid now"):
        verify_archive(ARCHIVE, sig, _root(prod), WHERE, job_id=JOB)


def test_valid_cert_from_the_same_builder_passes(prod: Path) -> None:
    """The validity test above would pass for a wrong reason if every issued cert were refused."""
    me = certs.Identity("late@acme.org", "acme", certs.Kind.ADMIN, certs.Role.LEAD)
    key, cert = certs.issue(_root_key(prod), _root(prod), me, 1)
    assert (
        verify_archive(ARCHIVE, sign_archive(ARCHIVE, key, certs.cert_pem(cert), **RUN), _root(prod), WHERE, job_id=JOB)
        == me
    )


def _good(prod: Path) -> JobSignature:
    return sign_archive(ARCHIVE, *_kit(prod, ADMIN), **RUN)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s[:-1], "does not match its signature"),
        (lambda s: s[: len(s) // 2], "does not match its signature"),
        (lambda s: b"", "does not match its signature"),
        (lambda s: s + b"\0", "does not match its signature"),
        (lambda s: s + b"\0" * (MAX_JOB_SIGNATURE_BYTES - len(s)), "does not match its signature"),
        (lambda s: s + b"\0" * (MAX_JOB_SIGNATURE_BYTES + 1 - len(s)), f"larger than {MAX_JOB_SIGNATURE_BYTES}"),
        (lambda s: b"\x30" * 100_000, f"larger than {MAX_JOB_SIGNATURE_BYTES}"),
    ],
    ids=["one byte short", "half", "empty", "one byte more", "at the bound", "over the bound", "huge"],
)
def test_bad_signature_bytes_refused(prod: Path, change: Callable[[bytes], bytes], message: str) -> None:
    good = _good(prod)
    bad = dataclasses.replace(good, signature=change(good.signature))
    with pytest.raises(AuthError, match=message):
        verify_archive(ARCHIVE, bad, _root(prod), WHERE, job_id=JOB)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c + b"\n" * (MAX_SIGNER_CERT_BYTES + 1 - len(c)), f"larger than {MAX_SIGNER_CERT_BYTES}"),
        (lambda c: b"", "not a PEM certificate"),
        (lambda c: b"not a certificate", "not a PEM certificate"),
        (lambda c: c[: len(c) // 2], "not a PEM certificate"),
    ],
    ids=["oversized", "empty", "garbage", "truncated"],
)
def test_bad_signer_cert_refused(prod: Path, change: Callable[[bytes], bytes], message: str) -> None:
    good = _good(prod)
    bad = dataclasses.replace(good, signer_cert=change(good.signer_cert))
    with pytest.raises(AuthError, match=message):
        verify_archive(ARCHIVE, bad, _root(prod), WHERE, job_id=JOB)


def test_cert_padded_within_the_bound_still_verifies(prod: Path) -> None:
    good = _good(prod)
    padded = dataclasses.replace(good, signer_cert=good.signer_cert + b"\n" * 100)
    assert verify_archive(ARCHIVE, padded, _root(prod), WHERE, job_id=JOB).name == ADMIN


def test_signature_with_another_admins_cert_refused(prod: Path) -> None:
    """A valid admin certificate presented with a signature made by a different key."""
    site_key, _ = _kit(prod, "site-1")
    _, admin_cert = _kit(prod, ADMIN)
    forged = JobSignature(
        site_key.sign(b"fedsec-job-archive/2\0" + b"x" * 32, ec.ECDSA(hashes.SHA256())), admin_cert, JOB, SUBMIT_TIME
    )
    with pytest.raises(AuthError, match="does not match its signature"):
        verify_archive(ARCHIVE, forged, _root(prod), WHERE, job_id=JOB)


def test_signature_is_domain_separated(prod: Path) -> None:
    """A plain ECDSA signature over the archive (or over its digest) is not a job signature."""
    key, cert = _kit(prod, ADMIN)
    for message in (ARCHIVE, hashlib.sha256(ARCHIVE).digest()):
        plain = JobSignature(key.sign(message, ec.ECDSA(hashes.SHA256())), cert, JOB, SUBMIT_TIME)
        with pytest.raises(AuthError, match="does not match its signature"):
            verify_archive(ARCHIVE, plain, _root(prod), WHERE, job_id=JOB)


def test_sign_with_a_key_that_is_not_the_certs_refused(prod: Path) -> None:
    site_key, _ = _kit(prod, "site-1")
    _, admin_cert = _kit(prod, ADMIN)
    with pytest.raises(KitError, match="not the key of the signer certificate"):
        sign_archive(ARCHIVE, site_key, admin_cert, **RUN)


# ---------------------------------------------------------------- one signature, one run


def test_signature_names_its_job_id_and_submit_time(prod: Path) -> None:
    sig = _good(prod)
    assert (sig.job_id, sig.submit_time) == (JOB, SUBMIT_TIME)


def test_signature_for_one_job_id_does_not_verify_for_another(prod: Path) -> None:
    sig = _good(prod)
    with pytest.raises(AuthError, match=f"the signature is for job '{JOB}', not for job '{OTHER_JOB}'"):
        verify_archive(ARCHIVE, sig, _root(prod), WHERE, job_id=OTHER_JOB)


def test_signature_relabelled_with_another_job_id_refused(prod: Path) -> None:
    """A server that states another job id beside the same signature bytes."""
    relabelled = dataclasses.replace(_good(prod), job_id=OTHER_JOB)
    with pytest.raises(AuthError, match="does not match its signature"):
        verify_archive(ARCHIVE, relabelled, _root(prod), WHERE, job_id=OTHER_JOB)


@pytest.mark.parametrize("delta", [1, -1, 3600, -86400 * 30])
def test_changed_submit_time_refused(prod: Path, delta: int) -> None:
    changed = dataclasses.replace(_good(prod), submit_time=SUBMIT_TIME + delta)
    with pytest.raises(AuthError, match="does not match its signature"):
        verify_archive(ARCHIVE, changed, _root(prod), WHERE, job_id=JOB)


@pytest.mark.parametrize("bad", [0, -5, 1 << 40, 1 << 62], ids=["zero", "negative", "at the bound", "far"])
def test_submit_time_outside_the_range_refused(prod: Path, bad: int) -> None:
    with pytest.raises(AuthError, match="is not a time in seconds since the epoch"):
        verify_archive(ARCHIVE, dataclasses.replace(_good(prod), submit_time=bad), _root(prod), WHERE, job_id=JOB)


def test_first_format_signature_refused(prod: Path) -> None:
    """A signature of format /1 (over the archive digest alone) by the real admin key never verifies."""
    key, cert = _kit(prod, ADMIN)
    v1 = key.sign(b"fedsec-job-archive/1\0" + hashlib.sha256(ARCHIVE).digest(), ec.ECDSA(hashes.SHA256()))
    with pytest.raises(AuthError, match="does not match its signature"):
        verify_archive(ARCHIVE, JobSignature(v1, cert, JOB, SUBMIT_TIME), _root(prod), WHERE, job_id=JOB)
    stored_v1 = JobSignature(v1, cert, "", 0)  # how the server reads a job stored before the change
    with pytest.raises(AuthError, match="the signature is for job '', not for job"):
        verify_archive(ARCHIVE, stored_v1, _root(prod), WHERE, job_id=JOB)


@pytest.mark.parametrize(
    "bad",
    ["", "../etc", "a/b", "..", JOB.upper(), JOB + "\n", JOB[:-1], "0b5d4c3e-6f7a-1b8c-9d0e-1f2a3b4c5d6e", "x" * 36],
    ids=["empty", "path", "slash", "dotdot", "upper case", "newline", "short", "uuid1", "junk"],
)
def test_job_ids_that_are_not_uuid4_refused(prod: Path, bad: str) -> None:
    with pytest.raises(JobError, match="not a job id"):
        check_job_id(bad)
    with pytest.raises(JobError, match="not a job id"):
        sign_archive(ARCHIVE, *_kit(prod, ADMIN), job_id=bad, submit_time=SUBMIT_TIME)
    with pytest.raises(AuthError):
        verify_archive(ARCHIVE, dataclasses.replace(_good(prod), job_id=bad), _root(prod), WHERE, job_id=bad)


def test_new_job_ids_are_valid_and_distinct() -> None:
    ids = {new_job_id() for _ in range(100)}
    assert len(ids) == 100 and all(check_job_id(i) == i for i in ids)


def test_digest_signature_is_the_archive_signature(prod: Path) -> None:
    """A clone signs the stored archive's digest: the site verifies it against the archive."""
    digest = hashlib.sha256(ARCHIVE).digest()
    sig = sign_digest(digest, *_kit(prod, ADMIN), job_id=OTHER_JOB, submit_time=SUBMIT_TIME)
    assert verify_archive(ARCHIVE, sig, _root(prod), WHERE, job_id=OTHER_JOB).name == ADMIN
    assert verify_digest(digest, _good(prod), _root(prod), WHERE, job_id=JOB).name == ADMIN
    with pytest.raises(JobError, match="not a sha256 digest"):
        sign_digest(digest[:-1], *_kit(prod, ADMIN), job_id=OTHER_JOB, submit_time=SUBMIT_TIME)
