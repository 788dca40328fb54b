"""SCAFFOLD's server fold against a hand-worked example (the expected numbers are written out here).

N = 3 sites, server_lr = 0.5, a model of w (float64, controlled) and n (an int64 counter, no control
variate), x = w [1, -2], n 5, c = 0.

Round 0, full weights: site A w [3, -2], n 4, delta_c [0.3, -0.6], weight 1; site B w [1, 2], n 8,
delta_c [0.9, 0], weight 3. mean_w(w) = ([3, -2] + 3 [1, 2]) / 4 = [1.5, 1], so x = [1, -2] + 0.5 [0.5, 3]
= [1.25, -0.5]; n = (4 + 24) / 4 = 7; c = ([0.3, -0.6] + [0.9, 0]) / 3 = [0.4, -0.2] (unweighted: a
weighted mean would give [0.75, -0.15]).

Round 1, differences: site A w [1, 1], n 4, delta_c [0.3, 0.3], weight 1; site C w [-1, 0], n 0,
delta_c [0, 0.6], weight 3. mean_w = [-0.5, 0.25], so x = [1.25, -0.5] + 0.5 [-0.5, 0.25] = [1, -0.375];
n = 7 + 1 = 8; c = [0.4, -0.2] + [0.3, 0.9] / 3 = [0.5, 0.1].
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from fedsec import limits
from fedsec.errors import JobError, WireError
from fedsec.jobs.meta import StrategyConfig, StrategyKind
from fedsec.wire import arrays
from fedsec.workflow import strategies
from fedsec.workflow.scaffold import Scaffold
from tests.unit.workflow.test_strategies import one_round as fold_round

GLOBAL = {"w": np.array([1.0, -2.0]), "n": np.array([5], np.int64)}
Update = tuple[dict[str, NDArray[Any]], float]
ROUND_0: list[Update] = [
    ({"w": np.array([3.0, -2.0]), "n": np.array([4], np.int64), "scaffold/w": np.array([0.3, -0.6])}, 1.0),
    ({"w": np.array([1.0, 2.0]), "n": np.array([8], np.int64), "scaffold/w": np.array([0.9, 0.0])}, 3.0),
]
ROUND_1: list[Update] = [
    ({"w": np.array([1.0, 1.0]), "n": np.array([4], np.int64), "scaffold/w": np.array([0.3, 0.3])}, 1.0),
    ({"w": np.array([-1.0, 0.0]), "n": np.array([0], np.int64), "scaffold/w": np.array([0.0, 0.6])}, 3.0),
]


def one_round(strategy: Scaffold, tmp: Path, number: int, model: Path, updates: list[Update]) -> Path:
    """The task of round number (checked), then updates folded from their files; the round's result."""
    task = strategy.task_model(model, tmp / f"task-{number}.fsa")
    specs = strategy.update_specs(arrays.read_specs(model), encrypted=False)
    assert arrays.read_specs(task) == specs  # a task and an update have the same tensors
    return fold_round(strategy, tmp, number, model, updates, specs)


def test_two_rounds_step_the_model_by_server_lr_and_c_by_the_plain_sum_over_n(tmp_path: Path) -> None:
    strategy = Scaffold(0.5, sites=3, encrypted=False)
    start = tmp_path / "global.fsa"
    arrays.write_file(start, GLOBAL)
    assert arrays.read_file(strategy.task_model(start, tmp_path / "t.fsa"))["scaffold/w"].tolist() == [0.0, 0.0]

    first = one_round(strategy, tmp_path, 0, start, ROUND_0)
    model = arrays.read_file(first)
    assert set(model) == {"w", "n"}  # the checkpoint is the model alone: c is the strategy's state
    assert model["w"].tolist() == pytest.approx([1.25, -0.5])
    assert model["n"].tolist() == [7]
    assert strategy.state()["w"].tolist() == pytest.approx([0.4, -0.2])
    task = arrays.read_file(strategy.task_model(first, tmp_path / "task.fsa"))
    assert task["scaffold/w"].tolist() == pytest.approx([0.4, -0.2])
    assert task["w"].tolist() == pytest.approx([1.25, -0.5])

    second = one_round(strategy, tmp_path, 1, first, ROUND_1)
    model = arrays.read_file(second)
    assert model["w"].tolist() == pytest.approx([1.0, -0.375])
    assert model["n"].tolist() == [8]
    assert strategy.state()["w"].tolist() == pytest.approx([0.5, 0.1])


def test_a_resumed_strategy_continues_from_the_kept_c(tmp_path: Path) -> None:
    start = tmp_path / "global.fsa"
    arrays.write_file(start, GLOBAL)
    first = one_round(Scaffold(0.5, 3, False), tmp_path, 0, start, ROUND_0)
    kept = Scaffold(0.5, 3, False)
    kept.restore({"w": np.array([0.4, -0.2])}, "state")
    second = one_round(kept, tmp_path, 1, first, ROUND_1)
    assert arrays.read_file(second)["w"].tolist() == pytest.approx([1.0, -0.375])
    assert kept.state()["w"].tolist() == pytest.approx([0.5, 0.1])


def test_a_state_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    start = tmp_path / "global.fsa"
    arrays.write_file(start, GLOBAL)
    strategy = Scaffold(1.0, 3, False)
    with pytest.raises(JobError, match="float64"):
        strategy.restore({"w": np.array([1, 2], np.int64)}, "state")
    strategy.restore({"w": np.zeros(3)}, "state")
    with pytest.raises(JobError, match="does not fit"):
        strategy.task_model(start, tmp_path / "task.fsa")


def test_an_update_without_its_control_variates_is_refused(tmp_path: Path) -> None:
    strategy = Scaffold(1.0, 3, False)
    fold = strategy.fold(strategy.update_specs(arrays.specs_of(GLOBAL), encrypted=False))
    path = tmp_path / "update.fsa"
    arrays.write_file(path, GLOBAL)
    with pytest.raises(WireError, match="'scaffold/w' is missing"):
        fold.check(path, "update")


def test_make_builds_scaffold_with_its_settings() -> None:
    made = strategies.make(StrategyConfig(StrategyKind.SCAFFOLD, server_lr=0.5), sites=4)
    assert isinstance(made, Scaffold)
    assert made.task_meta() == {"name": "scaffold", "server_lr": 0.5}
    assert made.stateful and made.supports_he
    assert not strategies.make(StrategyConfig(StrategyKind.SCAFFOLD), sites=4, encrypted=True).stateful
    with pytest.raises(JobError, match="sites listed"):
        strategies.make(StrategyConfig(StrategyKind.SCAFFOLD), sites=0)


def test_the_driver_sends_c_with_each_task_and_a_resumed_job_continues_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two sites, N = 2, server_lr 0.5, w a float32 (2, 3) and n an int64 counter, starting at 0.

    Round 0 (differences): w 1, n 1, delta_c 0.3 with weight 1; w 5, n 2, delta_c 0.9 with weight 3: x = 0.5 *
    (1 + 15) / 4 = 2, n = rint(7 / 4) = 2, c = (0.3 + 0.9) / 2 = 0.6. The process then stops; a new one resumes
    round 1 with c = 0.6, and its updates (delta_c 0.2 and 0.4) make c = 0.6 + 0.6 / 2 = 0.9.
    """
    from fedsec.jobs import ScaffoldRecipe
    from tests.unit.workflow.test_fedavg import SITES, Job, submit, task, update

    monkeypatch.setattr(limits, "MIN_CHUNK_BYTES", 64)
    job = Job(tmp_path / "refused", 1, 1, ScaffoldRecipe, sites=["site-1"])
    try:
        first = job.fedavg()
        first.update_sites(["site-1"])
        run = job.start(first)
        sent = arrays.read_file(task(first, "site-1", 0))
        assert list(sent) == ["w", "n", "scaffold/w"] and not sent["scaffold/w"].any()
        accepted, reason = submit(first, "site-1", 0, update(1, 1))  # no control-variate update
        assert not accepted and "tensor 'scaffold/w' is missing" in reason, reason
        assert isinstance(run.join(), JobError)
    finally:
        job.close()
    job = Job(tmp_path / "job", 2, 2, ScaffoldRecipe, sites=SITES, server_lr=0.5)
    try:
        first = job.fedavg()
        first.update_sites(SITES)
        run = job.start(first)
        for site, (w, n, dc, weight) in zip(SITES, [(1, 1, 0.3, 1), (5, 2, 0.9, 3)], strict=True):
            task(first, site, 0)
            sent_update = {**update(w, n), "scaffold/w": np.full((2, 3), dc, np.float32)}
            assert submit(first, site, 0, sent_update, num_examples=weight) == (True, "")
        sent = arrays.read_file(task(first, "site-1", 1))
        assert sent["w"].tolist() == [[2.0] * 3] * 2 and sent["n"].tolist() == [2, 2]
        assert sent["scaffold/w"] == pytest.approx(np.full((2, 3), 0.6))
        first.update_sites([])  # every site lost in round 1: the process gives up, as a crash would
        assert isinstance(run.join(), JobError)
        assert arrays.read_file(job.workspace / "checkpoints" / "round_00000.state.fsa")["w"] == pytest.approx(
            np.full((2, 3), 0.6)
        )

        second = job.fedavg()
        second.update_sites(SITES)
        run = job.start(second)
        for site, dc in zip(SITES, (0.2, 0.4), strict=True):
            assert arrays.read_file(task(second, site, 1))["scaffold/w"] == pytest.approx(np.full((2, 3), 0.6))
            assert submit(second, site, 1, {**update(0, 0), "scaffold/w": np.full((2, 3), dc, np.float32)})[0]
        for site in SITES:
            assert list(arrays.read_file(task(second, site, 2, "evaluate"))) == ["w", "n"]  # no c to evaluate
            assert submit(second, site, 2, None, kind="evaluate", metrics={"accuracy": 1.0})[0]
        assert run.join() is None
        assert arrays.read_file(job.workspace / "checkpoints" / "round_00001.state.fsa")["w"] == pytest.approx(
            np.full((2, 3), 0.9)
        )
        assert list(job.result()) == ["w", "n"]
    finally:
        job.close()
