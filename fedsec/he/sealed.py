"""Exact encryption of bytes ("FSX1"), and the FedOpt bundle ("FSO1") that carries it beside an FSH1 model.

FedOpt under HE keeps the global model and the optimizer's float64 state encrypted on the server,
which stores and forwards them unread; every site must decrypt the very bytes the others encrypted.
The fixed point of fedsec.he.codec (scale, clip, stochastic rounding) cannot promise that, so these
bytes are encrypted as they are: five bytes per slot (a value below 2**40, under the 43-bit plain
modulus, so BFV returns it exactly), 4096 slots per ciphertext, about three bytes of ciphertext per
byte. Nothing here is ever summed.

FSX1, integers little-endian::

    b"FSX1" | uint32 header length | UTF-8 JSON {"n_bytes": int, "n_ciphertexts": int}
    | n_ciphertexts records of (uint32 length | serialized TenSEAL BFV vector)

FSO1, what a FedOpt task or upload carries::

    b"FSO1" | uint32 header length | UTF-8 JSON {"digest": 64 hex digits, "state_bytes": int}
    | state_bytes bytes: an FSX1 container (the global model and optimizer state, fedsec.fedopt)
    | the rest: an FSH1 container (a task: the round's encrypted sum; an upload: the site's update),
      or nothing (a final evaluation's answer)

digest is the SHA-256 of the plain bytes sealed (fedsec.fedopt.digest). Every size is checked
against fedsec.limits before memory is taken. The server side (check_sealed) needs no key and
never decrypts; unseal checks every value is one a seal can have, which catches a wrong key.
"""

from __future__ import annotations

import io
import json
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsec import _deps, limits
from fedsec.errors import HEError, WireError
from fedsec.he import params as he_params
from fedsec.he.codec import load_vector
from fedsec.he.context import TENSEAL_ERRORS, first_parms_id, has_secret_key
from fedsec.wire import arrays

try:
    import tenseal as ts  # type: ignore[import-untyped]
except ImportError as exc:  # the he extra is not installed
    raise _deps.missing("tenseal", exc) from exc

SEALED_MAGIC = b"FSX1"
BUNDLE_MAGIC = b"FSO1"
BYTES_PER_SLOT = 5  # 40 bits: below the 43-bit plain modulus's half, so decryption gives them back unchanged
_SLOTS = he_params.POLY_MODULUS_DEGREE
_BYTES_PER_CIPHERTEXT = _SLOTS * BYTES_PER_SLOT
_PREFIX = struct.Struct("<4sI")  # magic, header length
_LENGTH = struct.Struct("<I")
_MAX_HEADER = 4096  # either header is two numbers or a digest
_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Bundle:
    """An FSO1 bundle's header: the digest of its sealed state, and where the parts are."""

    digest: str
    state_start: int  # offset of the FSX1 container
    state_bytes: int
    rest_start: int  # offset of the FSH1 container (== the total size when there is none)


def ciphertexts_for(n_bytes: int) -> int:
    """How many ciphertexts seal n_bytes bytes."""
    return -(-n_bytes // _BYTES_PER_CIPHERTEXT)


def sealed_bound(n_bytes: int) -> int:
    """The most bytes a seal of n_bytes bytes can take."""
    return _PREFIX.size + _MAX_HEADER + ciphertexts_for(n_bytes) * (_LENGTH.size + limits.MAX_HE_CIPHERTEXT_BYTES)


# ---------------------------------------------------------------- seal / unseal (sites)


def seal(ctx: Any, data: bytes) -> bytes:
    """data encrypted exactly under the client context ctx: an FSX1 container.

    Raises HEError if ctx holds no secret key, data is larger than limits.MAX_MODEL_BYTES, or TenSEAL fails.
    """
    if not has_secret_key(ctx):
        raise HEError("seal: the HE context holds no secret key (only a site can encrypt)")
    if len(data) > limits.MAX_MODEL_BYTES:
        raise HEError(f"seal: {len(data)} bytes, over the limit of {limits.MAX_MODEL_BYTES}")
    count = ciphertexts_for(len(data))
    out = io.BytesIO()
    out.write(_header(SEALED_MAGIC, {"n_bytes": len(data), "n_ciphertexts": count}))
    try:
        for i in range(count):
            record = ts.bfv_vector(ctx, _pack(data[i * _BYTES_PER_CIPHERTEXT : (i + 1) * _BYTES_PER_CIPHERTEXT]))
            raw = record.serialize()
            out.write(_LENGTH.pack(len(raw)) + raw)
    except TENSEAL_ERRORS as exc:
        raise HEError(f"seal: TenSEAL failed: {exc}") from exc
    return out.getvalue()


def unseal(ctx: Any, sealed: bytes | memoryview, where: str) -> bytes:
    """The bytes an FSX1 container seals, decrypted with the client context ctx.

    Raises HEError if ctx holds no secret key or a value is not one a seal can hold (a different
    federation's key, or corrupted data); WireError if the container is malformed.
    """
    if not has_secret_key(ctx):
        raise HEError(f"{where}: the HE context holds no secret key; only a site can decrypt")
    stream = io.BytesIO(sealed)
    n_bytes, count = _read_sealed_header(stream.read, len(sealed), where)
    parms_id = first_parms_id(ctx)
    pieces = []
    for i, record in enumerate(_records(stream.read, count, where)):
        vector = load_vector(ctx, parms_id, i, record, where)
        try:
            values = np.asarray(vector.decrypt(), dtype=np.int64)
        except TENSEAL_ERRORS as exc:
            raise HEError(f"{where}: sealed record {i} cannot be decrypted: {exc}") from exc
        pieces.append(_unpack(values, i, where))
    if stream.tell() != len(sealed):
        raise WireError(f"{where}: {len(sealed) - stream.tell()} bytes of trailing data after the sealed records")
    data = b"".join(pieces)
    if any(data[n_bytes:]):
        raise HEError(f"{where}: the sealed padding is not zero (a different federation's key, or corrupted data)")
    return data[:n_bytes]


def _pack(chunk: bytes) -> list[int]:
    raw = np.zeros(_BYTES_PER_CIPHERTEXT, dtype=np.uint8)
    raw[: len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
    wide = np.zeros((_SLOTS, 8), dtype=np.uint8)
    wide[:, :BYTES_PER_SLOT] = raw.reshape(_SLOTS, BYTES_PER_SLOT)
    values: list[int] = wide.view("<u8").reshape(-1).astype(np.int64).tolist()
    return values


def _unpack(values: np.ndarray, index: int, where: str) -> bytes:
    if values.shape != (_SLOTS,) or int(values.min()) < 0 or int(values.max()) >= 1 << (8 * BYTES_PER_SLOT):
        raise HEError(
            f"{where}: sealed record {index} does not decrypt to sealed bytes (a different federation's key, "
            "or corrupted data)"
        )
    return values.astype("<u8").view(np.uint8).reshape(_SLOTS, 8)[:, :BYTES_PER_SLOT].tobytes()


# ---------------------------------------------------------------- check (server)


def check_sealed(server_ctx: Any, read: Callable[[int], bytes], size: int, where: str) -> None:
    """Check that read gives an FSX1 container of size bytes, of valid fresh ciphertexts, then ends; never decrypts.

    Raises WireError naming what is wrong.
    """
    _, count = _read_sealed_header(read, size, where)
    parms_id = first_parms_id(server_ctx)
    for i, record in enumerate(_records(read, count, where)):
        load_vector(server_ctx, parms_id, i, record, where)
    if read(1):
        raise WireError(f"{where}: trailing data after the sealed records")


# ---------------------------------------------------------------- the bundle


def bundle_header(digest: str, state_bytes: int) -> bytes:
    """The FSO1 header of a bundle whose sealed state (state_bytes bytes, of plain digest digest) follows."""
    if not _DIGEST.fullmatch(digest):
        raise WireError("bundle: the digest must be 64 lower-case hex digits")
    return _header(BUNDLE_MAGIC, {"digest": digest, "state_bytes": state_bytes})


def read_bundle(read: Callable[[int], bytes], total: int, where: str) -> Bundle:
    """The header of the FSO1 bundle of total bytes that read gives (read is left at the sealed state)."""
    prefix = read(_PREFIX.size)
    magic, length = _PREFIX.unpack(prefix) if len(prefix) == _PREFIX.size else (b"", 0)
    if magic != BUNDLE_MAGIC:
        raise WireError(f"{where}: not a FedOpt bundle (bad magic {magic!r})")
    fields = _json_header(read, length, ("digest", "state_bytes"), where)
    digest, state_bytes = fields["digest"], fields["state_bytes"]
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise WireError(f"{where}: bundle header: digest must be 64 lower-case hex digits")
    start = _PREFIX.size + length
    if not _count(state_bytes) or state_bytes > total - start:
        raise WireError(f"{where}: bundle header: state_bytes must be a count within the {total} bytes")
    return Bundle(digest, start, state_bytes, start + state_bytes)


def split_bundle(data: bytes | memoryview, where: str) -> tuple[str, memoryview, memoryview]:
    """(digest, the sealed state, the rest) of the FSO1 bundle data."""
    view = memoryview(data)
    bundle = read_bundle(io.BytesIO(view).read, len(view), where)
    return bundle.digest, view[bundle.state_start : bundle.rest_start], view[bundle.rest_start :]


def _header(magic: bytes, doc: dict[str, Any]) -> bytes:
    raw = json.dumps(doc, separators=(",", ":")).encode()
    return _PREFIX.pack(magic, len(raw)) + raw


def _read_sealed_header(read: Callable[[int], bytes], total: int, where: str) -> tuple[int, int]:
    prefix = read(_PREFIX.size)
    magic, length = _PREFIX.unpack(prefix) if len(prefix) == _PREFIX.size else (b"", 0)
    if magic != SEALED_MAGIC:
        raise WireError(f"{where}: not a sealed container (bad magic {magic!r})")
    fields = _json_header(read, length, ("n_bytes", "n_ciphertexts"), where)
    n_bytes, count = fields["n_bytes"], fields["n_ciphertexts"]
    if not _count(n_bytes) or n_bytes > limits.MAX_MODEL_BYTES or count != ciphertexts_for(n_bytes):
        raise WireError(f"{where}: sealed header: n_bytes must be at most {limits.MAX_MODEL_BYTES}, with its count")
    least = _PREFIX.size + length + count * _LENGTH.size
    if not least <= total <= _PREFIX.size + length + count * (_LENGTH.size + limits.MAX_HE_CIPHERTEXT_BYTES):
        raise WireError(f"{where}: {total} bytes cannot hold {count} sealed records")
    return n_bytes, count


def _json_header(read: Callable[[int], bytes], length: int, keys: tuple[str, ...], where: str) -> dict[str, Any]:
    if length > _MAX_HEADER:
        raise WireError(f"{where}: header of {length} bytes is over the limit of {_MAX_HEADER}")
    raw = read(length)
    if len(raw) != length:
        raise WireError(f"{where}: truncated header")
    try:
        doc = arrays.strict_json(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise WireError(f"{where}: header is not valid JSON") from exc
    return arrays.json_fields(doc, keys, "header", where)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _records(read: Callable[[int], bytes], count: int, where: str) -> Iterator[bytes]:
    for i in range(count):
        prefix = read(_LENGTH.size)
        if len(prefix) < _LENGTH.size:
            raise WireError(f"{where}: truncated before sealed record {i}")
        (size,) = _LENGTH.unpack(prefix)
        if not 0 < size <= limits.MAX_HE_CIPHERTEXT_BYTES:
            raise WireError(f"{where}: sealed record {i} claims {size} bytes")
        record = read(size)
        if len(record) < size:
            raise WireError(f"{where}: truncated in sealed record {i}")
        yield record
