"""The admin login challenge: the server's fresh nonce signed with the admin kit's key.

The signed message binds the nonce to the server and the admin, so a
signature captured from one login is useless for any other.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from fedsec.errors import AuthError
from fedsec.pki.certs import PrivateKey

NONCE_BYTES = 32
MAX_SIGNATURE_BYTES = 256


def login_message(nonce: bytes, server: str, admin: str) -> bytes:
    return b"fedsec-admin-login/1\0" + server.encode() + b"\0" + admin.encode() + b"\0" + nonce


def sign_login(key: PrivateKey, nonce: bytes, server: str, admin: str) -> bytes:
    return key.sign(login_message(nonce, server, admin), ec.ECDSA(hashes.SHA256()))


def verify_login(cert: x509.Certificate, nonce: bytes, server: str, admin: str, signature: bytes) -> None:
    """Raise AuthError unless signature is cert's key signing this login."""
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or len(signature) > MAX_SIGNATURE_BYTES:
        raise AuthError("login: bad signature")
    try:
        public.verify(signature, login_message(nonce, server, admin), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise AuthError("login: the signature does not match the challenge") from exc
