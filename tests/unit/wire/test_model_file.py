"""Model files users open: safetensors written and read back, the .fsa container, result folders, HE refusal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fedsec
from fedsec.errors import ConfigError, HEError, WireError
from fedsec.wire import arrays, model_file

PARAMS = {
    "conv.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7,
    "conv.bias": np.array([1.5, -2.0], dtype=np.float64),
    "steps": np.array(7, dtype=np.int64),
    "mask": np.array([True, False]),
}


def same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for name, value in a.items():
        assert value.dtype == b[name].dtype and value.shape == b[name].shape, name
        assert np.array_equal(value, b[name]), name


def test_safetensors_written_by_fedsec_is_read_by_safetensors_alone(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    model_file.write_safetensors(path, PARAMS)
    assert path.stat().st_mode & 0o777 == 0o600
    code = (
        "import sys; from safetensors.numpy import load_file; m = load_file(sys.argv[1]);"
        "assert 'fedsec' not in sys.modules; print(sorted((k, str(v.dtype), v.shape) for k, v in m.items()))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(sorted((k, str(v.dtype), v.shape) for k, v in PARAMS.items()))


@pytest.mark.parametrize("suffix", [".safetensors", ".fsa"])
def test_load_model_reads_both_formats_and_result_folders(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"global_model{suffix}"
    if suffix == ".fsa":
        arrays.write_file(path, PARAMS)
    else:
        model_file.write_safetensors(path, PARAMS)
    same(fedsec.load_model(path), PARAMS)
    same(fedsec.load_model(str(tmp_path)), PARAMS)


def test_a_folder_prefers_safetensors(tmp_path: Path) -> None:
    arrays.write_file(tmp_path / "global_model.fsa", {"w": np.zeros(3, np.float32)})
    model_file.write_safetensors(tmp_path / "global_model.safetensors", {"w": np.ones(3, np.float32)})
    assert fedsec.load_model(tmp_path)["w"].tolist() == [1.0, 1.0, 1.0]


def test_container_converts_to_safetensors(tmp_path: Path) -> None:
    arrays.write_file(tmp_path / "a.fsa", PARAMS)
    model_file.container_to_safetensors(tmp_path / "a.fsa", tmp_path / "a.safetensors")
    same(model_file.read_safetensors(tmp_path / "a.safetensors"), PARAMS)


def test_an_encrypted_model_names_the_decrypt_command(tmp_path: Path) -> None:
    (tmp_path / "global_model.fsh").write_bytes(b"ciphertext")
    for path in (tmp_path, tmp_path / "global_model.fsh"):
        with pytest.raises(HEError, match="fedsec he decrypt --context"):
            fedsec.load_model(path)


@pytest.mark.parametrize(
    ("name", "content", "error", "match"),
    [
        ("missing.safetensors", None, ConfigError, "no such file"),
        ("m.npy", b"x", ConfigError, r"not a \.safetensors or \.fsa file"),
        ("m.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{nope}xx", WireError, "not a valid safetensors file"),
        ("m.fsa", b"FSA1junk", WireError, "array file"),
    ],
)
def test_bad_files_are_named(
    tmp_path: Path, name: str, content: bytes | None, error: type[Exception], match: str
) -> None:
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(error, match=match):
        fedsec.load_model(tmp_path / name)


def test_an_empty_result_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"holds no global_model\.safetensors"):
        fedsec.load_model(tmp_path)


def test_unstorable_dtypes_are_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(WireError):
        model_file.write_safetensors(tmp_path / "m.safetensors", {"c": np.zeros(2, np.complex64)})
    assert not (tmp_path / "m.safetensors").exists()
