from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from fedsec.errors import AuthError
from fedsec.pki import certs


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _ekus(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_every_cert_chains_to_its_kit_root(prod: Path) -> None:
    kits = sorted(p for p in prod.iterdir())
    assert [k.name for k in kits] == ["admin@acme.org", "server1", "site-1", "site-2"]
    for kit in kits:
        root = _load(kit / "startup" / "rootCA.pem")
        cert = _load(kit / "startup" / f"{kit.name}.crt")
        certs.verify_chain(cert, root, kit.name)
        assert cert.signature_hash_algorithm is not None
        assert cert.signature_hash_algorithm.name == "sha256"
        assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_ekus_and_identities(prod: Path) -> None:
    server = _load(prod / "server1/startup/server1.crt")
    assert _ekus(server) == {ExtendedKeyUsageOID.SERVER_AUTH}
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert certs.identity_of(server) == certs.Identity("server1", "acme", certs.Kind.SERVER)

    site = _load(prod / "site-2/startup/site-2.crt")
    assert _ekus(site) == {ExtendedKeyUsageOID.CLIENT_AUTH, certs.SITE_EKU}
    assert certs.identity_of(site) == certs.Identity("site-2", "beta", certs.Kind.CLIENT)

    admin = _load(prod / "admin@acme.org/startup/admin@acme.org.crt")
    assert _ekus(admin) == {ExtendedKeyUsageOID.CLIENT_AUTH, certs.ADMIN_EKU}
    assert certs.identity_of(admin) == certs.Identity(
        "admin@acme.org", "acme", certs.Kind.ADMIN, certs.Role.PROJECT_ADMIN
    )


def test_validity_defaults(prod: Path) -> None:
    leaf = _load(prod / "site-1/startup/site-1.crt")
    root = _load(prod / "site-1/startup/rootCA.pem")
    leaf_days = (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days
    root_days = (root.not_valid_after_utc - root.not_valid_before_utc).days
    assert leaf_days == 365
    assert root_days == 3650


def test_foreign_root_refused(prod: Path) -> None:
    _, other_root = certs.make_root("other", 10)
    site = _load(prod / "site-1/startup/site-1.crt")
    with pytest.raises(AuthError, match="not issued by this project's root CA"):
        certs.verify_chain(site, other_root, "site-1")


def test_cert_without_fedsec_usage_refused() -> None:
    _, root = certs.make_root("p", 10)
    with pytest.raises(AuthError, match="has no extended key usage"):
        certs.identity_of(root)
