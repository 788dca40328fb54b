"""Each strategy's fold and result against hand-worked examples (the expected numbers are written out here).

Two rounds on a two-tensor model: w (float64) and n (an int64 counter). Round 0 sends full weights,
w = [0, -2] with weight 1 and [4, -2] with weight 3, n = 4 and 8: the average is w = [3, -2] and
n = (4 + 24) / 4 = 7, so from the global w = [1, -2] the pseudo-gradient is delta = [2, 0]. Round 1
sends differences, w = [3, 0] with weight 1 and [0, 0] with weight 2, n = 3 and 0: delta = [1, 0], n + 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from fedsec.errors import JobError
from fedsec.jobs.meta import ServerOptimizer, StrategyConfig, StrategyKind
from fedsec.wire import arrays
from fedsec.workflow import strategies
from fedsec.workflow.strategies import FedAvg, FedOpt, Strategy

GLOBAL = {"w": np.array([1.0, -2.0]), "n": np.array([5], np.int64)}
ROUND_0 = [
    ({"w": np.array([0.0, -2.0]), "n": np.array([4], np.int64)}, 1.0),
    ({"w": np.array([4.0, -2.0]), "n": np.array([8], np.int64)}, 3.0),
]
ROUND_1 = [
    ({"w": np.array([3.0, 0.0]), "n": np.array([3], np.int64)}, 1.0),
    ({"w": np.array([0.0, 0.0]), "n": np.array([0], np.int64)}, 2.0),
]
ADAPTIVE = {"server_lr": 0.1, "beta1": 0.9, "beta2": 0.99, "tau": 0.001}


def one_round(
    strategy: Strategy,
    tmp: Path,
    number: int,
    model: Path,
    updates: list[tuple[dict[str, NDArray[Any]], float]],
    specs: tuple[arrays.TensorSpec, ...] | None = None,
) -> Path:
    """Fold updates (of specs, default the model's) into a new round of strategy from their files; the path of
    the round's result."""
    fold = strategy.fold(specs or arrays.read_specs(model))
    for i, (update, weight) in enumerate(updates):
        path = tmp / f"update-{number}-{i}.fsa"
        arrays.write_file(path, update)
        fold.check(path, "update")
        fold.add(path, weight, "update")
    dest = tmp / f"round_{number}.fsa"
    strategy.write_result(fold, model, number == 1, dest)  # round 1 sends differences
    return dest


def two_rounds(strategy: Strategy, tmp: Path) -> tuple[dict[str, NDArray[Any]], dict[str, NDArray[Any]]]:
    start = tmp / "global.fsa"
    arrays.write_file(start, GLOBAL)
    first = one_round(strategy, tmp, 0, start, ROUND_0)
    second = one_round(strategy, tmp, 1, first, ROUND_1)
    return arrays.read_file(first), arrays.read_file(second)


@pytest.mark.parametrize(
    ("strategy", "w0", "w1"),
    [
        # FedAvg: the average itself; then the average difference added
        (FedAvg(), 3.0, 4.0),
        # adam: m = 0.1*2 = 0.2, v = 0.01*4 = 0.04, w = 1 + 0.1*0.2/(0.2 + 0.001);
        # then m = 0.9*0.2 + 0.1*1 = 0.28, v = 0.99*0.04 + 0.01*1 = 0.0496, w += 0.1*0.28/(sqrt(0.0496) + 0.001)
        (FedOpt(ServerOptimizer.ADAM, ADAPTIVE), 1.099502487562189, 1.2246642062736475),
        # yogi: v = 0 - 0.01*4*sign(0 - 4) = 0.04 as adam; then v = 0.04 - 0.01*1*sign(0.04 - 1) = 0.05
        (FedOpt(ServerOptimizer.YOGI, ADAPTIVE), 1.099502487562189, 1.224164787548177),
        # adagrad (beta1 0): m = 2, v = 4, w = 1 + 0.1*2/(2 + 0.001); then m = 1, v = 5, w += 0.1/(sqrt(5) + 0.001)
        (
            FedOpt(ServerOptimizer.ADAGRAD, {"server_lr": 0.1, "beta1": 0.0, "tau": 0.001}),
            1.0999500249875063,
            1.1446513934777758,
        ),
        # avgm: m = 2, w = 1 + 0.5*2 = 2; then m = 0.9*2 + 1 = 2.8, w = 2 + 0.5*2.8 = 3.4
        (FedOpt(ServerOptimizer.AVGM, {"server_lr": 0.5, "momentum": 0.9}), 2.0, 3.4),
    ],
    ids=["fedavg", "adam", "yogi", "adagrad", "avgm"],
)
def test_each_strategy_folds_two_rounds_as_worked_by_hand(
    strategy: Strategy, w0: float, w1: float, tmp_path: Path
) -> None:
    first, second = two_rounds(strategy, tmp_path)
    assert first["w"].dtype == np.float64 and first["n"].dtype == np.int64
    assert first["w"].tolist() == pytest.approx([w0, -2.0], rel=1e-12)
    assert second["w"].tolist() == pytest.approx([w1, -2.0], rel=1e-12)
    assert first["n"].tolist() == [7] and second["n"].tolist() == [8]  # counters: the rounded average


def test_fedopt_restored_from_its_state_continues_as_if_never_stopped(tmp_path: Path) -> None:
    start = tmp_path / "global.fsa"
    arrays.write_file(start, GLOBAL)
    first = FedOpt(ServerOptimizer.ADAM, ADAPTIVE)
    after_0 = one_round(first, tmp_path, 0, start, ROUND_0)
    state = first.state()
    assert sorted(state) == ["m.0", "v.0"]  # only the float tensor (index 0: w) has moments
    assert state["m.0"].tolist() == pytest.approx([0.2, 0.0]) and state["v.0"].tolist() == pytest.approx([0.04, 0.0])
    saved = tmp_path / "state.fsa"
    arrays.write_file(saved, state)

    second = FedOpt(ServerOptimizer.ADAM, ADAPTIVE)
    second.restore(arrays.read_file(saved), "state")
    after_1 = arrays.read_file(one_round(second, tmp_path, 1, after_0, ROUND_1))
    assert after_1["w"].tolist() == pytest.approx([1.2246642062736475, -2.0], rel=1e-12)


def test_a_fedopt_state_of_another_kind_is_refused() -> None:
    with pytest.raises(JobError, match="'x.0' is not a float64 fedopt state tensor"):
        FedOpt(ServerOptimizer.ADAM, ADAPTIVE).restore({"x.0": np.zeros(2)}, "state")
    with pytest.raises(JobError, match="'m.0' is not a float64"):
        FedOpt(ServerOptimizer.ADAM, ADAPTIVE).restore({"m.0": np.zeros(2, np.float32)}, "state")
    with pytest.raises(JobError, match="fedavg keeps no state"):
        FedAvg().restore({"m.0": np.zeros(2)}, "state")


def test_make_picks_the_strategy_and_its_task_meta_carries_its_settings() -> None:
    assert strategies.make(StrategyConfig()).task_meta() == {"name": "fedavg"}
    prox = strategies.make(StrategyConfig(StrategyKind.FEDPROX, mu=0.25))
    assert prox.task_meta() == {"name": "fedprox", "mu": 0.25} and prox.supports_he
    opt = strategies.make(StrategyConfig(StrategyKind.FEDOPT, optimizer=ServerOptimizer.AVGM, momentum=0.5))
    assert opt.task_meta() == {"name": "fedopt", "optimizer": "avgm", "server_lr": 1.0, "momentum": 0.5}
    assert opt.supports_he and opt.stateful  # under HE its step runs on the sites (fedsec.site.fedopt_he)


def test_a_fedopt_state_that_does_not_fit_the_model_is_refused(tmp_path: Path) -> None:
    strategy = FedOpt(ServerOptimizer.ADAM, ADAPTIVE)
    strategy.restore({"m.0": np.zeros(3), "v.0": np.zeros(3)}, "state")  # w has 2 values
    start = tmp_path / "global.fsa"
    arrays.write_file(start, GLOBAL)
    with pytest.raises(JobError, match=r"fedopt state m.0: shape \(3,\), the model's tensor 0 has \(2,\)"):
        one_round(strategy, tmp_path, 0, start, ROUND_0)


@pytest.mark.parametrize(
    "config",
    [
        StrategyConfig(),
        StrategyConfig(StrategyKind.FEDPROX, mu=0.01),
        StrategyConfig(StrategyKind.FEDOPT, optimizer=ServerOptimizer.YOGI, beta2=0.5),
        StrategyConfig(StrategyKind.FEDOPT, optimizer=ServerOptimizer.AVGM),
    ],
)
def test_the_server_says_what_the_signed_job_says_so_sites_accept_its_tasks(config: StrategyConfig) -> None:
    assert strategies.make(config).task_meta() == config.task_meta()
