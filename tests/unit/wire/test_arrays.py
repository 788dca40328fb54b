from __future__ import annotations

import io
import json
import os
import re
import struct
import tracemalloc
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from fedsec import limits
from fedsec.errors import WireError
from fedsec.wire import arrays
from fedsec.wire.arrays import TensorSpec

SHAPES = [(3, 4), (), (0,), (2, 0, 3), (5,)]


def _sample(dtype: str, shape: tuple[int, ...]) -> NDArray[Any]:
    rng = np.random.default_rng(7)
    if dtype == "bool":
        return np.asarray(rng.random(shape) > 0.5)
    if dtype.startswith("float"):
        return np.asarray(rng.standard_normal(shape) * 100).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)


def _same(got: Mapping[str, NDArray[Any]], want: Mapping[str, NDArray[Any]]) -> None:
    assert list(got) == list(want)
    for name, array in want.items():
        assert got[name].dtype == array.dtype.newbyteorder("<"), name
        assert got[name].shape == array.shape, name
        assert np.array_equal(got[name], array), name


@pytest.mark.parametrize("dtype", arrays.DTYPES)
def test_roundtrip_every_dtype(tmp_path: Path, dtype: str) -> None:
    model = {f"t{i}": _sample(dtype, shape) for i, shape in enumerate(SHAPES)}
    _same(arrays.decode(arrays.encode(model)), model)
    path = tmp_path / "model.fsa"
    arrays.write_file(path, model)
    _same(arrays.read_file(path), model)
    assert path.read_bytes() == arrays.encode(model)
    assert arrays.read_specs(path) == tuple(TensorSpec(n, dtype, a.shape) for n, a in model.items())


def test_layout_is_pinned() -> None:
    blob = arrays.encode({"a": np.arange(3, dtype=np.uint8), "b": np.array([1.5], dtype=np.float32)})
    header = b'{"tensors":[{"name":"a","dtype":"uint8","shape":[3]},{"name":"b","dtype":"float32","shape":[1]}]}'
    start = 8 + len(header) + (-(8 + len(header)) % 8)
    assert blob[:8] == b"FSA1" + struct.pack("<I", len(header))
    assert blob[8 : 8 + len(header)] == header
    assert blob[8 + len(header) : start] == bytes(start - 8 - len(header))
    assert blob[start:] == b"\x00\x01\x02" + bytes(5) + struct.pack("<f", 1.5) + bytes(4)


def test_non_contiguous_and_big_endian_inputs() -> None:
    base = np.arange(60, dtype=np.float64).reshape(6, 10)
    model = {
        "strided": base[::2, 1::3],
        "transposed": base.T,
        "fortran": np.asfortranarray(base),
        "big_f4": np.arange(7, dtype=">f4") * 1.25,
        "big_i8": np.array([[-(2**40), 3]], dtype=">i8"),
        "big_0d": np.array(2.5, dtype=">f8"),
    }
    assert not model["strided"].flags.c_contiguous
    got = arrays.decode(arrays.encode(model))
    _same(got, model)
    assert all(a.dtype.byteorder in "<=|" for a in got.values())
    assert arrays.encode({"x": np.array([1.0], ">f8")}) == arrays.encode({"x": np.array([1.0], "<f8")})


def test_decode_copies_and_accepts_memoryview() -> None:
    blob = bytearray(arrays.encode({"a": np.arange(4, dtype=np.int32)}))
    got = arrays.decode(memoryview(blob))["a"]
    blob[-16:] = bytes(16)
    assert got.tolist() == [0, 1, 2, 3]
    got[0] = 9  # writable, owns its memory
    assert got.flags.owndata


def test_tensor_spec_nbytes() -> None:
    assert TensorSpec("w", "float32", (10, 4)).nbytes == 160
    assert TensorSpec("s", "float64", ()).nbytes == 8
    assert TensorSpec("z", "int16", (0, 7)).nbytes == 0
    assert TensorSpec("b", "bool", (3,)).nbytes == 3


# ---------------------------------------------------------------- corrupt input


def _blob(header: Any, data: bytes = b"", magic: bytes = b"FSA1", header_len: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    size = len(raw) if header_len is None else header_len
    return magic + struct.pack("<I", size) + raw + bytes(-(8 + len(raw)) % 8) + data


def _one(name: str = "a", dtype: str = "uint8", shape: Any = (3,)) -> dict[str, Any]:
    return {"tensors": [{"name": name, "dtype": dtype, "shape": list(shape)}]}


_GOOD = _blob(_one(), b"\x01\x02\x03" + bytes(5))
_MODEL_LIMIT = f"over the limit of {limits.MAX_MODEL_BYTES} bytes"

CORRUPT = [
    ("bad magic", b"FSA2" + _GOOD[4:], "bad magic b'FSA2'"),
    ("too short", b"FSA", "truncated: 3 bytes"),
    ("header too long", _blob(b"{}", header_len=limits.MAX_ARRAY_HEADER_BYTES + 1), "header of 4194305 bytes is over"),
    ("header truncated", _blob(b"{}", header_len=100), "truncated header: 8 of 100 bytes"),
    ("malformed JSON", _blob(b'{"tensors": ['), "header is not valid JSON"),
    ("not UTF-8", _blob(b'{"tensors": "\xff"}'), "header is not UTF-8"),
    ("duplicate JSON key", _blob(b'{"tensors": [], "tensors": []}'), "duplicate key 'tensors'"),
    ("NaN in JSON", _blob(b'{"tensors": [{"name": "a", "dtype": "uint8", "shape": [NaN]}]}'), "NaN is not allowed"),
    ("deep JSON", _blob(b"[" * 100_000 + b"]" * 100_000), "header is not valid JSON"),
    ("not an object", _blob([1]), "header: expected a JSON object"),
    ("unknown header key", _blob({"tensors": [], "version": 2}), "header: unknown key 'version'"),
    ("missing header key", _blob({}), "header: missing key 'tensors'"),
    ("tensors not a list", _blob({"tensors": {}}), "'tensors' must be a list"),
    ("unknown tensor key", _blob({"tensors": [{**_one()["tensors"][0], "offset": 0}]}), "unknown key 'offset'"),
    ("missing tensor key", _blob({"tensors": [{"name": "a", "dtype": "uint8"}]}), "tensors[0]: missing key 'shape'"),
    ("name not a string", _blob(_one(name=5)), "tensors[0]: name must be a string"),  # type: ignore[arg-type]
    ("dtype not a string", _blob(_one(dtype=4)), "dtype must be a string"),  # type: ignore[arg-type]
    ("dtype object", _blob(_one(dtype="object")), "tensor 'a' has dtype 'object', not one of float16"),
    ("dtype <U5", _blob(_one(dtype="<U5")), "has dtype '<U5', not one of"),
    ("dtype big-endian", _blob(_one(dtype=">f4")), "has dtype '>f4', not one of"),
    ("shape not ints", _blob(_one(shape=[1.5])), "shape must be a list of integers"),
    ("shape bool", _blob(_one(shape=[True])), "shape must be a list of integers"),
    ("shape not a list", _blob({"tensors": [{"name": "a", "dtype": "uint8", "shape": 3}]}), "shape must be a list"),
    ("negative dim", _blob(_one(shape=[2, -1])), "negative dimension in shape (2, -1)"),
    ("too many dims", _blob(_one(shape=[1] * 9)), "has 9 dimensions, over the limit of 8"),
    ("huge dim", _blob(_one(dtype="float32", shape=[2**40])), "has dimension 1099511627776, over the limit"),
    ("huge product", _blob(_one(dtype="float32", shape=[2**20, 2**20])), _MODEL_LIMIT),
    ("huge zero-size dim", _blob(_one(shape=[0, 2**62])), "has dimension 4611686018427387904, over"),
    (
        "total over limit",
        _blob({"tensors": [{"name": f"t{i}", "dtype": "float64", "shape": [2**27]} for i in range(3)]}),
        "tensor 't2' of shape (134217728,) takes the data to 3221225472 bytes, " + _MODEL_LIMIT,
    ),
    (
        "too many tensors",
        _blob({"tensors": [{"name": f"t{i}", "dtype": "uint8", "shape": []} for i in range(limits.MAX_TENSORS + 1)]}),
        f"{limits.MAX_TENSORS + 1} tensors, over the limit",
    ),
    ("duplicate names", _blob({"tensors": _one()["tensors"] * 2}, bytes(16)), "duplicate tensor name 'a'"),
    ("empty name", _blob(_one(name="")), "tensor #0 has an empty or non-string name"),
    ("long name", _blob(_one(name="n" * 257)), "is longer than 256 characters"),
    ("unprintable name", _blob(_one(name="a\nb")), "tensor name 'a\\nb' has unprintable characters"),
    ("truncated data", _GOOD[:-1], f"truncated: {len(_GOOD) - 1} bytes, the header implies {len(_GOOD)}"),
    ("no data", _blob(_one()), "truncated"),
    ("trailing bytes", _GOOD + bytes(8), "8 bytes of trailing data"),
    ("trailing byte", _GOOD + b"\x00", "1 bytes of trailing data"),
    ("header padding", _GOOD[:-9] + b"\x01" + _GOOD[-8:], "padding after the header is not zero"),
    ("tensor padding", _GOOD[:-1] + b"\x01", "padding after tensor 'a' is not zero"),
    ("bool byte", _blob(_one(dtype="bool", shape=[2]), b"\x01\x02" + bytes(6)), "byte other than 0 or 1"),
]


def _ids(table: list[tuple[str, bytes, str]]) -> list[str]:
    return [case[0] for case in table]


def test_good_blob_is_good() -> None:
    assert arrays.decode(_GOOD)["a"].tolist() == [1, 2, 3]
    assert len(_GOOD[:-9]) % 8 == 7  # the header-padding case flips a padding byte


@pytest.mark.parametrize(("case", "blob", "message"), CORRUPT, ids=_ids(CORRUPT))
def test_decode_rejects(case: str, blob: bytes, message: str) -> None:
    with pytest.raises(WireError, match="^update from site-2: .*" + re.escape(message)):
        arrays.decode(blob, where="update from site-2")


@pytest.mark.parametrize(("case", "blob", "message"), CORRUPT, ids=_ids(CORRUPT))
def test_read_file_rejects(tmp_path: Path, case: str, blob: bytes, message: str) -> None:
    path = tmp_path / "bad.fsa"
    path.write_bytes(blob)
    with pytest.raises(WireError, match=f"^array file {re.escape(str(path))}: .*{re.escape(message)}"):
        arrays.read_file(path)


def test_huge_claims_fail_without_allocating(tmp_path: Path) -> None:
    path = tmp_path / "huge.fsa"
    path.write_bytes(_blob(_one(dtype="float64", shape=[2**20, 2**20])))
    readers: list[Callable[[], object]] = [
        lambda: arrays.decode(path.read_bytes()),
        lambda: arrays.read_specs(path),
        lambda: arrays.read_file(path),
    ]
    tracemalloc.start()
    try:
        for read in readers:
            with pytest.raises(WireError, match=_MODEL_LIMIT):
                read()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


# ---------------------------------------------------------------- encode side


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"a": [1, 2]}, "tensor 'a' is a list, not a numpy array"),
        ({"a": np.array([object()])}, "tensor 'a' has dtype 'object', not one of"),
        ({"a": np.array(["x"])}, "tensor 'a' has dtype '<U1', not one of"),
        ({"a": np.zeros(2, np.complex64)}, "has dtype 'complex64'"),
        ({"": np.zeros(1)}, "tensor #0 has an empty or non-string name"),
        ({3: np.zeros(1)}, "tensor #0 has an empty or non-string name"),
        ({"a\x00": np.zeros(1)}, "unprintable"),
        ({"a": np.zeros((1,) * 9)}, "has 9 dimensions"),
        ({"n" * 257: np.zeros(1)}, "longer than 256"),
    ],
)
def test_encode_rejects(tmp_path: Path, model: Any, message: str) -> None:
    with pytest.raises(WireError, match=re.escape(message)):
        arrays.encode(model)
    with pytest.raises(WireError, match=re.escape(message)):
        arrays.write_file(tmp_path / "m.fsa", model)
    assert list(tmp_path.iterdir()) == []


def test_encode_rejects_too_many_tensors() -> None:
    model = {f"t{i}": np.zeros(0, np.uint8) for i in range(limits.MAX_TENSORS + 1)}
    with pytest.raises(WireError, match="10001 tensors, over the limit"):
        arrays.encode(model)


def test_encode_rejects_header_over_limit() -> None:
    # 4-byte characters: the header, not the name length, hits its limit.
    model = {f"{i:05d}" + "\U0001f600" * 250: np.zeros(0, np.uint8) for i in range(5000)}
    with pytest.raises(WireError, match="header of .* bytes is over the limit"):
        arrays.encode(model)


# ---------------------------------------------------------------- files


def test_write_file_is_atomic_and_private(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "model.fsa"
    arrays.write_file(path, {"a": np.ones(3)})
    arrays.write_file(path, {"a": np.zeros(3)})
    assert [p.name for p in path.parent.iterdir()] == ["model.fsa"]
    assert path.stat().st_mode & 0o777 == 0o600
    assert arrays.read_file(path)["a"].tolist() == [0.0, 0.0, 0.0]


class _FailingModel(Mapping[str, NDArray[Any]]):
    """Gives each array once (for the header), then fails when its data is written."""

    def __init__(self, model: dict[str, NDArray[Any]]) -> None:
        self.model = model
        self.reads: set[str] = set()

    def __getitem__(self, key: str) -> NDArray[Any]:
        if key in self.reads:
            raise OSError("disk full")
        self.reads.add(key)
        return self.model[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.model)

    def __len__(self) -> int:
        return len(self.model)


def test_failed_write_leaves_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.fsa"
    arrays.write_file(path, {"a": np.ones(3)})
    old = path.read_bytes()
    with pytest.raises(OSError, match="disk full"):
        arrays.write_file(path, _FailingModel({"a": np.zeros(3), "b": np.zeros(2)}))
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["model.fsa"]

    def no_replace(src: str, dst: Path) -> None:
        raise OSError("rename refused")

    monkeypatch.setattr(os, "replace", no_replace)
    with pytest.raises(OSError, match="rename refused"):
        arrays.write_file(path, {"a": np.zeros(3)})
    assert path.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir()] == ["model.fsa"]


def test_iter_file_yields_in_order_one_at_a_time(tmp_path: Path) -> None:
    model: dict[str, NDArray[Any]] = {
        "z": np.arange(5, dtype=np.int64),
        "a": np.ones((2, 2), np.float16),
        "m": np.array([True, False]),
    }
    path = tmp_path / "m.fsa"
    arrays.write_file(path, model)
    assert [name for name, _ in arrays.iter_file(path)] == ["z", "a", "m"]
    # Break the last tensor's data: the first two still come out before the error.
    raw = bytearray(path.read_bytes())
    raw[-8] = 7
    path.write_bytes(bytes(raw))
    it = arrays.iter_file(path)
    assert next(it)[0] == "z"
    assert next(it)[0] == "a"
    with pytest.raises(WireError, match="tensor 'm': bool data holds a byte other than 0 or 1"):
        next(it)


def test_read_specs_reads_the_header_only(tmp_path: Path) -> None:
    path = tmp_path / "m.fsa"
    path.write_bytes(_blob(_one(dtype="bool", shape=[2]), b"\x05\x06" + bytes(6)))  # bad data, good size
    assert arrays.read_specs(path, where="global model") == (TensorSpec("a", "bool", (2,)),)
    path.write_bytes(_blob(_one(dtype="bool", shape=[2]), b"\x01\x00"))
    with pytest.raises(WireError, match="^global model: truncated: "):
        arrays.read_specs(path, where="global model")
    path.write_bytes(_blob(_one(dtype="bool", shape=[2]), bytes(9)))
    with pytest.raises(WireError, match="1 bytes of trailing data"):
        arrays.read_specs(path)


def test_specs_of() -> None:
    got = arrays.specs_of({"w": np.zeros((2, 3), ">f4"), "s": np.array(1, np.int8)})
    assert got == (TensorSpec("w", "float32", (2, 3)), TensorSpec("s", "int8", ()))


# ---------------------------------------------------------------- checks


_EXPECTED = (TensorSpec("fc.weight", "float32", (10, 4)), TensorSpec("fc.bias", "float32", (4,)))


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (
            (TensorSpec("fc.weight", "float32", (10, 5)), _EXPECTED[1]),
            "tensor 'fc.weight' has shape (10, 5), the model has (10, 4)",
        ),
        (
            (_EXPECTED[0], TensorSpec("fc.bias", "float64", (4,))),
            "tensor 'fc.bias' has dtype float64, the model has float32",
        ),
        ((_EXPECTED[0],), "tensor 'fc.bias' is missing (the model has it: float32 (4,))"),
        ((*_EXPECTED, TensorSpec("extra", "float32", ())), "tensor 'extra' is not in the model"),
        (
            (_EXPECTED[1], _EXPECTED[0]),
            "the tensors are in another order than the model's: #0 is 'fc.bias', the model's is 'fc.weight'",
        ),
        ((*_EXPECTED, _EXPECTED[1]), "3 tensors, the model has 2"),
        (
            (),
            "tensor 'fc.weight' is missing (the model has it: float32 (10, 4)); "
            "tensor 'fc.bias' is missing (the model has it: float32 (4,))",
        ),
        (
            (TensorSpec("fc.weight", "float32", (10, 5)), TensorSpec("x", "int8", ())),
            "tensor 'fc.weight' has shape (10, 5), the model has (10, 4); "
            "tensor 'fc.bias' is missing (the model has it: float32 (4,)); tensor 'x' is not in the model",
        ),
    ],
)
def test_check_compatible_names_the_differences(specs: tuple[TensorSpec, ...], message: str) -> None:
    with pytest.raises(WireError, match="^update from site-2: " + re.escape(message) + "$"):
        arrays.check_compatible(specs, _EXPECTED, "update from site-2")


def test_check_compatible_names_at_most_three_differences() -> None:
    model = tuple(TensorSpec(f"t{i}", "float32", (i,)) for i in range(6))
    wrong = tuple(TensorSpec(f"t{i}", "float32", (i + 1,)) for i in range(6))
    with pytest.raises(WireError, match=r"tensor 't2' has shape \(3,\), the model has \(2,\); and 3 more differences$"):
        arrays.check_compatible(wrong, model, "update")


def test_differences_never_count_bytes() -> None:
    big = (TensorSpec("w", "float32", (1000, 1000)),)
    found = arrays.differences((TensorSpec("w", "float64", (1000, 1000)),), big)
    assert found == ["tensor 'w' has dtype float64, the model has float32"]
    assert arrays.differences(big, big) == []


def test_read_header_reads_only_the_header() -> None:
    data = arrays.encode({"w": np.zeros((2, 3), np.float32), "s": np.zeros((), np.int8)})
    stream = io.BytesIO(data)
    specs = arrays.read_header(stream.read, "upload")
    assert specs == (TensorSpec("w", "float32", (2, 3)), TensorSpec("s", "int8", ()))
    assert stream.tell() < len(data)  # the tensors' data is left unread
    with pytest.raises(WireError, match="^upload: bad magic"):
        arrays.read_header(io.BytesIO(b"XXXX" + data[4:]).read, "upload")


def test_check_compatible_accepts_equal() -> None:
    arrays.check_compatible(list(_EXPECTED), _EXPECTED, "update")
    arrays.check_compatible((), (), "update")


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize(
    ("bad", "counts"),
    [(np.nan, "1 NaN and 0 infinite"), (np.inf, "0 NaN and 1 infinite"), (-np.inf, "0 NaN and 1 infinite")],
)
def test_check_finite_rejects(dtype: str, bad: float, counts: str) -> None:
    array = np.zeros((3, 3), dtype=dtype)
    arrays.check_finite("w", array, "update")
    array[1, 2] = bad
    with pytest.raises(WireError, match=f"^update: tensor 'w' has {counts} values$"):
        arrays.check_finite("w", array, "update")


def test_check_finite_passes_other_dtypes_and_empty() -> None:
    arrays.check_finite("i", np.array([np.iinfo(np.int64).max]), "u")
    arrays.check_finite("b", np.array([True]), "u")
    arrays.check_finite("e", np.zeros((0, 3), np.float32), "u")
    arrays.check_finite("big", np.array([np.finfo(np.float16).max] * 4, np.float16), "u")
    with pytest.raises(WireError, match="2 NaN and 0 infinite"):
        arrays.check_finite("s", np.array([np.nan, 1.0, np.nan]), "u")


def test_iter_file_notices_a_file_that_grows(tmp_path: Path) -> None:
    path = tmp_path / "m.fsa"
    arrays.write_file(path, {"a": np.zeros(2), "b": np.zeros(2)})
    it = arrays.iter_file(path)
    next(it)
    with path.open("ab") as f:
        f.write(bytes(8))
    next(it)
    with pytest.raises(WireError, match="trailing data after the last tensor"):
        next(it)
