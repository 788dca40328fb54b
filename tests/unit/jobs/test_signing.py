from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from fedsec.errors import AuthError, KitError
from fedsec.jobs.signing import (
    MAX_JOB_SIGNATURE_BYTES,
    MAX_SIGNER_CERT_BYTES,
    JobSignature,
    sign_archive,
    verify_archive,
)
from fedsec.pki import certs
from fedsec.provision import load_project, provision
from tests.conftest import BASE_PROJECT, project_doc, write_project

ARCHIVE = b"PK\x03\x04" + bytes(range(256)) * 40 + b"end of a job archive"
ADMIN = "admin@acme.org"
WHERE = "job 1234abcd"


def _kit(prod: Path, name: str) -> tuple[certs.PrivateKey, bytes]:
    startup = prod / name / "startup"
    key = certs.load_key((startup / f"{name}.key").read_bytes(), name)
    return key, (startup / f"{name}.crt").read_bytes()


def _root(prod: Path) -> x509.Certificate:
    return certs.load_cert((prod / "site-1/startup/rootCA.pem").read_bytes(), "root")


def _root_key(prod: Path) -> certs.PrivateKey:
    return certs.load_key((prod.parent / "state" / "rootCA.key").read_bytes(), "root key")


def test_roundtrip_returns_the_signer(prod: Path) -> None:
    sig = sign_archive(ARCHIVE, *_kit(prod, ADMIN))
    assert len(sig.signature) <= 72
    who = verify_archive(ARCHIVE, sig, _root(prod), WHERE)
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
    who = verify_archive(ARCHIVE, sign_archive(ARCHIVE, *_kit(prod, name)), _root(prod), WHERE)
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
    sig = sign_archive(ARCHIVE, *_kit(prod, ADMIN))
    with pytest.raises(AuthError, match=r"^job 1234abcd: job archive does not match its signature"):
        verify_archive(changed, sig, _root(prod), WHERE)


@pytest.mark.parametrize(("name", "kind"), [("site-1", "site"), ("site-2", "site"), ("server1", "server")])
def test_non_admin_signer_refused(prod: Path, name: str, kind: str) -> None:
    sig = sign_archive(ARCHIVE, *_kit(prod, name))
    with pytest.raises(AuthError, match=f"job signed by {kind} certificate '{name}', not by an admin"):
        verify_archive(ARCHIVE, sig, _root(prod), WHERE)


def test_admin_cert_of_another_project_refused(prod: Path) -> None:
    other_key, other_root = certs.make_root("testproj", 10)  # same name, different root
    me = certs.Identity(ADMIN, "acme", certs.Kind.ADMIN, certs.Role.PROJECT_ADMIN)
    key, cert = certs.issue(other_key, other_root, me, 10)
    sig = sign_archive(ARCHIVE, key, certs.cert_pem(cert))
    assert verify_archive(ARCHIVE, sig, other_root, WHERE) == me  # fine in its own project
    with pytest.raises(AuthError, match="not issued by this project's root CA"):
        verify_archive(ARCHIVE, sig, _root(prod), WHERE)


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
    sig = sign_archive(ARCHIVE, key, certs.cert_pem(cert))
    with pytest.raises(AuthError, match="certificate is not valid now"):
        verify_archive(ARCHIVE, sig, _root(prod), WHERE)


def test_valid_cert_from_the_same_builder_passes(prod: Path) -> None:
    """The validity test above would pass for a wrong reason if every issued cert were refused."""
    me = certs.Identity("late@acme.org", "acme", certs.Kind.ADMIN, certs.Role.LEAD)
    key, cert = certs.issue(_root_key(prod), _root(prod), me, 1)
    assert verify_archive(ARCHIVE, sign_archive(ARCHIVE, key, certs.cert_pem(cert)), _root(prod), WHERE) == me


def _good(prod: Path) -> JobSignature:
    return sign_archive(ARCHIVE, *_kit(prod, ADMIN))


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
        verify_archive(ARCHIVE, bad, _root(prod), WHERE)


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
        verify_archive(ARCHIVE, bad, _root(prod), WHERE)


def test_cert_padded_within_the_bound_still_verifies(prod: Path) -> None:
    good = _good(prod)
    padded = dataclasses.replace(good, signer_cert=good.signer_cert + b"\n" * 100)
    assert verify_archive(ARCHIVE, padded, _root(prod), WHERE).name == ADMIN


def test_signature_with_another_admins_cert_refused(prod: Path) -> None:
    """A valid admin certificate presented with a signature made by a different key."""
    site_key, _ = _kit(prod, "site-1")
    _, admin_cert = _kit(prod, ADMIN)
    forged = JobSignature(site_key.sign(b"fedsec-job-archive/1\0" + b"x" * 32, ec.ECDSA(hashes.SHA256())), admin_cert)
    with pytest.raises(AuthError, match="does not match its signature"):
        verify_archive(ARCHIVE, forged, _root(prod), WHERE)


def test_signature_is_domain_separated(prod: Path) -> None:
    """A plain ECDSA signature over the archive (or over its digest) is not a job signature."""
    key, cert = _kit(prod, ADMIN)
    for message in (ARCHIVE, hashlib.sha256(ARCHIVE).digest()):
        plain = JobSignature(key.sign(message, ec.ECDSA(hashes.SHA256())), cert)
        with pytest.raises(AuthError, match="does not match its signature"):
            verify_archive(ARCHIVE, plain, _root(prod), WHERE)


def test_sign_with_a_key_that_is_not_the_certs_refused(prod: Path) -> None:
    site_key, _ = _kit(prod, "site-1")
    _, admin_cert = _kit(prod, ADMIN)
    with pytest.raises(KitError, match="not the key of the signer certificate"):
        sign_archive(ARCHIVE, site_key, admin_cert)
