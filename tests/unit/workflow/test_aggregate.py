"""Accumulator: weighted averages of FULL and DIFF updates streamed from files, dtypes kept, bad updates refused."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from fedsec.errors import WireError
from fedsec.wire import arrays
from fedsec.workflow.aggregate import Accumulator

Arrays = dict[str, NDArray[Any]]

MODEL: Arrays = {
    "w": np.zeros((2, 3), np.float32),
    "h": np.zeros(4, np.float16),
    "d": np.zeros(2, np.float64),
    "n": np.zeros(3, np.int64),
    "s": np.zeros((), np.float32),
}


def _filled(value: float) -> Arrays:
    """MODEL with every element set to value (cast to each tensor's dtype)."""
    return {name: np.full_like(t, value) for name, t in MODEL.items()}


def _write(tmp: Path, name: str, update: Arrays) -> Path:
    path = tmp / f"{name}.fsa"
    arrays.write_file(path, update)
    return path


def _acc() -> Accumulator:
    return Accumulator(arrays.specs_of(MODEL))


def _average(tmp: Path, acc: Accumulator, base: Arrays | None = None) -> Arrays:
    base_path = _write(tmp, "base", base) if base is not None else None
    dest = tmp / "average.fsa"
    acc.write_average(dest, base_path)
    return arrays.read_file(dest)


def _check_dtypes(out: Arrays) -> None:
    assert list(out) == list(MODEL)
    for name, tensor in MODEL.items():
        assert out[name].dtype == tensor.dtype, name
        assert out[name].shape == tensor.shape, name


def test_weighted_average_of_full_updates(tmp_path: Path) -> None:
    acc = _acc()
    acc.add(_write(tmp_path, "a", _filled(2)), 1.0, "a")
    acc.add(_write(tmp_path, "b", _filled(6)), 3.0, "b")
    out = _average(tmp_path, acc)
    _check_dtypes(out)
    for name in MODEL:  # (1*2 + 3*6) / 4 = 5, exact in every dtype
        assert np.array_equal(out[name], np.full_like(MODEL[name], 5)), name


def test_weighted_average_of_diffs_is_added_to_the_base(tmp_path: Path) -> None:
    acc = _acc()
    acc.add(_write(tmp_path, "a", _filled(1)), 2.0, "a")
    acc.add(_write(tmp_path, "b", _filled(4)), 6.0, "b")
    out = _average(tmp_path, acc, base=_filled(10))
    _check_dtypes(out)
    for name in MODEL:  # 10 + (2*1 + 6*4) / 8 = 13.25; ints round to 13
        want = 13 if MODEL[name].dtype.kind == "i" else 13.25
        assert np.array_equal(out[name], np.full_like(MODEL[name], want)), name


def test_varied_values_match_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    updates = [
        {name: np.asarray(rng.standard_normal(t.shape) * 10).astype(t.dtype) for name, t in MODEL.items()}
        for _ in "abc"
    ]
    weights = [1.0, 2.5, 100.0]
    acc = _acc()
    for i, (update, weight) in enumerate(zip(updates, weights, strict=True)):
        acc.add(_write(tmp_path, str(i), update), weight, str(i))
    out = _average(tmp_path, acc)
    _check_dtypes(out)
    for name, tensor in MODEL.items():
        want = sum(w * u[name].astype(np.float64) for u, w in zip(updates, weights, strict=True)) / sum(weights)
        if tensor.dtype.kind == "i":
            assert np.array_equal(out[name], np.rint(want).astype(tensor.dtype)), name
        else:
            tol = 1e-2 if tensor.dtype == np.float16 else 1e-5
            assert np.allclose(out[name], want, rtol=tol, atol=tol), name


def test_int_tensors_are_rounded_not_truncated(tmp_path: Path) -> None:
    acc = Accumulator(arrays.specs_of({"n": np.zeros(3, np.int32)}))
    acc.add(_write(tmp_path, "a", {"n": np.array([0, 1, -1], np.int32)}), 1.0, "a")
    acc.add(_write(tmp_path, "b", {"n": np.array([1, 2, -2], np.int32)}), 3.0, "b")
    dest = tmp_path / "out.fsa"
    acc.write_average(dest, None)
    out = arrays.read_file(dest)["n"]
    assert out.dtype == np.int32
    assert out.tolist() == [1, 2, -2]  # 0.75, 1.75, -1.75: rounded, where truncation gives 0, 1, -1


@pytest.mark.parametrize("base", [False, True], ids=["full", "diff"])
def test_scalar_int_tensor_is_averaged(tmp_path: Path, base: bool) -> None:
    model: Arrays = {"num_batches_tracked": np.array(0, np.int64), "w": np.zeros(2, np.float32)}
    acc = Accumulator(arrays.specs_of(model))
    acc.add(_write(tmp_path, "a", {"num_batches_tracked": np.array(3, np.int64), "w": np.ones(2, np.float32)}), 1, "a")
    acc.add(_write(tmp_path, "b", {"num_batches_tracked": np.array(6, np.int64), "w": np.ones(2, np.float32)}), 2, "b")
    dest = tmp_path / "out.fsa"
    acc.write_average(dest, _write(tmp_path, "base", model) if base else None)
    out = arrays.read_file(dest)
    assert out["num_batches_tracked"].shape == () and out["num_batches_tracked"].dtype == np.int64
    assert int(out["num_batches_tracked"]) == 5


def test_float16_sums_do_not_overflow(tmp_path: Path) -> None:
    # 60000 * weight 4 is past float16's maximum (65504); the sums must be kept wider.
    acc = Accumulator(arrays.specs_of({"h": np.zeros(2, np.float16)}))
    for name in "ab":
        acc.add(_write(tmp_path, name, {"h": np.full(2, 60000, np.float16)}), 4.0, name)
    dest = tmp_path / "out.fsa"
    acc.write_average(dest, None)
    out = arrays.read_file(dest)["h"]
    assert out.dtype == np.float16 and np.all(np.isfinite(out)) and np.allclose(out, 60000, rtol=1e-3)


def test_float64_keeps_its_precision(tmp_path: Path) -> None:
    acc = Accumulator(arrays.specs_of({"d": np.zeros(1, np.float64)}))
    value = np.array([1.0 + 2.0**-40], np.float64)  # not representable in float32
    acc.add(_write(tmp_path, "a", {"d": value}), 1.0, "a")
    dest = tmp_path / "out.fsa"
    acc.write_average(dest, None)
    assert arrays.read_file(dest)["d"][0] == value[0]


def test_count_and_weight_are_tracked(tmp_path: Path) -> None:
    acc = _acc()
    assert (acc.count, acc.weight) == (0, 0.0)
    path = _write(tmp_path, "a", _filled(1))
    acc.add(path, 2.5, "a")
    acc.add(path, 0.5, "b")
    assert (acc.count, acc.weight) == (2, 3.0)


@pytest.mark.parametrize("weight", [0.0, -1.0, float("nan")])
def test_weight_must_be_positive(tmp_path: Path, weight: float) -> None:
    acc = _acc()
    with pytest.raises(WireError, match="site-1: weight must be positive"):
        acc.add(_write(tmp_path, "a", _filled(1)), weight, "site-1")
    assert (acc.count, acc.weight) == (0, 0.0)


def test_average_of_nothing_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WireError, match="no update"):
        _acc().write_average(tmp_path / "out.fsa", None)
    assert not (tmp_path / "out.fsa").exists()


def _set(name: str, value: NDArray[Any]) -> Callable[[Arrays], None]:
    def change(update: Arrays) -> None:
        update[name] = value

    return change


def _poke(name: str, value: float) -> Callable[[Arrays], None]:
    def change(update: Arrays) -> None:
        update[name].flat[0] = value

    return change


def _drop(update: Arrays) -> None:
    del update["d"]


def _swap(update: Arrays) -> None:
    first = update.pop("w")
    update["w"] = first  # same tensors, another order


BAD_UPDATES: list[tuple[str, Callable[[Arrays], None], str]] = [
    ("shape", _set("w", np.zeros((3, 2), np.float32)), r"tensor 'w' has shape \(3, 2\), the model has \(2, 3\)"),
    ("dtype", _set("w", np.zeros((2, 3), np.float64)), "tensor 'w' has dtype float64, the model has float32"),
    ("int dtype", _set("n", np.zeros(3, np.int32)), "tensor 'n' has dtype int32, the model has int64"),
    ("missing", _drop, "tensor 'd' is missing"),
    ("extra", _set("extra", np.zeros(1, np.float32)), "tensor 'extra' is not in the model"),
    ("order", _swap, "the tensors are in another order than the model's: #0 is 'h', the model's is 'w'"),
    ("nan", _poke("w", float("nan")), "tensor 'w' has 1 NaN and 0 infinite values"),
    ("inf", _poke("d", float("inf")), "tensor 'd' has 0 NaN and 1 infinite values"),
    ("-inf float16", _poke("h", float("-inf")), "tensor 'h' has 0 NaN and 1 infinite values"),
]


@pytest.mark.parametrize(("change", "message"), [(c, m) for _, c, m in BAD_UPDATES], ids=[i for i, _, _ in BAD_UPDATES])
def test_check_refuses_bad_updates(tmp_path: Path, change: Callable[[Arrays], None], message: str) -> None:
    update = _filled(1)
    change(update)
    with pytest.raises(WireError, match=f"^update of site-2: {message}"):
        _acc().check(_write(tmp_path, "bad", update), "update of site-2")


def test_check_refuses_a_file_that_is_no_container(tmp_path: Path) -> None:
    path = tmp_path / "junk.fsa"
    path.write_bytes(b"not an array container")
    with pytest.raises(WireError, match="update of site-3: bad magic"):
        _acc().check(path, "update of site-3")


def test_check_passes_a_good_update(tmp_path: Path) -> None:
    acc = _acc()
    acc.check(_write(tmp_path, "good", _filled(-3)), "good")
    assert acc.count == 0  # checking adds nothing
