from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedsec.cli import main
from fedsec.errors import KitError
from fedsec.kit import load_kit
from fedsec.pki import certs

KITS = ["server1", "site-1", "admin@acme.org"]


def _signed_files(kit: Path) -> list[str]:
    doc = json.loads((kit / "startup/signature.json").read_text())
    return sorted(doc["files"])


@pytest.mark.parametrize("name", KITS)
def test_intact_kit_loads(prod: Path, name: str) -> None:
    kit = load_kit(prod / name)
    assert kit.name == name
    assert kit.key_path.stat().st_mode & 0o777 == 0o600
    # every file of startup/ but the signature itself is signed
    startup = {f"startup/{p.name}" for p in (prod / name / "startup").iterdir()} - {"startup/signature.json"}
    assert startup <= set(kit.signed_files)


def test_policy_files_are_signed(prod: Path) -> None:
    assert "local/authorization.yml" in _signed_files(prod / "server1")
    assert "local/site_policy.yml" in _signed_files(prod / "site-1")


def _all_signed(prod: Path) -> list[tuple[str, str]]:
    return [(k, f) for k in KITS for f in _signed_files(prod / k)]


def test_one_changed_byte_in_any_signed_file_is_named(prod: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = _all_signed(prod)
    assert len(cases) >= 17
    for kit_name, rel in cases:
        path = prod / kit_name / rel
        original = path.read_bytes()
        flipped = bytearray(original)
        flipped[len(flipped) // 2] ^= 0x01
        path.write_bytes(bytes(flipped))
        try:
            assert main(["verify-kit", str(prod / kit_name)]) == 2, rel
            err = capsys.readouterr().err
            assert rel in err, err
            assert err.startswith("fedsec: error: ") and err.count("\n") == 1
        finally:
            path.write_bytes(original)
        assert main(["verify-kit", str(prod / kit_name)]) == 0
        capsys.readouterr()


def test_missing_signature_is_an_error(prod: Path) -> None:
    (prod / "site-1/startup/signature.json").unlink()
    with pytest.raises(KitError, match="signature.json: missing"):
        load_kit(prod / "site-1")


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b'{"format": "x", "files": {}}',
        b'{"format": "fedsec-kit-signature/1", "files": {"../x": "AA=="}}',
    ],
)
def test_unreadable_signature_is_an_error(prod: Path, content: bytes) -> None:
    (prod / "site-1/startup/signature.json").write_bytes(content)
    with pytest.raises(KitError, match="signature.json"):
        load_kit(prod / "site-1")


def test_added_file_in_startup_is_refused(prod: Path) -> None:
    (prod / "site-1/startup/evil.sh").write_text("echo hi\n")
    with pytest.raises(KitError, match="startup/evil.sh is not signed"):
        load_kit(prod / "site-1")


def test_removed_signed_file_is_named(prod: Path) -> None:
    (prod / "site-1/local/site_policy.yml").unlink()
    with pytest.raises(KitError, match="local/site_policy.yml: missing"):
        load_kit(prod / "site-1")


def test_swapped_files_are_refused(prod: Path) -> None:
    # the signature binds each file to its path: swapping two signed files fails
    a, b = prod / "site-1/startup/start.sh", prod / "site-1/startup/stop_fl.sh"
    ta, tb = a.read_bytes(), b.read_bytes()
    a.write_bytes(tb)
    b.write_bytes(ta)
    with pytest.raises(KitError, match="does not match its signature"):
        load_kit(prod / "site-1")


def test_kit_resigned_by_another_ca_with_foreign_root_fails_cert_check(prod: Path, tmp_path: Path) -> None:
    # a kit whose root CA was replaced (and everything re-signed) still fails: the cert is not from that CA
    from fedsec.pki import signing

    kit = prod / "site-1"
    key, root = certs.make_root("intruder", 10)
    (kit / "startup/rootCA.pem").write_bytes(certs.cert_pem(root))
    files = json.loads((kit / "startup/signature.json").read_text())["files"]
    (kit / "startup/signature.json").write_bytes(signing.sign(kit, files, key))
    with pytest.raises(KitError, match="not issued by this project's root CA"):
        load_kit(kit)


def test_not_a_kit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify-kit", str(tmp_path)]) == 2
    assert "has no startup/ folder" in capsys.readouterr().err
