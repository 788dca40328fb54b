"""The array container: a model as named arrays, each stored as dtype + shape + raw bytes.

Layout, integers little-endian::

    b"FSA1" | uint32 header length | UTF-8 JSON header | zero padding to a multiple of 8
    | tensor 0 data | zero padding to 8 | tensor 1 data | zero padding to 8 | ...

The header is ``{"tensors": [{"name": str, "dtype": str, "shape": [int, ...]}, ...]}``.
Tensor data follows in header order, C order, little-endian; every tensor starts at a
multiple of 8 bytes. Padding must be zero and the data must end exactly where the header
says, so one model has one encoding.

This module owns the format. Every count, length and size a header claims is checked
against fedsec.limits before memory is taken for it. It must never unpickle, eval, or let
numpy interpret any dtype outside DTYPES; it never imports grpc.
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn

import numpy as np
from numpy.typing import NDArray

from fedsec import _fs, limits
from fedsec.errors import WireError

MAGIC = b"FSA1"
DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool")
FILE_MODE = 0o600  # model weights are the federation's private data

_PREFIX = struct.Struct("<4sI")  # magic, header length
_ALIGN = 8
_WIRE_DTYPES = {name: np.dtype(name).newbyteorder("<") for name in DTYPES}
_HEADER_KEYS = ("tensors",)
_TENSOR_KEYS = ("name", "dtype", "shape")
MAX_DIFFERENCES = 3  # the differences one refusal names


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a container: its name, dtype (one of DTYPES) and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """The size of the tensor's data in bytes, without padding."""
        return _WIRE_DTYPES[self.dtype].itemsize * math.prod(self.shape)


def specs_of(arrays: Mapping[str, NDArray[Any]], where: str = "arrays") -> tuple[TensorSpec, ...]:
    """The specs of in-memory arrays, in order.

    Raises WireError if a value is not a numpy array or the arrays could not be stored
    (a dtype outside DTYPES, a bad or duplicate name, too many dims, tensors or bytes).
    """
    specs = []
    for name, array in arrays.items():
        if not isinstance(array, np.ndarray):
            raise WireError(f"{where}: tensor {name!r} is a {type(array).__name__}, not a numpy array")
        dtype = array.dtype.name if array.dtype.name in _WIRE_DTYPES else str(array.dtype)
        specs.append(TensorSpec(name, dtype, tuple(int(d) for d in array.shape)))
    _check_specs(specs, where)
    return tuple(specs)


def encode(arrays: Mapping[str, NDArray[Any]], where: str = "arrays") -> bytes:
    """The container holding arrays, as one bytes object (for small models; see write_file).

    Non-contiguous arrays are written in C order and big-endian ones as little-endian.
    Raises WireError as specs_of does.
    """
    specs = specs_of(arrays, where)
    header = _header_bytes(specs, where)
    out = io.BytesIO()
    _write_body(out, header, specs, arrays, where)
    return out.getvalue()


def write_file(path: Path, arrays: Mapping[str, NDArray[Any]], where: str | None = None) -> None:
    """Write arrays to path as a container, atomically and one tensor at a time.

    The data goes to a temporary file (mode 0600) in path's directory that is renamed over
    path only once complete, so path holds either its old content or the whole new one.
    Raises WireError as specs_of does (before any file is created), OSError if the file
    cannot be written.
    """
    where = where or f"array file {path}"
    specs = specs_of(arrays, where)
    header = _header_bytes(specs, where)
    with _fs.atomic_file(path, FILE_MODE) as f:
        _write_body(f, header, specs, arrays, where)


def decode(data: bytes | memoryview, where: str = "arrays") -> dict[str, NDArray[Any]]:
    """The arrays of a container held in memory, in header order.

    Each array is a fresh copy that owns its memory and is writable; nothing aliases data.
    Raises WireError if data is not a valid container within the limits.
    """
    view = memoryview(data).cast("B")
    pos = 0

    def read(n: int) -> bytes:
        nonlocal pos
        chunk = bytes(view[pos : pos + n])
        pos += len(chunk)
        return chunk

    specs, offset = _read_header(read, where)
    _check_size(len(view), _total_size(specs, offset), where)
    out: dict[str, NDArray[Any]] = {}
    for spec in specs:
        array = _empty(spec)
        end = offset + spec.nbytes
        _byte_view(array)[:] = view[offset:end]
        _check_data(spec, array, bytes(view[end : end + _pad(spec.nbytes)]), where)
        out[spec.name] = array
        offset = end + _pad(spec.nbytes)
    return out


def read_specs(path: Path, where: str | None = None) -> tuple[TensorSpec, ...]:
    """The specs of the container file at path, reading its header only.

    Raises WireError if the header is invalid or the file's size is not exactly what the
    header implies; OSError if the file cannot be read. Tensor data is not checked.
    """
    where = where or f"array file {path}"
    with path.open("rb") as f:
        specs, offset = _read_header(f.read, where)
        _check_size(os.fstat(f.fileno()).st_size, _total_size(specs, offset), where)
    return specs


def iter_file(path: Path, where: str | None = None) -> Iterator[tuple[str, NDArray[Any]]]:
    """Yield (name, array) for each tensor of the container file at path, in order.

    Only the tensor being yielded is in memory; each array owns its memory. The header and
    file size are checked before the first tensor is read. Raises WireError (while
    iterating) if the file is not a valid container within the limits, OSError if it
    cannot be read.
    """
    where = where or f"array file {path}"
    with path.open("rb") as f:
        specs, data_start = _read_header(f.read, where)
        _check_size(os.fstat(f.fileno()).st_size, _total_size(specs, data_start), where)
        for spec in specs:
            array = _empty(spec)
            _read_into(f, _byte_view(array), spec, where)
            _check_data(spec, array, f.read(_pad(spec.nbytes)), where)
            yield spec.name, array
        if f.read(1):
            raise WireError(f"{where}: trailing data after the last tensor (the file grew while read)")


def read_file(path: Path, where: str | None = None) -> dict[str, NDArray[Any]]:
    """All arrays of the container file at path, in order; raises as iter_file does."""
    return dict(iter_file(path, where))


def differences(specs: Sequence[TensorSpec], model: Sequence[TensorSpec]) -> list[str]:
    """How the tensors specs describe differ from the model's, in model terms; [] when they fit.

    Each entry names one tensor and the problem: missing, not in the model, another dtype,
    another shape (both shapes). Only when names, dtypes and shapes all agree but the order
    does not is the order named. Never a byte count: a person compares these with a model.
    """
    got = {s.name: s for s in specs}
    want = {s.name: s for s in model}
    out: list[str] = []
    for spec in model:
        mine = got.get(spec.name)
        if mine is None:
            out.append(f"tensor {spec.name!r} is missing (the model has it: {spec.dtype} {spec.shape})")
        elif mine.dtype != spec.dtype:
            out.append(f"tensor {spec.name!r} has dtype {mine.dtype}, the model has {spec.dtype}")
        elif mine.shape != spec.shape:
            out.append(f"tensor {spec.name!r} has shape {mine.shape}, the model has {spec.shape}")
    out += [f"tensor {s.name!r} is not in the model" for s in specs if s.name not in want]
    if not out and len(specs) != len(model):  # duplicates; _check_specs refuses them in files
        out.append(f"{len(specs)} tensors, the model has {len(model)}")
    if not out:
        for i, (mine, spec) in enumerate(zip(specs, model, strict=True)):
            if mine.name != spec.name:
                order = f"#{i} is {mine.name!r}, the model's is {spec.name!r}"
                out.append(f"the tensors are in another order than the model's: {order}")
                break
    return out


def check_compatible(specs: Sequence[TensorSpec], expected: Sequence[TensorSpec], where: str) -> None:
    """Check that specs have the same names in the same order, dtypes and shapes as expected (the model).

    Raises WireError naming the first differences (see differences), at most MAX_DIFFERENCES of them.
    """
    found = differences(specs, expected)
    if not found:
        return
    text = "; ".join(found[:MAX_DIFFERENCES])
    if len(found) > MAX_DIFFERENCES:
        text += f"; and {len(found) - MAX_DIFFERENCES} more differences"
    raise WireError(f"{where}: {text}")


def read_header(read: Callable[[int], bytes], where: str) -> tuple[TensorSpec, ...]:
    """The specs in a container's header, read through read(n) (the first bytes of a stream, say).

    Reads only the prefix, the header and its padding, each bounded by fedsec.limits before it
    is read. Raises WireError if they are not a valid header.
    """
    return _read_header(read, where)[0]


def check_finite(name: str, array: NDArray[Any], where: str) -> None:
    """Raise WireError if the floating-point array holds NaN or an infinity; other dtypes pass."""
    if array.dtype.kind != "f" or array.size == 0:
        return
    # min and max are NaN or infinite exactly when some element is, without a mask as big as the array.
    if np.isfinite(array.min()) and np.isfinite(array.max()):
        return
    nans = int(np.count_nonzero(np.isnan(array)))
    infs = int(np.count_nonzero(np.isinf(array)))
    raise WireError(f"{where}: tensor {name!r} has {nans} NaN and {infs} infinite values")


# ---------------------------------------------------------------- writing


def _header_bytes(specs: Sequence[TensorSpec], where: str) -> bytes:
    doc = {"tensors": [{"name": s.name, "dtype": s.dtype, "shape": list(s.shape)} for s in specs]}
    header = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if len(header) > limits.MAX_ARRAY_HEADER_BYTES:
        raise WireError(f"{where}: header of {len(header)} bytes is over the limit of {limits.MAX_ARRAY_HEADER_BYTES}")
    return header


def _write_body(
    f: IO[bytes], header: bytes, specs: Sequence[TensorSpec], arrays: Mapping[str, NDArray[Any]], where: str
) -> None:
    f.write(_PREFIX.pack(MAGIC, len(header)) + header + bytes(_pad(_PREFIX.size + len(header))))
    for spec in specs:
        value = arrays[spec.name]
        if value.shape != spec.shape or value.dtype.name != spec.dtype:
            raise WireError(f"{where}: tensor {spec.name!r} changed while being written")
        # One tensor at a time: a copy is made only if it is non-contiguous or big-endian.
        array = np.ascontiguousarray(value, dtype=_WIRE_DTYPES[spec.dtype])
        f.write(_byte_view(array))
        f.write(bytes(_pad(spec.nbytes)))


# ---------------------------------------------------------------- reading


def _read_header(read: Callable[[int], bytes], where: str) -> tuple[tuple[TensorSpec, ...], int]:
    """Read and check prefix, header and padding; return the specs and where the data starts."""
    prefix = read(_PREFIX.size)
    if len(prefix) < _PREFIX.size:
        raise WireError(f"{where}: truncated: {len(prefix)} bytes, too short for an array container")
    magic, header_len = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise WireError(f"{where}: bad magic {magic!r}, not an array container")
    if header_len > limits.MAX_ARRAY_HEADER_BYTES:
        raise WireError(f"{where}: header of {header_len} bytes is over the limit of {limits.MAX_ARRAY_HEADER_BYTES}")
    header = read(header_len)
    if len(header) < header_len:
        raise WireError(f"{where}: truncated header: {len(header)} of {header_len} bytes")
    specs = _parse_header(header, where)
    pad = _pad(_PREFIX.size + header_len)
    _check_padding(read(pad), pad, "the header", where)
    return specs, _PREFIX.size + header_len + pad


def _parse_header(header: bytes, where: str) -> tuple[TensorSpec, ...]:
    try:
        text = header.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError(f"{where}: header is not UTF-8") from exc
    try:
        doc = strict_json(text)
    except (ValueError, RecursionError) as exc:
        raise WireError(f"{where}: header is not valid JSON: {exc}") from exc
    entries = json_fields(doc, _HEADER_KEYS, "header", where)["tensors"]
    if not isinstance(entries, list):
        raise WireError(f"{where}: header: 'tensors' must be a list")
    if len(entries) > limits.MAX_TENSORS:
        raise WireError(f"{where}: {len(entries)} tensors, over the limit of {limits.MAX_TENSORS}")
    specs = []
    for i, entry in enumerate(entries):
        at = f"header tensors[{i}]"
        fields = json_fields(entry, _TENSOR_KEYS, at, where)
        name, dtype, shape = fields["name"], fields["dtype"], fields["shape"]
        if not isinstance(name, str):
            raise WireError(f"{where}: {at}: name must be a string")
        if not isinstance(dtype, str):
            raise WireError(f"{where}: {at}: dtype must be a string")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise WireError(f"{where}: {at}: shape must be a list of integers")
        specs.append(TensorSpec(name, dtype, tuple(shape)))
    _check_specs(specs, where)
    return tuple(specs)


def strict_json(text: str) -> Any:
    """json.loads that refuses duplicate keys and NaN/Infinity (ValueError), for headers from outside."""
    return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not allowed")


def json_fields(doc: Any, keys: tuple[str, ...], at: str, where: str) -> dict[str, Any]:
    """doc, which must be a JSON object with exactly these keys; WireError naming the first problem."""
    if not isinstance(doc, dict):
        raise WireError(f"{where}: {at}: expected a JSON object")
    for key in doc:
        if key not in keys:
            raise WireError(f"{where}: {at}: unknown key {key!r} (allowed: {', '.join(keys)})")
    for key in keys:
        if key not in doc:
            raise WireError(f"{where}: {at}: missing key {key!r}")
    return doc


def check_specs(specs: Sequence[TensorSpec], where: str) -> None:
    """Raise WireError unless specs could be stored in a container (names, dtypes, dims, counts, bytes)."""
    _check_specs(specs, where)


def _check_specs(specs: Sequence[TensorSpec], where: str) -> None:
    """Check names, dtypes, dims and sizes; never allocates anything the specs claim."""
    if len(specs) > limits.MAX_TENSORS:
        raise WireError(f"{where}: {len(specs)} tensors, over the limit of {limits.MAX_TENSORS}")
    seen: set[str] = set()
    total = 0
    for i, spec in enumerate(specs):
        name = spec.name
        if not isinstance(name, str) or not name:
            raise WireError(f"{where}: tensor #{i} has an empty or non-string name: {name!r}")
        if len(name) > limits.MAX_TENSOR_NAME:
            raise WireError(f"{where}: tensor name {name[:40]!r}... is longer than {limits.MAX_TENSOR_NAME} characters")
        if not name.isprintable():
            raise WireError(f"{where}: tensor name {name!r} has unprintable characters")
        if name in seen:
            raise WireError(f"{where}: duplicate tensor name {name!r}")
        seen.add(name)
        if spec.dtype not in _WIRE_DTYPES:
            raise WireError(f"{where}: tensor {name!r} has dtype {spec.dtype!r}, not one of {', '.join(DTYPES)}")
        if len(spec.shape) > limits.MAX_TENSOR_DIMS:
            raise WireError(
                f"{where}: tensor {name!r} has {len(spec.shape)} dimensions, over the limit of {limits.MAX_TENSOR_DIMS}"
            )
        for dim in spec.shape:
            if dim < 0:
                raise WireError(f"{where}: tensor {name!r} has a negative dimension in shape {spec.shape}")
            if dim > limits.MAX_MODEL_BYTES:
                raise WireError(
                    f"{where}: tensor {name!r} has dimension {dim}, over the limit of {limits.MAX_MODEL_BYTES}"
                )
        total += spec.nbytes + _pad(spec.nbytes)  # Python ints: no overflow, and nothing allocated
        if total > limits.MAX_MODEL_BYTES:
            raise WireError(
                f"{where}: tensor {name!r} of shape {spec.shape} takes the data to {total} bytes, "
                f"over the limit of {limits.MAX_MODEL_BYTES} bytes"
            )


def _total_size(specs: Sequence[TensorSpec], data_start: int) -> int:
    return data_start + sum(s.nbytes + _pad(s.nbytes) for s in specs)


def _check_size(actual: int, expected: int, where: str) -> None:
    if actual < expected:
        raise WireError(f"{where}: truncated: {actual} bytes, the header implies {expected}")
    if actual > expected:
        raise WireError(f"{where}: {actual - expected} bytes of trailing data after the last tensor")


def _check_padding(padding: bytes, size: int, after: str, where: str) -> None:
    if len(padding) < size:
        raise WireError(f"{where}: truncated in the padding after {after}")
    if padding.count(0) != size:
        raise WireError(f"{where}: the padding after {after} is not zero")


def _check_data(spec: TensorSpec, array: NDArray[Any], padding: bytes, where: str) -> None:
    _check_padding(padding, _pad(spec.nbytes), f"tensor {spec.name!r}", where)
    if spec.dtype == "bool" and array.size and array.view(np.uint8).max() > 1:
        raise WireError(f"{where}: tensor {spec.name!r}: bool data holds a byte other than 0 or 1")


def _read_into(f: io.BufferedReader, view: memoryview, spec: TensorSpec, where: str) -> None:
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            raise WireError(f"{where}: truncated in the data of tensor {spec.name!r}")
        got += n


def _empty(spec: TensorSpec) -> NDArray[Any]:
    # Only called after _check_specs and the size check: the size is bounded and present.
    return np.empty(spec.shape, dtype=_WIRE_DTYPES[spec.dtype])


def _byte_view(array: NDArray[Any]) -> memoryview:
    """The bytes of a C-contiguous array as a flat byte view (no copy)."""
    return array.reshape(-1).view(np.uint8).data


def _pad(n: int) -> int:
    return -n % _ALIGN
