"""The shared FedOpt step (fedsec.fedopt) against hand-worked numbers, and the bytes the sites seal and digest.

The model: w (float32, two values) and n (an int64 counter). Step 1 takes delta = [2, 0] for w and
2.4 for n; step 2 takes delta = [1, -0.5] and -0.6. With server_lr 0.1, beta1 0.9, beta2 0.99, tau 0.001:

adam    m = [0.2, 0]            v = [0.04, 0]        w = [1 + 0.1*0.2/(0.2 + 0.001), -2]
        m = [0.28, -0.05]       v = [0.0496, 0.0025]  w += 0.1 * m / (sqrt(v) + 0.001)
yogi    v = 0 - 0.01*4*sign(0 - 4) = 0.04 (as adam); then v = [0.04 - 0.01*1*sign(0.04 - 1), 0 + 0.01*0.25]
        = [0.05, 0.0025]
adagrad (beta1 0) m = [2, 0], v = [4, 0]; then m = [1, -0.5], v = [5, 0.25]
avgm    (server_lr 0.5, momentum 0.9) m = [2, 0], w = [2, -2]; then m = [2.8, -0.5], w = [3.4, -2.25]
n       5 + 2.4 = 7.4 -> 7, then 7 - 0.6 = 6.4 -> 6, whatever the optimizer
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from fedsec import fedopt
from fedsec.errors import JobError, WireError
from fedsec.jobs.meta import ServerOptimizer
from fedsec.wire import arrays

MODEL: dict[str, NDArray[Any]] = {"w": np.array([1.0, -2.0], np.float32), "n": np.array(5, np.int64)}
DELTAS: list[dict[str, NDArray[Any]]] = [
    {"w": np.array([2.0, 0.0]), "n": np.array(2.4)},
    {"w": np.array([1.0, -0.5]), "n": np.array(-0.6)},
]
ADAPTIVE = {"server_lr": 0.1, "beta1": 0.9, "beta2": 0.99, "tau": 0.001}


def taking(delta: dict[str, NDArray[Any]]) -> Callable[[str, NDArray[np.float64]], NDArray[np.float64]]:
    return lambda name, _x: np.asarray(delta[name], dtype=np.float64)


def two_steps(optimizer: fedopt.FedOptStep) -> list[dict[str, NDArray[Any]]]:
    specs = arrays.specs_of(MODEL)
    model: dict[str, NDArray[Any]] = dict(MODEL)
    out = []
    for delta in DELTAS:
        model = optimizer.step(specs, model, taking(delta))
        out.append(model)
    return out


W1_ADAM = 1 + 0.1 * 0.2 / (0.2 + 0.001)


@pytest.mark.parametrize(
    ("optimizer", "settings", "after_1", "after_2"),
    [
        (
            ServerOptimizer.ADAM,
            ADAPTIVE,
            [W1_ADAM, -2.0],
            [
                W1_ADAM + 0.1 * 0.28 / (math.sqrt(0.0496) + 0.001),
                -2.0 + 0.1 * -0.05 / (math.sqrt(0.0025) + 0.001),
            ],
        ),
        (
            ServerOptimizer.YOGI,
            ADAPTIVE,
            [W1_ADAM, -2.0],
            [
                W1_ADAM + 0.1 * 0.28 / (math.sqrt(0.05) + 0.001),
                -2.0 + 0.1 * -0.05 / (math.sqrt(0.0025) + 0.001),
            ],
        ),
        (
            ServerOptimizer.ADAGRAD,
            {"server_lr": 0.1, "beta1": 0.0, "tau": 0.001},
            [1 + 0.1 * 2 / (2 + 0.001), -2.0],
            [1 + 0.1 * 2 / (2 + 0.001) + 0.1 / (math.sqrt(5) + 0.001), -2.0 + 0.1 * -0.5 / (0.5 + 0.001)],
        ),
        (ServerOptimizer.AVGM, {"server_lr": 0.5, "momentum": 0.9}, [2.0, -2.0], [3.4, -2.25]),
    ],
    ids=["adam", "yogi", "adagrad", "avgm"],
)
def test_the_step_moves_the_model_as_worked_by_hand(
    optimizer: ServerOptimizer, settings: dict[str, float], after_1: list[float], after_2: list[float]
) -> None:
    first, second = two_steps(fedopt.FedOptStep(optimizer, settings))
    assert first["w"].dtype == np.float32 and first["n"].dtype == np.int64  # the model's dtypes
    assert first["w"].tolist() == pytest.approx(after_1, rel=1e-6)  # float32 output
    assert second["w"].tolist() == pytest.approx(after_2, rel=1e-6)
    assert int(first["n"]) == 7 and int(second["n"]) == 6  # counters: global + delta, rounded


def test_the_state_is_float64_by_tensor_index_and_adam_keeps_it_exactly() -> None:
    optimizer = fedopt.FedOptStep(ServerOptimizer.ADAM, ADAPTIVE)
    two_steps(optimizer)
    state = optimizer.state()
    assert list(state) == ["m.0", "v.0"]  # only the float tensor w (index 0) has moments
    assert all(v.dtype == np.float64 for v in state.values())
    assert state["m.0"].tolist() == pytest.approx([0.28, -0.05], rel=1e-15)
    assert state["v.0"].tolist() == pytest.approx([0.0496, 0.0025], rel=1e-15)
    assert list(fedopt.FedOptStep(ServerOptimizer.AVGM, {"server_lr": 1.0, "momentum": 0.9}).state()) == []


def test_a_restored_step_gives_the_same_bytes_as_one_never_stopped() -> None:
    specs = arrays.specs_of(MODEL)
    whole = fedopt.FedOptStep(ServerOptimizer.YOGI, ADAPTIVE)
    _, expected = two_steps(whole)
    first = fedopt.FedOptStep(ServerOptimizer.YOGI, ADAPTIVE)
    after_1 = first.step(specs, MODEL, taking(DELTAS[0]))
    model, state = fedopt.split_plaintext(fedopt.sealed_plaintext(after_1, first.state()), "sealed")
    second = fedopt.FedOptStep(ServerOptimizer.YOGI, ADAPTIVE)
    second.restore(state, "state")
    got = second.step(specs, model, taking(DELTAS[1]))
    assert arrays.encode(got) == arrays.encode(expected)
    assert fedopt.sealed_plaintext(got, second.state()) == fedopt.sealed_plaintext(expected, whole.state())


def test_a_state_that_does_not_fit_is_refused() -> None:
    optimizer = fedopt.FedOptStep(ServerOptimizer.ADAM, ADAPTIVE)
    with pytest.raises(JobError, match="'x.0' is not a float64 fedopt state tensor"):
        optimizer.restore({"x.0": np.zeros(2)}, "state")
    with pytest.raises(JobError, match="'v.1' is not a float64"):
        optimizer.restore({"v.1": np.zeros(2, np.float32)}, "state")
    optimizer.restore({"m.0": np.zeros(2), "v.0": np.zeros(3)}, "state")
    with pytest.raises(JobError, match=r"fedopt state v.0: shape \(3,\), the model's tensor 0 has \(2,\)"):
        two_steps(optimizer)


def test_the_sealed_bytes_are_canonical_and_split_back() -> None:
    state = {"m.0": np.array([0.1, 0.2]), "v.0": np.array([0.3, 0.4])}
    plain = fedopt.sealed_plaintext(MODEL, state)
    assert plain == fedopt.sealed_plaintext(dict(MODEL), dict(state))  # one model and state, one encoding
    model, back = fedopt.split_plaintext(plain, "sealed")
    assert arrays.encode(model) == arrays.encode(MODEL) and arrays.encode(back) == arrays.encode(state)
    assert fedopt.split_plaintext(fedopt.sealed_plaintext(MODEL, {}), "sealed")[1] == {}
    with pytest.raises(WireError, match="sealed: 3 bytes, too short"):
        fedopt.split_plaintext(b"abc", "sealed")
    with pytest.raises(WireError, match="the global model claims"):
        fedopt.split_plaintext(b"\xff" * 8 + plain[8:], "sealed")


def test_the_digest_binds_the_job_and_the_round() -> None:
    plain = fedopt.sealed_plaintext(MODEL, {})
    d = fedopt.digest("job-1", 3, plain)
    assert len(d) == 64 and d == fedopt.digest("job-1", 3, plain)
    assert len({d, fedopt.digest("job-1", 4, plain), fedopt.digest("job-2", 3, plain)}) == 3
    assert d != fedopt.digest("job-1", 3, plain[:-1] + bytes([plain[-1] ^ 1]))
