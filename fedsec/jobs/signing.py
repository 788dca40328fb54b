"""Signatures over submitted job archives: the submitting admin signs, sites verify.

sign_archive() signs a domain-separated digest of the archive bytes with the
admin's kit key and returns the signature with the admin's certificate.
verify_archive() is what a site calls before it unpacks or runs anything from a
job: it bounds the sizes it is given, checks that the certificate chains to the
project's root CA, is valid now and is an admin's (a site or server key can
never sign a job), and that the signature matches the archive. It returns the
signer's identity, whose role and org the site policy then judges. This module
never unpacks an archive and never trusts a name the submitter states: the
identity comes from the verified certificate only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from fedsec.errors import AuthError, KitError
from fedsec.pki import certs

# A DER ECDSA P-256 signature is at most 72 bytes; anything near this bound is not one.
MAX_JOB_SIGNATURE_BYTES = 256
MAX_SIGNER_CERT_BYTES = 16 << 10  # one PEM leaf certificate is about 1 KiB
_DOMAIN = b"fedsec-job-archive/1\0"
_KIND_WORDS = {certs.Kind.CLIENT: "site", certs.Kind.SERVER: "server", certs.Kind.ADMIN: "admin"}


@dataclass(frozen=True)
class JobSignature:
    """The submitting admin's signature over a job archive, with the admin's certificate."""

    signature: bytes  # DER ECDSA P-256/SHA-256 over _message(archive)
    signer_cert: bytes  # PEM of the signer's certificate


def _message(archive: bytes) -> bytes:
    return _DOMAIN + hashlib.sha256(archive).digest()


def sign_archive(archive: bytes, key: certs.PrivateKey, cert_pem: bytes) -> JobSignature:
    """Sign archive with an admin's kit key; cert_pem is the certificate of that key.

    Raises KitError when cert_pem is not a certificate or not the certificate of key
    (a signature that no site could ever verify).
    """
    cert = certs.load_cert(cert_pem, "job signer certificate")
    if not certs.root_matches(key, cert):
        raise KitError("job signing key is not the key of the signer certificate")
    signature = key.sign(_message(archive), ec.ECDSA(hashes.SHA256()))
    return JobSignature(signature=signature, signer_cert=cert_pem)


def verify_archive(archive: bytes, sig: JobSignature, root: x509.Certificate, where: str) -> certs.Identity:
    """Check that an admin of this project signed exactly archive; return the admin's identity.

    where names the job in messages ("job 1234abcd"). Raises AuthError for an
    oversized signature or certificate, a certificate that does not parse, is not
    issued by root, is not valid now or is not an admin's, and for a signature that
    does not match the archive.
    """
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
        public_key.verify(sig.signature, _message(archive), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise AuthError(f"{where}: job archive does not match its signature (changed after signing?)") from exc
    return identity
