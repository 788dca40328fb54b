"""Signatures over submitted jobs: the submitting admin signs one run of a job, sites verify.

A signature is for one run: sign_archive() signs, with the admin's kit key, a
domain-separated and versioned statement of (job id, submit time, sha256 of the
archive), where the job id (a fresh uuid4, new_job_id()) and the submit time
(whole seconds since the epoch) are chosen by the submitter, not by the server.
The server files the job under that id, and a site verifies the signature over
the id it was asked to run, so a server cannot run a signed archive again under
another id; the site's own record of the ids it ran (fedsec.site.replay) refuses
the same id twice, and its window on the submit time refuses old signatures.

verify_archive() is what a site calls before it unpacks or runs anything from a
job: it bounds the sizes it is given, checks that the signature is for the job
id the caller expects, that the certificate chains to the project's root CA, is
valid now and is an admin's (a site or server key can never sign a job), and
that the signature matches the archive. It returns the signer's identity, whose
role and org the site policy then judges. Signatures of the first format (over
the archive digest alone) never verify. This module never unpacks an archive
and never trusts a name the submitter states: the identity comes from the
verified certificate only.
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from fedsec import limits
from fedsec.errors import AuthError, JobError, KitError
from fedsec.pki import certs

MAX_JOB_SIGNATURE_BYTES = limits.MAX_JOB_SIGNATURE_BYTES  # the bounds live in fedsec.limits; kept here by name
MAX_SIGNER_CERT_BYTES = limits.MAX_SIGNER_CERT_BYTES
_DOMAIN = b"fedsec-job-archive/2\0"  # /1 signed the archive digest alone: never accepted
_JOB_ID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
MAX_SUBMIT_TIME = 1 << 40  # seconds since the epoch; far beyond any real clock, well inside int64
_KIND_WORDS = {certs.Kind.CLIENT: "site", certs.Kind.SERVER: "server", certs.Kind.ADMIN: "admin"}


@dataclass(frozen=True)
class JobSignature:
    """The submitting admin's signature over one run of a job, with the admin's certificate."""

    signature: bytes  # DER ECDSA P-256/SHA-256 over _message(job_id, submit_time, sha256(archive))
    signer_cert: bytes  # PEM of the signer's certificate
    job_id: str  # the job id the submitter chose and signed (a uuid4)
    submit_time: int  # when the submitter signed it: whole seconds since the epoch, signed


def new_job_id() -> str:
    """A fresh job id: a random uuid4 in its canonical text form."""
    import uuid  # here: it loads platform and a native library that no idle process needs

    return str(uuid.uuid4())


def check_job_id(job_id: object, what: str = "job id") -> str:
    """Return job_id if it is a uuid4 in its canonical lower-case text form.

    Raises JobError naming what and the value (cut short) otherwise: anything else
    (a path, '..', upper case, another uuid version) is never a job id.
    """
    if not isinstance(job_id, str) or not _JOB_ID_RE.fullmatch(job_id):
        raise JobError(f"{what} {str(job_id)[:40]!r}: not a job id (a uuid4 such as {new_job_id()!r})")
    return job_id


def _message(job_id: str, submit_time: int, digest: bytes) -> bytes:
    ident = job_id.encode("ascii")
    return _DOMAIN + struct.pack(">H", len(ident)) + ident + struct.pack(">q", submit_time) + digest


def _check_submit_time(submit_time: object, where: str) -> int:
    if isinstance(submit_time, bool) or not isinstance(submit_time, int) or not 0 < submit_time < MAX_SUBMIT_TIME:
        raise AuthError(f"{where}: signed submit time {submit_time!r:.40} is not a time in seconds since the epoch")
    return submit_time


def sign_archive(
    archive: bytes, key: certs.PrivateKey, cert_pem: bytes, *, job_id: str, submit_time: int
) -> JobSignature:
    """Sign one run of archive, as job job_id submitted at submit_time, with an admin's kit key.

    cert_pem is the certificate of key. Raises KitError when cert_pem is not a
    certificate or not the certificate of key (a signature that no site could ever
    verify), JobError when job_id is not a job id, AuthError for a bad submit time.
    """
    return sign_digest(hashlib.sha256(archive).digest(), key, cert_pem, job_id=job_id, submit_time=submit_time)


def sign_digest(
    digest: bytes, key: certs.PrivateKey, cert_pem: bytes, *, job_id: str, submit_time: int
) -> JobSignature:
    """sign_archive() for an archive known by its sha256 digest (cloning a job the server holds)."""
    check_job_id(job_id)
    _check_submit_time(submit_time, f"job {job_id}")
    if len(digest) != hashlib.sha256().digest_size:
        raise JobError(f"job {job_id}: archive digest is {len(digest)} bytes, not a sha256 digest")
    cert = certs.load_cert(cert_pem, "job signer certificate")
    if not certs.root_matches(key, cert):
        raise KitError("job signing key is not the key of the signer certificate")
    signature = key.sign(_message(job_id, submit_time, digest), ec.ECDSA(hashes.SHA256()))
    return JobSignature(signature=signature, signer_cert=cert_pem, job_id=job_id, submit_time=submit_time)


def verify_archive(
    archive: bytes, sig: JobSignature, root: x509.Certificate, where: str, *, job_id: str
) -> certs.Identity:
    """Check that an admin of this project signed exactly archive as job job_id; return the admin's identity.

    job_id is the id the caller is about to file or run the job under (a site: the
    id the server asked it to run). where names the job in messages ("job 1234abcd").
    Raises AuthError for a signature for another job id, a bad submit time, an
    oversized signature or certificate, a certificate that does not parse, is not
    issued by root, is not valid now or is not an admin's, and for a signature that
    does not match the archive (or was made in the old format).
    """
    return verify_digest(hashlib.sha256(archive).digest(), sig, root, where, job_id=job_id)


def verify_digest(
    digest: bytes, sig: JobSignature, root: x509.Certificate, where: str, *, job_id: str
) -> certs.Identity:
    """verify_archive() for an archive known by its sha256 digest; raises the same errors."""
    if sig.job_id != job_id:
        raise AuthError(f"{where}: the signature is for job {sig.job_id!r:.40}, not for job {job_id!r:.40}")
    try:
        check_job_id(job_id)
    except JobError as exc:
        raise AuthError(f"{where}: {exc}") from exc
    _check_submit_time(sig.submit_time, where)
    if len(sig.signature) > MAX_JOB_SIGNATURE_BYTES:
        raise AuthError(f"{where}: job signature is larger than {MAX_JOB_SIGNATURE_BYTES} bytes")
    if len(sig.signer_cert) > MAX_SIGNER_CERT_BYTES:
        raise AuthError(f"{where}: signer certificate is larger than {MAX_SIGNER_CERT_BYTES} bytes")
    try:
        cert = x509.load_pem_x509_certificate(sig.signer_cert)
    except ValueError as exc:
        raise AuthError(f"{where}: signer certificate is not a PEM certificate") from exc
    certs.verify_chain(cert, root, f"{where}: signer")
    identity = certs.identity_of(cert)
    if identity.kind is not certs.Kind.ADMIN or identity.role is None:
        kind = _KIND_WORDS[identity.kind]
        raise AuthError(f"{where}: job signed by {kind} certificate {identity.name!r}, not by an admin")
    public_key = cert.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise AuthError(f"{where}: signer certificate of {identity.name!r} does not hold an EC key")
    try:
        public_key.verify(sig.signature, _message(job_id, sig.submit_time, digest), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise AuthError(
            f"{where}: job archive does not match its signature (changed after signing, signed for another"
            " job id or submit time, or signed in an old format?)"
        ) from exc
    return identity
