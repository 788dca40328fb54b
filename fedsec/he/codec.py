"""The encrypted model container "FSH1": encrypt on a client, sum on the server, decrypt on a client.

Layout, integers little-endian::

    b"FSH1" | uint32 header length | UTF-8 JSON header
    | n_ciphertexts records of (uint32 length | serialized TenSEAL BFV vector)

The header is ``{"tensors": [{"name", "dtype", "shape"}, ...], "clip": float, "scale_bits": int,
"n_values": int, "n_ciphertexts": int, "contributions": int}``; nothing else is allowed.

The plain values are the model's tensors flattened in order, each multiplied by the client's
weight w, clipped to [-clip, clip], scaled by 2**f (f = scale_bits(clip)) and stochastically
rounded; then round(w * 2**f) is appended (n_values = model values + 1). Each value fills one
slot (a signed FIELD_BITS-bit integer) and the slots are encrypted 4096 per ciphertext, the last
one padded with zeros. Summing ciphertexts sums the weighted values and the weights, so
decryption yields the weighted average and the total weight.

Encryption streams: encrypt_chunks yields the header, then each ciphertext record as soon as it
is made, quantising one ciphertext's values at a time (encrypt_model joins them). Every size from a
file is checked against fedsec.limits before memory is taken. The server
side (EncryptedSum) never decrypts and needs no key; decryption checks that every value lies in
the range a sum can have, which catches a wrong secret key or corrupted data.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedsec import _deps, _fs, limits
from fedsec.errors import HEError, WireError
from fedsec.he import params as he_params
from fedsec.he.context import TENSEAL_ERRORS, first_parms_id, has_secret_key
from fedsec.wire import arrays

try:
    import tenseal as ts  # type: ignore[import-untyped]
except ImportError as exc:  # the he extra is not installed
    raise _deps.missing("tenseal", exc) from exc

log = logging.getLogger(__name__)

MAGIC = b"FSH1"
FILE_MODE = 0o600  # a sum of updates is the federation's private data
DTYPES = tuple(d for d in arrays.DTYPES if d != "bool")  # what an encrypted model may hold

_PREFIX = struct.Struct("<4sI")  # magic, header length
_LENGTH = struct.Struct("<I")  # before each ciphertext record
_HEADER_KEYS = ("tensors", "clip", "scale_bits", "n_values", "n_ciphertexts", "contributions")
_TENSOR_KEYS = ("name", "dtype", "shape")
_SLOTS = he_params.POLY_MODULUS_DEGREE
_CIPHERTEXT_POLYS = 2  # a fresh or summed ciphertext; never multiplied


@dataclass(frozen=True)
class EncryptedHeader:
    """The header of an encrypted model."""

    specs: tuple[arrays.TensorSpec, ...]  # the plain model's tensors (no bool)
    clip: float
    scale_bits: int
    n_values: int  # model values + 1 (the weight, last)
    n_ciphertexts: int  # ceil(ceil(n_values / 2) / 4096)
    contributions: int  # clients summed in it (1 for an upload)


def ciphertexts_for(n_values: int) -> int:
    """How many ciphertexts hold n_values values."""
    slots = -(-n_values // he_params.VALUES_PER_SLOT)
    return -(-slots // _SLOTS)


# ---------------------------------------------------------------- encrypt (client)


def encrypt_model(
    ctx: Any,
    params: Mapping[str, NDArray[Any]],
    weight: float,
    clip: float,
    rng: np.random.Generator | None = None,
    max_clients: int = he_params.MAX_CLIENTS,
) -> bytes:
    """The FSH1 container of params, weighted by weight and clipped to [-clip, clip], whole.

    b"".join(encrypt_chunks(...)): see there for what it raises.
    """
    return b"".join(encrypt_chunks(ctx, params, weight, clip, rng, max_clients))


def encrypt_chunks(
    ctx: Any,
    params: Mapping[str, NDArray[Any]],
    weight: float,
    clip: float,
    rng: np.random.Generator | None = None,
    max_clients: int = he_params.MAX_CLIENTS,
) -> Iterator[bytes]:
    """The FSH1 container of params, weighted by weight and clipped to [-clip, clip], as it is produced.

    Yields the prefix and header first, then each ciphertext record as soon as it is encrypted:
    memory beyond params stays one ciphertext's values, whatever the model's size, and a caller
    can send or write each piece before the next is made. ctx is the client context (encryption
    is symmetric: it needs the secret key). The weight is quantised to round(weight * 2**f) / 2**f
    before use so the average stays exact. Values clipped are counted and logged at the end.
    Raises (here, before anything is yielded) HEError if ctx holds no secret key, weight is not
    in (0, 1] (or rounds to 0), clip is invalid, a tensor is bool or not finite; WireError if
    params could not be stored (see arrays.specs_of); and, while iterating, HEError if TenSEAL fails.
    """
    if not has_secret_key(ctx):
        raise HEError("encrypt: the HE context holds no secret key (only a client context can encrypt)")
    bits = he_params.scale_bits(clip, max_clients)
    weight_int = _weight_int(weight, bits)
    specs = arrays.specs_of(params, "model to encrypt")
    _check_model_specs(specs, "model to encrypt", HEError)
    flat = [np.asarray(params[spec.name]).reshape(-1) for spec in specs]
    for spec, values in zip(specs, flat, strict=True):
        if values.size and not np.isfinite(values).all():
            raise HEError(f"encrypt: tensor {spec.name!r} holds NaN or infinite values")
    n = sum(int(values.size) for values in flat)
    header = EncryptedHeader(specs, float(clip), bits, n + 1, ciphertexts_for(n + 1), 1)
    quantiser = _Quantiser(weight_int, clip, bits, rng or np.random.default_rng())
    return _encrypted_records(ctx, _header_bytes(header), quantiser, flat, n)


def _encrypted_records(
    ctx: Any, header: bytes, quantiser: _Quantiser, flat: list[NDArray[Any]], n: int
) -> Iterator[bytes]:
    yield header
    try:
        for values in _windows(flat, quantiser.weight_int, _SLOTS * he_params.VALUES_PER_SLOT):
            record = ts.bfv_vector(ctx, _pack(quantiser(values))).serialize()
            yield _LENGTH.pack(len(record)) + record
    except TENSEAL_ERRORS as exc:
        raise HEError(f"encrypt: TenSEAL failed: {exc}") from exc
    if quantiser.clipped:
        log.warning("he encrypt clipped=%d of=%d clip=%s", quantiser.clipped, n, quantiser.clip)


def _weight_int(weight: float, bits: int) -> int:
    ok = not isinstance(weight, bool) and isinstance(weight, int | float | np.floating) and 0 < weight <= 1
    if not ok:
        raise HEError(f"encrypt: the weight must be in (0, 1], got {weight!r}")
    weight_int = round(float(weight) * (1 << bits))
    if weight_int < 1:
        raise HEError(f"encrypt: the weight {weight} is below the resolution 2**-{bits} of clip's scale")
    return weight_int


def _windows(flat: list[NDArray[Any]], weight_int: int, size: int) -> Iterator[NDArray[np.float64]]:
    """The model's values in order, then a NaN standing for the weight, in float64 windows of size values.

    The NaN marks the weight's place: the quantiser puts weight_int there.
    """
    window = np.empty(size, dtype=np.float64)
    filled = 0
    for values in [*flat, np.array([np.nan])]:
        pos = 0
        while pos < values.size:
            take = min(size - filled, values.size - pos)
            window[filled : filled + take] = values[pos : pos + take]
            filled += take
            pos += take
            if filled == size:
                yield window
                filled = 0
    if filled:
        yield window[:filled]


@dataclass
class _Quantiser:
    """Model values -> the integers that are encrypted: weighted, clipped, scaled, stochastically rounded."""

    weight_int: int
    clip: float
    bits: int
    rng: np.random.Generator
    clipped: int = 0

    def __call__(self, x: NDArray[np.float64]) -> NDArray[np.int64]:
        """x's values quantised (in place), and the weight (a NaN in x, the last value) as weight_int."""
        weight_at = np.flatnonzero(np.isnan(x))
        x *= self.weight_int / 2**self.bits
        self.clipped += int(np.count_nonzero(np.abs(x) > self.clip))
        np.clip(x, -self.clip, self.clip, out=x)
        x *= 2.0**self.bits
        values = int(weight_at[0]) if len(weight_at) else len(x)  # the weight, last, draws no random number
        lower = np.floor(x)
        x -= lower  # the fraction, exactly (a float64 less its floor)
        # up by one with the fraction's probability: unbiased at any magnitude (floor(x + U) is not once x + U
        # rounds to float64's spacing, 2**-12 at 2**40)
        x[:values] = self.rng.random(values) < x[:values]
        x += lower
        bound = math.ceil(max(self.clip, 1.0) * 2.0**self.bits)  # within per_client_bound(max_clients)
        np.clip(x, -bound, bound, out=x)  # a no-op unless x + U rounded up past the bound
        out = np.nan_to_num(x, nan=0.0).astype(np.int64)
        out[weight_at] = self.weight_int
        return out


def _pack(values: NDArray[np.int64]) -> NDArray[np.int64]:
    """SLOTS slots of one value each, zero-padded."""
    slots = np.zeros(_SLOTS * he_params.VALUES_PER_SLOT, dtype=np.int64)
    slots[: len(values)] = values
    return slots


# ---------------------------------------------------------------- sum (server)


class EncryptedSum:
    """Server side: adds uploads into running sums, one ciphertext at a time; never decrypts."""

    def __init__(
        self,
        server_ctx: Any,
        expected: tuple[arrays.TensorSpec, ...],
        clip: float,
        max_clients: int = he_params.MAX_CLIENTS,
    ) -> None:
        """Raises HEError if server_ctx holds a secret key, clip or max_clients is invalid, or a tensor is bool."""
        if has_secret_key(server_ctx):
            raise HEError("encrypted sum: the HE context holds a secret key; the server must never have one")
        self._ctx = server_ctx
        self._parms_id = first_parms_id(server_ctx)
        self._expected = tuple(expected)
        self._clip = float(clip)
        self._max_clients = max_clients
        self._bits = he_params.scale_bits(clip, max_clients)
        _check_model_specs(self._expected, "encrypted sum: expected model", HEError)
        self._n_values = sum(math.prod(s.shape) for s in self._expected) + 1
        self._sums: list[Any] = []
        self._count = 0

    @property
    def count(self) -> int:
        """How many uploads have been added."""
        return self._count

    def add_file(self, path: Path, where: str, offset: int = 0) -> None:
        """Add the upload at path (from byte offset on: the rest of a FedOpt bundle) into the sums, all or nothing.

        Raises WireError if the file is malformed, not an upload (contributions != 1), does
        not match the expected specs or clip, or a record is not a valid ciphertext; HEError
        if the sum would exceed MAX_CLIENTS contributions; OSError if it cannot be read. On
        any error the sums are unchanged.
        """
        with path.open("rb") as f:
            f.seek(offset)
            header, _ = _read_header(f.read, os.fstat(f.fileno()).st_size - offset, where)
            self._check_upload(header, where)
            records = enumerate(_records(f.read, header, where))
            loaded = [load_vector(self._ctx, self._parms_id, i, record, where) for i, record in records]
            if f.read(1):
                raise WireError(f"{where}: trailing data after the last ciphertext (the file grew while read)")
        if not self._sums:
            self._sums = loaded
        else:
            for total, vector in zip(self._sums, loaded, strict=True):
                total.add_(vector)  # cannot fail: both were checked to be fresh ciphertexts of this context
        self._count += 1

    def write(self, dest: Path) -> None:
        """Write the sums to dest as FSH1 with contributions = count: atomic, mode 0600.

        Raises HEError if nothing was added; OSError if the file cannot be written.
        """
        if not self._count:
            raise HEError(f"encrypted sum {dest}: nothing was added")
        header = EncryptedHeader(
            self._expected, self._clip, self._bits, self._n_values, ciphertexts_for(self._n_values), self._count
        )
        with _fs.atomic_file(dest, FILE_MODE) as f:
            f.write(_header_bytes(header))
            for total in self._sums:
                record = total.serialize()
                f.write(_LENGTH.pack(len(record)))
                f.write(record)

    def _check_upload(self, header: EncryptedHeader, where: str) -> None:
        arrays.check_compatible(header.specs, self._expected, where)
        if header.clip != self._clip or header.scale_bits != self._bits:
            raise WireError(
                f"{where}: encrypted with clip {header.clip} (2**-{header.scale_bits}), "
                f"expected clip {self._clip} (2**-{self._bits})"
            )
        if header.contributions != 1:
            raise WireError(f"{where}: holds {header.contributions} contributions, an upload holds 1")
        if self._count + 1 > self._max_clients:
            raise HEError(
                f"{where}: would be contribution {self._count + 1}; this job's encrypted sum holds at most "
                f"{self._max_clients} exactly"
            )


# ---------------------------------------------------------------- decrypt (client)


def decrypt_model(
    ctx: Any, data: bytes | memoryview, where: str, *, float64: bool = False
) -> tuple[dict[str, NDArray[Any]], float]:
    """The weighted average in the FSH1 container data, and its total weight.

    ctx is the client context. Each value is sum / sum of weights, reshaped to its spec and
    cast to the spec's dtype (integers rounded and clipped to the dtype's range), or, with
    float64, left as that float64 quotient (what an optimizer step takes: fedsec.fedopt). Raises
    HEError if ctx holds no secret key or the data does not decrypt to values a sum can hold
    (a wrong key, or corrupted data); WireError if data is malformed.
    """
    if not has_secret_key(ctx):
        raise HEError(f"{where}: the HE context holds no secret key; only a client can decrypt")
    stream = io.BytesIO(data)
    header, _ = _read_header(stream.read, len(data), where)
    parms_id = first_parms_id(ctx)
    slots = np.empty(header.n_ciphertexts * _SLOTS, dtype=np.int64)
    for i, record in enumerate(_records(stream.read, header, where)):
        vector = load_vector(ctx, parms_id, i, record, where)
        try:
            slots[i * _SLOTS : (i + 1) * _SLOTS] = vector.decrypt()
        except TENSEAL_ERRORS as exc:
            raise HEError(f"{where}: ciphertext record {i} cannot be decrypted: {exc}") from exc
    if stream.tell() != len(data):
        raise WireError(f"{where}: {len(data) - stream.tell()} bytes of trailing data after the last ciphertext")
    values = _unpack(slots, header, where)
    return _split(values, header, float64), int(values[-1]) / 2**header.scale_bits


def _unpack(slots: NDArray[np.int64], header: EncryptedHeader, where: str) -> NDArray[np.int64]:
    """The summed values (weight last), checked against the range a sum can have.

    A slot decrypts to its signed value (centred on 0 modulo the plain modulus), one value per slot.
    """
    values = slots
    bound = header.contributions * math.ceil(max(header.clip, 1.0) * 2**header.scale_bits)
    padding = values[header.n_values :]
    values = values[: header.n_values]
    weight = int(values[-1])
    in_range = (
        not padding.any()
        and int(np.abs(values).max()) <= bound
        and header.contributions <= weight <= header.contributions * 2**header.scale_bits
    )
    if not in_range:
        raise HEError(
            f"{where}: does not decrypt to the sum of {header.contributions} contributions "
            "(a different federation's key, or corrupted data)"
        )
    return values


def _split(values: NDArray[np.int64], header: EncryptedHeader, float64: bool = False) -> dict[str, NDArray[Any]]:
    weight = float(values[-1])
    out: dict[str, NDArray[Any]] = {}
    pos = 0
    for spec in header.specs:
        size = math.prod(spec.shape)
        plain = (values[pos : pos + size] / weight).reshape(spec.shape)
        pos += size
        if float64:
            out[spec.name] = plain
            continue
        dtype = np.dtype(spec.dtype)
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            plain = np.clip(np.rint(plain), info.min, info.max)
        out[spec.name] = plain.astype(dtype)
    return out


# ---------------------------------------------------------------- the container


def read_header(data_or_path: bytes | Path, where: str) -> EncryptedHeader:
    """The header of the FSH1 container in data_or_path (bytes, or a file read up to its header).

    Raises WireError if the header is malformed, over the limits, inconsistent with itself or
    with the total size; OSError if the file cannot be read. Ciphertexts are not checked.
    """
    if isinstance(data_or_path, Path):
        with data_or_path.open("rb") as f:
            return _read_header(f.read, os.fstat(f.fileno()).st_size, where)[0]
    return _read_header(io.BytesIO(data_or_path).read, len(data_or_path), where)[0]


def _read_header(read: Callable[[int], bytes], total: int, where: str) -> tuple[EncryptedHeader, int]:
    """Read prefix and header; check the total size is possible; return the header and its end."""
    prefix = read(_PREFIX.size)
    if len(prefix) < _PREFIX.size:
        raise WireError(f"{where}: truncated: {len(prefix)} bytes, too short for an encrypted model")
    magic, header_len = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise WireError(f"{where}: bad magic {magic!r}, not an encrypted model")
    if header_len > limits.MAX_HE_HEADER_BYTES:
        raise WireError(f"{where}: header of {header_len} bytes is over the limit of {limits.MAX_HE_HEADER_BYTES}")
    raw = read(header_len)
    if len(raw) < header_len:
        raise WireError(f"{where}: truncated header: {len(raw)} of {header_len} bytes")
    header = _parse_header(raw, where)
    end = _PREFIX.size + header_len
    least = end + header.n_ciphertexts * _LENGTH.size
    most = end + header.n_ciphertexts * (_LENGTH.size + limits.MAX_HE_CIPHERTEXT_BYTES)
    if total < least:
        raise WireError(f"{where}: truncated: {total} bytes, {header.n_ciphertexts} ciphertexts need over {least}")
    if total > most:
        raise WireError(f"{where}: {total} bytes, more than {header.n_ciphertexts} ciphertexts can take")
    return header, end


def _records(read: Callable[[int], bytes], header: EncryptedHeader, where: str) -> Iterator[bytes]:
    """The ciphertext records, each bounded; the caller checks nothing follows them."""
    for i in range(header.n_ciphertexts):
        prefix = read(_LENGTH.size)
        if len(prefix) < _LENGTH.size:
            raise WireError(f"{where}: truncated before ciphertext record {i}")
        (size,) = _LENGTH.unpack(prefix)
        if not 0 < size <= limits.MAX_HE_CIPHERTEXT_BYTES:
            raise WireError(
                f"{where}: ciphertext record {i} claims {size} bytes, not within 1..{limits.MAX_HE_CIPHERTEXT_BYTES}"
            )
        record = read(size)
        if len(record) < size:
            raise WireError(f"{where}: truncated in ciphertext record {i}: {len(record)} of {size} bytes")
        yield record


def load_vector(ctx: Any, parms_id: list[int], index: int, record: bytes, where: str) -> Any:
    """One record as a BFV vector under ctx: 4096 slots in one fresh-level, two-polynomial ciphertext."""
    try:
        vector = ts.bfv_vector_from(ctx, record)
        cts = vector.ciphertext()
        ok = (
            vector.size() == _SLOTS
            and len(cts) == 1
            and cts[0].size() == _CIPHERTEXT_POLYS
            and not cts[0].is_ntt_form()
            and cts[0].parms_id() == parms_id
        )
    except TENSEAL_ERRORS as exc:
        raise WireError(
            f"{where}: ciphertext record {index} is not a valid ciphertext for fedsec's HE context: {exc}"
        ) from exc
    if not ok:
        raise WireError(f"{where}: ciphertext record {index} is not one {_SLOTS}-slot ciphertext at the fresh level")
    return vector


def _header_bytes(header: EncryptedHeader) -> bytes:
    doc = {
        "tensors": [{"name": s.name, "dtype": s.dtype, "shape": list(s.shape)} for s in header.specs],
        "clip": header.clip,
        "scale_bits": header.scale_bits,
        "n_values": header.n_values,
        "n_ciphertexts": header.n_ciphertexts,
        "contributions": header.contributions,
    }
    raw = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if len(raw) > limits.MAX_HE_HEADER_BYTES:
        raise HEError(f"encrypted model header of {len(raw)} bytes is over the limit of {limits.MAX_HE_HEADER_BYTES}")
    return _PREFIX.pack(MAGIC, len(raw)) + raw


def _parse_header(raw: bytes, where: str) -> EncryptedHeader:
    try:
        doc = arrays.strict_json(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise WireError(f"{where}: header is not UTF-8") from exc
    except (ValueError, RecursionError) as exc:
        raise WireError(f"{where}: header is not valid JSON: {exc}") from exc
    fields = arrays.json_fields(doc, _HEADER_KEYS, "header", where)
    entries = fields["tensors"]
    if not isinstance(entries, list) or len(entries) > limits.MAX_TENSORS:
        raise WireError(f"{where}: header: 'tensors' must be a list of at most {limits.MAX_TENSORS} tensors")
    specs = tuple(_parse_spec(entry, f"header tensors[{i}]", where) for i, entry in enumerate(entries))
    _check_model_specs(specs, where, WireError)
    clip = fields["clip"]
    if isinstance(clip, bool) or not isinstance(clip, int | float):
        raise WireError(f"{where}: header: clip must be a number")
    try:  # the scale that some max_clients in 1..MAX_CLIENTS gives this clip
        allowed = {he_params.scale_bits(clip, m) for m in range(1, he_params.MAX_CLIENTS + 1)}
    except HEError as exc:
        raise WireError(f"{where}: header: {exc}") from exc
    bits = fields["scale_bits"] if fields["scale_bits"] in allowed else min(allowed)
    counts = {key: fields[key] for key in _HEADER_KEYS[2:]}
    for key, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise WireError(f"{where}: header: {key} must be an integer")
    n_values = sum(math.prod(s.shape) for s in specs) + 1
    wanted = {"scale_bits": bits, "n_values": n_values, "n_ciphertexts": ciphertexts_for(n_values)}
    for key, value in wanted.items():
        if counts[key] != value:
            raise WireError(f"{where}: header: {key} is {counts[key]}, the tensors and clip imply {value}")
    if not 1 <= counts["contributions"] <= he_params.MAX_CLIENTS:
        raise WireError(f"{where}: header: contributions must be in 1..{he_params.MAX_CLIENTS}")
    return EncryptedHeader(specs, float(clip), bits, n_values, wanted["n_ciphertexts"], counts["contributions"])


def _parse_spec(entry: Any, at: str, where: str) -> arrays.TensorSpec:
    fields = arrays.json_fields(entry, _TENSOR_KEYS, at, where)
    name, dtype, shape = fields["name"], fields["dtype"], fields["shape"]
    if not isinstance(name, str) or not isinstance(dtype, str):
        raise WireError(f"{where}: {at}: name and dtype must be strings")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise WireError(f"{where}: {at}: shape must be a list of integers")
    return arrays.TensorSpec(name, dtype, tuple(shape))


def _check_model_specs(specs: Sequence[arrays.TensorSpec], where: str, error: type[Exception]) -> None:
    """What an encrypted model may hold: named, non-bool tensors within the limits."""
    seen: set[str] = set()
    total = 0
    if len(specs) > limits.MAX_TENSORS:
        raise error(f"{where}: {len(specs)} tensors, over the limit of {limits.MAX_TENSORS}")
    for spec in specs:
        name = spec.name
        if not name or len(name) > limits.MAX_TENSOR_NAME or not name.isprintable() or name in seen:
            raise error(f"{where}: bad or duplicate tensor name {name[:40]!r}")
        seen.add(name)
        if spec.dtype not in DTYPES:
            raise error(f"{where}: tensor {name!r} has dtype {spec.dtype!r}; encrypted models hold {', '.join(DTYPES)}")
        if len(spec.shape) > limits.MAX_TENSOR_DIMS or any(d < 0 or d > limits.MAX_HE_VALUES for d in spec.shape):
            raise error(f"{where}: tensor {name!r} has a bad shape {spec.shape}")
        total += math.prod(spec.shape)
        if total >= limits.MAX_HE_VALUES:
            raise error(f"{where}: tensor {name!r} takes the model over {limits.MAX_HE_VALUES - 1} values")
