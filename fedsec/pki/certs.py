"""Root CA, certificate issuing, and identity from a verified certificate.

Keys are ECDSA P-256, signatures ECDSA with SHA-256. Every leaf carries an
extended key usage that says what it is for: the server serverAuth; a site
clientAuth plus SITE_EKU; an admin clientAuth plus ADMIN_EKU, with its
organisation (O) and role (X.520 role attribute) in the subject. identity_of()
reads these back, so a site certificate can never pass as an admin's or the
reverse. This module never writes files; callers use fedsec._fs.
"""

from __future__ import annotations

import datetime as dt
import ipaddress

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedsec.errors import AuthError, KitError
from fedsec.pki.identity import Identity, Kind, Role

# Re-exported: the identities this module reads from certificates (fedsec.pki.identity holds them, free of
# X.509, for a process that only names kinds and roles); the rest of this module is public as well.
__all__ = ["Identity", "Kind", "Role"]

# Private OIDs under 2.25 (UUID-derived, ITU-T X.667): no registration needed.
SITE_EKU = x509.ObjectIdentifier("2.25.42208471817288937116415118475312015769")
ADMIN_EKU = x509.ObjectIdentifier("2.25.243001286447267247915650655965721307324")
ROLE_OID = x509.ObjectIdentifier("2.5.4.72")  # X.520 id-at-role

PrivateKey = ec.EllipticCurvePrivateKey


def new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_key(data: bytes, where: str) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KitError(f"{where}: not a PEM private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KitError(f"{where}: not an EC private key")
    return key


def load_cert(data: bytes, where: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise KitError(f"{where}: not a PEM certificate") from exc


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def make_root(project: str, days: int) -> tuple[PrivateKey, x509.Certificate]:
    """A new self-signed root CA for project."""
    key = new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"{project} root CA"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, project),
        ]
    )
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def root_matches(key: PrivateKey, cert: x509.Certificate) -> bool:
    """Whether key is the private key of cert."""
    return key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]


def issue(
    ca_key: PrivateKey,
    ca_cert: x509.Certificate,
    identity: Identity,
    days: int,
    host_names: tuple[str, ...] = (),
) -> tuple[PrivateKey, x509.Certificate]:
    """A new key pair and a certificate for identity, signed by the root CA."""
    key = new_key()
    attrs = [
        x509.NameAttribute(NameOID.COMMON_NAME, identity.name),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, identity.org),
    ]
    if identity.role is not None:
        attrs.append(x509.NameAttribute(ROLE_OID, identity.role.value))
    if identity.kind is Kind.SERVER:
        usages = [ExtendedKeyUsageOID.SERVER_AUTH]
    elif identity.kind is Kind.CLIENT:
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH, SITE_EKU]
    else:
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH, ADMIN_EKU]
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if host_names:
        builder = builder.add_extension(x509.SubjectAlternativeName([_san(h) for h in host_names]), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def verify_chain(cert: x509.Certificate, root: x509.Certificate, where: str) -> None:
    """Raise AuthError unless cert is signed by root and valid now."""
    try:
        cert.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise AuthError(f"{where}: certificate is not issued by this project's root CA") from exc
    now = _now()
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        raise AuthError(f"{where}: certificate is not valid now (valid {start:%Y-%m-%d} to {end:%Y-%m-%d})")


def _attr(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> str | None:
    values = cert.subject.get_attributes_for_oid(oid)
    if len(values) != 1:
        return None
    value = values[0].value
    return value if isinstance(value, str) else None


def identity_of(cert: x509.Certificate) -> Identity:
    """The identity a certificate states; the caller has verified its chain.

    Raises AuthError when the certificate is not one fedsec issued.
    """
    name = _attr(cert, NameOID.COMMON_NAME)
    org = _attr(cert, NameOID.ORGANIZATION_NAME)
    if not name or not org:
        raise AuthError("certificate subject lacks a single CN and O")
    try:
        usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound as exc:
        raise AuthError(f"certificate of {name!r} has no extended key usage") from exc
    if ADMIN_EKU in usages and SITE_EKU not in usages:
        role_text = _attr(cert, ROLE_OID)
        try:
            role = Role(role_text)
        except ValueError as exc:
            raise AuthError(f"admin certificate of {name!r} has no valid role") from exc
        return Identity(name, org, Kind.ADMIN, role)
    if SITE_EKU in usages and ADMIN_EKU not in usages:
        return Identity(name, org, Kind.CLIENT)
    if usages == {ExtendedKeyUsageOID.SERVER_AUTH}:
        return Identity(name, org, Kind.SERVER)
    raise AuthError(f"certificate of {name!r} is neither a server, a site nor an admin certificate")
