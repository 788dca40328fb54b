"""Signatures over a startup kit's files: startup/signature.json.

The root CA key signs, for each file, a digest bound to the file's path in
the kit, so a file can be neither changed nor moved to another name. verify()
checks every listed file and refuses any unlisted file in startup/; a missing
or unreadable signature.json is an error, never a silent skip.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from fedsec import limits
from fedsec.errors import KitError
from fedsec.pki.certs import PrivateKey

SIGNATURE_FILE = "startup/signature.json"
_FORMAT = "fedsec-kit-signature/1"


def _message(relpath: str, data: bytes) -> bytes:
    return b"fedsec-kit-file/1\0" + relpath.encode() + b"\0" + hashlib.sha256(data).digest()


def sign(kit: Path, relpaths: Iterable[str], ca_key: PrivateKey) -> bytes:
    """The content of signature.json for the given kit-relative files."""
    entries = {}
    for rel in sorted(relpaths):
        data = (kit / rel).read_bytes()
        sig = ca_key.sign(_message(rel, data), ec.ECDSA(hashes.SHA256()))
        entries[rel] = base64.b64encode(sig).decode()
    return (json.dumps({"format": _FORMAT, "files": entries}, indent=2) + "\n").encode()


def _read(path: Path, limit: int, where: str) -> bytes:
    if path.is_symlink() or not path.is_file():
        raise KitError(f"{where}: missing or not a regular file")
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise KitError(f"{where}: cannot read: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise KitError(f"{where}: larger than the limit of {limit} bytes")
    return data


def _entries(kit: Path, label: str) -> dict[str, bytes]:
    raw = _read(kit / SIGNATURE_FILE, limits.MAX_SIGNATURE_FILE_BYTES, f"kit {label}: {SIGNATURE_FILE}")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KitError(f"kit {label}: {SIGNATURE_FILE} is not valid JSON") from exc
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT or not isinstance(doc.get("files"), dict):
        raise KitError(f"kit {label}: {SIGNATURE_FILE} is not a fedsec kit signature")
    files: dict[str, bytes] = {}
    if len(doc["files"]) > limits.MAX_KIT_FILES:
        raise KitError(f"kit {label}: {SIGNATURE_FILE} lists more than {limits.MAX_KIT_FILES} files")
    for rel, sig in doc["files"].items():
        parts = Path(rel).parts
        if (
            not isinstance(sig, str)
            or len(parts) != 2
            or parts[0] not in ("startup", "local")
            or parts[1] in ("..", ".")
            or rel == SIGNATURE_FILE
        ):
            raise KitError(f"kit {label}: {SIGNATURE_FILE} has a bad entry {rel!r}")
        try:
            files[rel] = base64.b64decode(sig, validate=True)
        except binascii.Error as exc:
            raise KitError(f"kit {label}: {SIGNATURE_FILE}: the signature of {rel} is not base64") from exc
    return files


def verify(kit: Path, ca_public_key: ec.EllipticCurvePublicKey, label: str) -> list[str]:
    """Check every signed file of kit; return their kit-relative paths.

    Raises KitError naming the first file that is missing, changed or unsigned.
    """
    entries = _entries(kit, label)
    for rel in sorted(entries):
        data = _read(kit / rel, limits.MAX_KIT_FILE_BYTES, f"kit {label}: {rel}")
        try:
            ca_public_key.verify(entries[rel], _message(rel, data), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature as exc:
            raise KitError(f"kit {label}: {rel} does not match its signature") from exc
    startup = kit / "startup"
    present = sorted(p.name for p in startup.iterdir()) if startup.is_dir() else []
    for name in present:
        rel = f"startup/{name}"
        if rel != SIGNATURE_FILE and rel not in entries:
            raise KitError(f"kit {label}: {rel} is not signed (a file was added to startup/)")
    return sorted(entries)
