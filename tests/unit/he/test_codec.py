"""fedsec.he.codec: encrypt on a client, sum on the server, decrypt on a client."""

from __future__ import annotations

import json
import logging
import math
import stat
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from fedsec import limits
from fedsec.errors import HEError, WireError
from fedsec.he import codec, context, params
from fedsec.wire import arrays

CLIP = params.DEFAULT_CLIP
F = params.scale_bits(CLIP)
STEP = 2.0**-F
Model = dict[str, NDArray[Any]]


@pytest.fixture(scope="module")
def keys() -> tuple[Any, Any]:
    client, server = context.make_contexts()
    return context.load_client_context(client, "client"), context.load_server_context(server, "server")


def _model(seed: int = 0) -> Model:
    rng = np.random.default_rng(seed)
    return {
        "w": rng.uniform(-CLIP, CLIP, (40, 25)),
        "b": rng.uniform(-1, 1, 7).astype(np.float32),
        "n": np.array(3, dtype=np.int64),
    }


def _upload(path: Path, ctx: Any, model: Model, weight: float = 1.0, clip: float = CLIP) -> Path:
    path.write_bytes(codec.encrypt_model(ctx, model, weight, clip))
    return path


def _header_end(data: bytes) -> int:
    return 8 + int.from_bytes(data[4:8], "little")


def _records(data: bytes) -> list[tuple[int, int]]:
    """(start, length) of each ciphertext record's payload."""
    out, pos = [], _header_end(data)
    while pos < len(data):
        (size,) = struct.unpack_from("<I", data, pos)
        out.append((pos + 4, size))
        pos += 4 + size
    return out


def _with_header(data: bytes, change: Callable[[dict[str, Any]], None]) -> bytes:
    doc = json.loads(data[8 : _header_end(data)])
    change(doc)
    raw = json.dumps(doc).encode()
    return b"FSH1" + struct.pack("<I", len(raw)) + raw + data[_header_end(data) :]


def _summed(
    keys: tuple[Any, Any],
    tmp_path: Path,
    uploads: list[Path],
    clip: float = CLIP,
    max_clients: int = params.MAX_CLIENTS,
) -> codec.EncryptedSum:
    specs = codec.read_header(uploads[0], "first").specs
    total = codec.EncryptedSum(keys[1], specs, clip, max_clients)
    for path in uploads:
        total.add_file(path, path.name)
    return total


def _decrypt_sum(keys: tuple[Any, Any], total: codec.EncryptedSum, dest: Path) -> tuple[Model, float]:
    total.write(dest)
    return codec.decrypt_model(keys[0], dest.read_bytes(), "sum")


# ---------------------------------------------------------------- parameters


def test_scale_bits() -> None:
    assert params.per_client_bound() == 2**37 - 1
    assert params.scale_bits(4.0) == 34
    assert params.scale_bits(2.0, 3) == 38  # the digits job's: 3 sites
    for clip in (0.001, 0.5, 1.0, 1.5, 3.0, 4.0, 7.3, 100.0, 4095.0, 1e8):
        f = params.scale_bits(clip)
        field = 2 ** (params.FIELD_BITS - 1) - 1
        assert math.ceil(max(clip, 1) * 2**f) * params.MAX_CLIENTS <= field
        assert math.ceil(max(clip, 1) * 2 ** (f + 1)) * params.MAX_CLIENTS > field


@pytest.mark.parametrize("clip", [0.0, -1.0, math.nan, math.inf, 1e10, True])
def test_scale_bits_refuses(clip: float) -> None:
    with pytest.raises(HEError, match="clip"):
        params.scale_bits(clip)


# ---------------------------------------------------------------- encrypt / decrypt


def test_roundtrip_one_client(keys: tuple[Any, Any]) -> None:
    model = _model()
    data = codec.encrypt_model(keys[0], model, 1.0, CLIP)
    header = codec.read_header(data, "upload")
    assert header == codec.EncryptedHeader(arrays.specs_of(model), CLIP, F, 1000 + 7 + 1 + 1, 1, 1)
    assert data[:4] == b"FSH1" and len(_records(data)) == 1
    got, weight = codec.decrypt_model(keys[0], data, "upload")
    assert weight == 1.0
    assert list(got) == list(model)
    assert got["w"].dtype == np.float64 and got["w"].shape == (40, 25)
    assert np.abs(got["w"] - model["w"]).max() <= STEP * (1 + 1e-9)
    assert got["b"].dtype == np.float32
    assert np.abs(got["b"].astype(np.float64) - model["b"]).max() <= STEP * (1 + 1e-6)
    assert got["n"].dtype == np.int64 and got["n"].shape == () and got["n"] == 3


def test_stochastic_rounding_is_unbiased(keys: tuple[Any, Any]) -> None:
    model = {"x": np.full(8000, 0.3 * STEP)}
    got, _ = codec.decrypt_model(keys[0], codec.encrypt_model(keys[0], model, 1.0, CLIP), "x")
    assert set(np.unique(got["x"] / STEP)) == {0.0, 1.0}
    assert abs(got["x"].mean() / STEP - 0.3) < 0.03


def test_stochastic_rounding_is_unbiased_at_the_clip(keys: tuple[Any, Any]) -> None:
    # x * 2**f near 2**35: floor(x * 2**f + U) would round x + U to float64's spacing there first
    model = {"x": np.full(8000, 1.75 + 0.3 * STEP)}
    got, _ = codec.decrypt_model(keys[0], codec.encrypt_model(keys[0], model, 1.0, CLIP), "x")
    assert set(np.unique((got["x"] - 1.75) / STEP)) == {0.0, 1.0}
    assert abs((got["x"] - 1.75).mean() / STEP - 0.3) < 0.03


def test_three_sites_float32_models_average_as_in_plain_arithmetic(keys: tuple[Any, Any], tmp_path: Path) -> None:
    # The digits job's HE: clip 2, 3 sites, equal weights. f = 38 puts every float32 value of magnitude
    # 2**-15 and above on the fixed-point grid (its last bit is worth 2**-38 or more), so each upload is
    # encoded exactly and the sum is exact: the average, rounded to float32, is plain arithmetic's
    # float32(mean in float64), bit for bit. Below 2**-15 a value is rounded by at most 2**-38.
    clip, sites = 2.0, 3
    rng = np.random.default_rng(5)
    models = []
    for _ in range(sites):
        w = rng.normal(0, 0.3, 20_000).astype(np.float32)
        models.append({"w": np.where(np.abs(w) < 2**-15, np.float32(2**-15), w)})
    models[0]["w"][:3] = [1.9999999, -2.0, 2**-15]
    paths = []
    for i, model in enumerate(models):
        paths.append(tmp_path / f"u{i}")
        paths[-1].write_bytes(codec.encrypt_model(keys[0], model, 1.0, clip, None, sites))
    got, weight = _decrypt_sum(keys, _summed(keys, tmp_path, paths, clip, sites), tmp_path / "sum")
    assert weight == sites
    plain = (np.sum([m["w"].astype(np.float64) for m in models], axis=0) / sites).astype(np.float32)
    assert got["w"].dtype == np.float32
    assert np.array_equal(got["w"], plain)
    small = {"w": np.array([2**-16, -3e-7, 1e-12], dtype=np.float32)}
    alone, _ = codec.decrypt_model(keys[0], codec.encrypt_model(keys[0], small, 1.0, clip, None, sites), "small")
    assert np.abs(alone["w"].astype(np.float64) - small["w"]).max() <= 2**-38 * 1.01  # and float32's rounding


def test_int_tensors(keys: tuple[Any, Any]) -> None:
    model: Model = {
        "i64": np.array([-4, 0, 3, 4], dtype=np.int64),
        "i32": np.arange(-3, 3, dtype=np.int32).reshape(2, 3),
        "u8": np.array([0, 1, 2, 3], dtype=np.uint8),
        "i8": np.array([-2], dtype=np.int8),
    }
    got, _ = codec.decrypt_model(keys[0], codec.encrypt_model(keys[0], model, 0.5, CLIP), "ints")
    for name, array in model.items():
        assert got[name].dtype == array.dtype and np.array_equal(got[name], array), name


def test_zero_d_and_zero_size_tensors(keys: tuple[Any, Any]) -> None:
    model = {
        "scalar": np.array(2.5),
        "empty": np.zeros(0),
        "empty3": np.zeros((2, 0, 3), dtype=np.float32),
        "x": np.array([1.0, -1.0]),
    }
    data = codec.encrypt_model(keys[0], model, 1.0, CLIP)
    assert codec.read_header(data, "m").n_values == 4
    got, _ = codec.decrypt_model(keys[0], data, "m")
    for name, array in model.items():
        assert got[name].shape == array.shape and got[name].dtype == array.dtype, name
        assert np.array_equal(got[name], array), name  # exact multiples of 2**-f
    for only in ({}, {"e": np.zeros((0, 4))}):
        got, weight = codec.decrypt_model(keys[0], codec.encrypt_model(keys[0], only, 0.25, CLIP), "m")
        assert weight == 0.25 and [a.shape for a in got.values()] == [a.shape for a in only.values()]


def test_clipping_is_counted(keys: tuple[Any, Any], caplog: pytest.LogCaptureFixture) -> None:
    model = {"x": np.array([10.0, -10.0, 3.0, 0.5, 4.0, -4.0])}
    with caplog.at_level(logging.WARNING, logger="fedsec.he.codec"):
        data = codec.encrypt_model(keys[0], model, 1.0, CLIP)
    assert "clipped=2 of=6" in caplog.text
    got, _ = codec.decrypt_model(keys[0], data, "x")
    assert np.array_equal(got["x"], [4.0, -4.0, 3.0, 0.5, 4.0, -4.0])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fedsec.he.codec"):
        codec.encrypt_model(keys[0], {"x": np.array([1.0])}, 1.0, CLIP)
    assert "clipped" not in caplog.text


@pytest.mark.parametrize("n", [50_000, 13 * params.POLY_MODULUS_DEGREE - 1])
def test_bytes_per_parameter(keys: tuple[Any, Any], n: int) -> None:
    data = codec.encrypt_model(keys[0], {"w": np.zeros(n, dtype=np.float32)}, 1.0, CLIP)
    n_ciphertexts = codec.read_header(data, "w").n_ciphertexts
    per = len(data) / n
    per_slot = len(data) / (n_ciphertexts * params.POLY_MODULUS_DEGREE)
    print(f"{n} parameters: {len(data)} bytes in {n_ciphertexts} ciphertexts, {per:.2f} bytes per parameter")
    assert n_ciphertexts == 13
    # A ciphertext (~62 KB) holds 4096 values: 15.2 bytes each. 50k parameters fill 12.2 of the
    # 13 ciphertexts, so the padding of the last one takes them to 16.1 bytes per parameter.
    assert per_slot < 15.4
    assert per < (16 if n > 53_000 else 16.2)


@pytest.mark.parametrize(
    ("model", "weight", "clip", "match"),
    [
        ({"m": np.array([True])}, 1.0, CLIP, "dtype 'bool'"),
        ({"x": np.array([1.0, np.nan])}, 1.0, CLIP, "NaN or infinite"),
        ({"x": np.array([np.inf])}, 1.0, CLIP, "NaN or infinite"),
        ({"x": np.ones(2)}, 0.0, CLIP, "weight"),
        ({"x": np.ones(2)}, -0.5, CLIP, "weight"),
        ({"x": np.ones(2)}, 1.5, CLIP, "weight"),
        ({"x": np.ones(2)}, math.nan, CLIP, "weight"),
        ({"x": np.ones(2)}, True, CLIP, "weight"),
        ({"x": np.ones(2)}, 1e-11, CLIP, "resolution"),
        ({"x": np.ones(2)}, 1.0, 0.0, "clip"),
    ],
)
def test_encrypt_refuses(keys: tuple[Any, Any], model: Model, weight: float, clip: float, match: str) -> None:
    with pytest.raises(HEError, match=match):
        codec.encrypt_model(keys[0], model, weight, clip)


def test_encrypt_refuses_what_cannot_be_stored(keys: tuple[Any, Any]) -> None:
    with pytest.raises(WireError, match="not a numpy array"):
        codec.encrypt_model(keys[0], {"x": [1.0]}, 1.0, CLIP)  # type: ignore[dict-item]


# ---------------------------------------------------------------- the server's sum


def test_sixteen_clients_at_the_clip_bound_sum_exactly(keys: tuple[Any, Any], tmp_path: Path) -> None:
    # 9000 + 6 values: three ciphertexts. Column 0 is +clip and column 1 -clip for every client,
    # so those fields hold the largest sums allowed; the rest are exact multiples of 2**-f.
    rng = np.random.default_rng(1)
    models = []
    for i in range(params.MAX_CLIENTS):
        w = rng.integers(-(2**15), 2**15, (1800, 5), endpoint=True) * STEP
        w[:, 0], w[:, 1] = CLIP, -CLIP
        models.append({"w": w, "k": np.full((2, 3), i - 8, dtype=np.int32)})
    uploads = [_upload(tmp_path / f"u{i}", keys[0], m) for i, m in enumerate(models)]
    total = _summed(keys, tmp_path, uploads)
    assert total.count == params.MAX_CLIENTS
    with pytest.raises(HEError, match="contribution 17"):
        total.add_file(uploads[0], "u17")
    assert total.count == params.MAX_CLIENTS
    got, weight = _decrypt_sum(keys, total, tmp_path / "sum")
    assert weight == params.MAX_CLIENTS
    assert codec.read_header(tmp_path / "sum", "sum").contributions == params.MAX_CLIENTS
    assert codec.read_header(tmp_path / "sum", "sum").n_ciphertexts == 3
    assert np.array_equal(got["w"], sum(m["w"] for m in models) / params.MAX_CLIENTS)
    assert np.array_equal(got["w"][:, 0], np.full(1800, CLIP))
    assert np.array_equal(got["w"][:, 1], np.full(1800, -CLIP))
    assert got["k"].dtype == np.int32 and np.array_equal(got["k"], np.zeros((2, 3)))  # mean of -8..7 is -0.5


def test_write_then_decrypt_gives_the_weighted_average(keys: tuple[Any, Any], tmp_path: Path) -> None:
    weights = [0.2, 0.3, 0.5, 1.0]
    models = [_model(seed) for seed in range(len(weights))]
    uploads = [_upload(tmp_path / f"u{i}", keys[0], m, w) for i, (m, w) in enumerate(zip(models, weights, strict=True))]
    dest = tmp_path / "out" / "sum.fsh"
    got, total_weight = _decrypt_sum(keys, _summed(keys, tmp_path, uploads), dest)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert not [p for p in dest.parent.iterdir() if p != dest]
    quantised = [round(w * 2**F) / 2**F for w in weights]
    assert total_weight == sum(quantised)
    tolerance = len(weights) * STEP / total_weight * (1 + 1e-9)
    for name in ("w", "b"):
        want = sum(w * m[name].astype(np.float64) for w, m in zip(quantised, models, strict=True)) / total_weight
        assert np.abs(got[name] - want).max() <= tolerance + 1e-6, name
    assert got["n"] == 3


def test_sum_refuses_wrong_specs(keys: tuple[Any, Any], tmp_path: Path) -> None:
    total = codec.EncryptedSum(keys[1], arrays.specs_of(_model()), CLIP)
    shape = {**_model(), "w": np.zeros((25, 40))}
    with pytest.raises(WireError, match="has shape"):
        total.add_file(_upload(tmp_path / "a", keys[0], shape), "a")
    renamed = {"v" if k == "w" else k: v for k, v in _model().items()}
    with pytest.raises(WireError, match="missing"):
        total.add_file(_upload(tmp_path / "b", keys[0], renamed), "b")
    with pytest.raises(WireError, match="clip"):
        total.add_file(_upload(tmp_path / "c", keys[0], _model(), clip=2.0), "c")
    assert total.count == 0


def test_sum_refuses_a_sum_and_keys(keys: tuple[Any, Any], tmp_path: Path) -> None:
    uploads = [_upload(tmp_path / f"u{i}", keys[0], _model(i)) for i in range(2)]
    _summed(keys, tmp_path, uploads).write(tmp_path / "sum")
    total = codec.EncryptedSum(keys[1], arrays.specs_of(_model()), CLIP)
    with pytest.raises(WireError, match="holds 2 contributions"):
        total.add_file(tmp_path / "sum", "sum")
    with pytest.raises(HEError, match="nothing was added"):
        total.write(tmp_path / "empty")
    with pytest.raises(HEError, match="holds a secret key"):
        codec.EncryptedSum(keys[0], arrays.specs_of(_model()), CLIP)
    with pytest.raises(HEError, match="bool"):
        codec.EncryptedSum(keys[1], (arrays.TensorSpec("m", "bool", (2,)),), CLIP)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: d[:3],
        lambda d: d[:20],
        lambda d: d[: _header_end(d) + 2],
        lambda d: d[: _header_end(d) + 100],
        lambda d: d[:-1],
        lambda d: d[: _records(d)[1][0]],
        lambda d: d + b"\0",
        lambda d: d + bytes(5 << 20),
        lambda d: d[: _header_end(d)] + struct.pack("<I", limits.MAX_HE_CIPHERTEXT_BYTES + 1) + d[_header_end(d) + 4 :],
        lambda d: d[: _header_end(d)] + struct.pack("<I", 0) + d[_header_end(d) + 4 :],
    ],
    ids=[
        "magic",
        "header",
        "record-length",
        "record-0",
        "last-byte",
        "record-1",
        "trailing-byte",
        "trailing-lots",
        "record-too-long",
        "record-empty",
    ],
)
def test_sum_refuses_a_malformed_file(keys: tuple[Any, Any], tmp_path: Path, mangle: Callable[[bytes], bytes]) -> None:
    good = codec.encrypt_model(keys[0], {"x": np.ones(5_000)}, 1.0, CLIP)
    assert len(_records(good)) == 2
    path = tmp_path / "bad"
    path.write_bytes(mangle(good))
    total = codec.EncryptedSum(keys[1], arrays.specs_of({"x": np.ones(5_000)}), CLIP)
    with pytest.raises(WireError, match="bad: "):
        total.add_file(path, "bad")
    assert total.count == 0
    with pytest.raises(WireError):
        codec.decrypt_model(keys[0], path.read_bytes(), "bad")


def test_a_corrupted_record_leaves_the_sum_unchanged(keys: tuple[Any, Any], tmp_path: Path) -> None:
    models = [{"x": np.full(10_000, float(i + 1))} for i in range(3)]
    uploads = [_upload(tmp_path / f"u{i}", keys[0], m) for i, m in enumerate(models)]
    data = bytearray(uploads[1].read_bytes())
    start, size = _records(bytes(data))[1]  # record 0 loads fine; record 1 is bad
    middle = start + size // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    uploads[1].write_bytes(bytes(data))
    total = codec.EncryptedSum(keys[1], arrays.specs_of(models[0]), CLIP)
    total.add_file(uploads[0], "u0")
    with pytest.raises((WireError, HEError), match="u1: ciphertext record 1"):
        total.add_file(uploads[1], "u1")
    total.add_file(uploads[2], "u2")
    assert total.count == 2
    got, weight = _decrypt_sum(keys, total, tmp_path / "sum")
    assert weight == 2 and np.array_equal(got["x"], np.full(10_000, 2.0))


# ---------------------------------------------------------------- the header


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc.__setitem__(key, value)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (_set("extra", 1), "unknown key 'extra'"),
        (lambda doc: doc.pop("clip"), "missing key 'clip'"),
        (_set("tensors", {}), "'tensors' must be a list"),
        (_set("tensors", [{"name": "x", "dtype": "bool", "shape": [3]}]), "dtype 'bool'"),
        (_set("tensors", [{"name": "x", "dtype": "float64", "shape": [-3]}]), "bad shape"),
        (_set("tensors", [{"name": "x", "dtype": "float64", "shape": [2**40]}]), "bad shape"),
        (_set("tensors", [{"name": "x", "dtype": "float64"}]), "missing key 'shape'"),
        (_set("tensors", [{"name": "x", "dtype": "float64", "shape": [True]}]), "list of integers"),
        (_set("tensors", [{"name": "", "dtype": "float64", "shape": [3]}]), "bad or duplicate tensor name"),
        (_set("clip", -1.0), "clip"),
        (_set("clip", "4"), "clip must be a number"),
        (_set("clip", 2.0), "scale_bits is 34, the tensors and clip imply 35"),
        (_set("scale_bits", 33), "scale_bits is 33"),
        (_set("n_values", 4), "n_values is 4, the tensors and clip imply 3"),
        (_set("n_ciphertexts", 2), "n_ciphertexts is 2"),
        (_set("contributions", 0), "contributions must be in 1..16"),
        (_set("contributions", 17), "contributions must be in 1..16"),
        (_set("contributions", 1.0), "contributions must be an integer"),
    ],
)
def test_read_header_refuses(keys: tuple[Any, Any], change: Callable[[dict[str, Any]], None], match: str) -> None:
    good = codec.encrypt_model(keys[0], {"x": np.ones(2)}, 1.0, CLIP)
    with pytest.raises(WireError, match=match):
        codec.read_header(_with_header(good, change), "upload")


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"FSH2" + bytes(100), "bad magic"),
        (b"FSH", "truncated"),
        (b"FSH1" + struct.pack("<I", limits.MAX_HE_HEADER_BYTES + 1), "over the limit"),
        (b"FSH1" + struct.pack("<I", 50) + b"{}", "truncated header"),
        (b"FSH1" + struct.pack("<I", 3) + b"{x}", "not valid JSON"),
        (b"FSH1" + struct.pack("<I", 2) + b"\xff\xfe", "not UTF-8"),
        (b"FSH1" + struct.pack("<I", 15) + b'{"clip":NaN}   ', "not valid JSON"),
        (b"FSH1" + struct.pack("<I", 19) + b'{"clip":1,"clip":1}', "duplicate key 'clip'"),
        (b"FSH1" + struct.pack("<I", 2) + b"[]", "expected a JSON object"),
    ],
)
def test_read_header_refuses_raw(raw: bytes, match: str) -> None:
    with pytest.raises(WireError, match=match):
        codec.read_header(raw, "upload")


def test_read_header_of_a_file(keys: tuple[Any, Any], tmp_path: Path) -> None:
    path = _upload(tmp_path / "u", keys[0], _model())
    assert codec.read_header(path, "u") == codec.read_header(path.read_bytes(), "u")
    with pytest.raises(FileNotFoundError):
        codec.read_header(tmp_path / "missing", "missing")


# ---------------------------------------------------------------- streaming encryption


def _big_model(n_tensors: int = 4, size: int = 100_000) -> Model:
    rng = np.random.default_rng(7)
    return {f"t{i}": rng.uniform(-1, 1, size).astype(np.float32) for i in range(n_tensors)}


def test_ciphertexts_are_yielded_as_they_are_encrypted(keys: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import tenseal as ts  # type: ignore[import-untyped]

    made: list[int] = []
    real = ts.bfv_vector

    def counting(ctx: Any, values: Any) -> Any:
        made.append(len(values))
        return real(ctx, values)

    monkeypatch.setattr(ts, "bfv_vector", counting)
    model = _big_model(n_tensors=2, size=20_000)  # 40,001 values: 5 ciphertexts
    chunks = codec.encrypt_chunks(keys[0], model, 1.0, CLIP)
    assert made == []  # checked and ready, nothing encrypted yet
    header = next(chunks)
    assert header.startswith(codec.MAGIC) and made == []
    first = next(chunks)
    assert len(made) == 1  # the first record left before the second ciphertext was made
    rest = list(chunks)
    assert len(made) == codec.ciphertexts_for(40_001) == 1 + len(rest)
    got, weight = codec.decrypt_model(keys[0], b"".join([header, first, *rest]), "streamed")
    assert weight == 1.0
    assert all(np.allclose(got[k], model[k], atol=2 * STEP) for k in model)


def test_streaming_encryption_holds_one_ciphertext_of_values_not_the_model(keys: Any) -> None:
    import tracemalloc

    model = _big_model()  # 400,000 values: 49 ciphertexts, about 3 MB encrypted
    tracemalloc.start()
    try:
        total = sum(len(chunk) for chunk in codec.encrypt_chunks(keys[0], model, 1.0, CLIP))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # encrypting it whole took over 8 bytes per value twice (float64 then int64): 6.4 MB here
    assert peak < total / 4, (peak, total)


def test_a_bad_model_is_refused_before_anything_is_yielded(keys: Any) -> None:
    model = _big_model(n_tensors=2, size=10_000)
    model["t1"][-1] = np.nan
    with pytest.raises(HEError, match="'t1' holds NaN"):
        codec.encrypt_chunks(keys[0], model, 1.0, CLIP)  # raised by the call, not on the first next()
