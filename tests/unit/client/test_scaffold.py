"""fedsec.client.scaffold: the corrected steps and option II's control-variate update, hand-worked.

A module with a parameter p = [1, 2] and a float buffer b (no gradient); the loss sum(p) has the gradient
[1, 1]. The task's c is [0.1, -0.2] for p (0 for b), the site's c_i starts at 0, lr = 0.1. Each corrected
step moves p by -0.1 * ([1, 1] + [0.1, -0.2]) = [-0.11, -0.08]; after K = 2 steps y = [0.78, 1.84], so
c_i+ = 0 - [0.1, -0.2] + ([1, 2] - [0.78, 1.84]) / (2 * 0.1) = [1, 1] (the mean raw gradient) and the
update carries delta_c = [1, 1] for p and [0] for b.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pytest

from fedsec.client import FLModel, ParamsType, api
from fedsec.errors import JobError, WireError

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch")


def _module() -> Any:
    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
            self.register_buffer("b", torch.tensor([0.5]))

    return Net()


def _task(c: list[float]) -> FLModel:
    params = {
        "p": np.array([1.0, 2.0], np.float32),
        "b": np.array([0.5], np.float32),
        "scaffold/p": np.array(c, np.float32),
        "scaffold/b": np.array([0.0], np.float32),
    }
    return FLModel(params=params, current_round=0, total_rounds=2, task="train")


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[FLModel]:
    out: list[FLModel] = []
    monkeypatch.setattr(api, "strategy_settings", lambda: {"name": "scaffold", "server_lr": 1.0})

    def send(model: FLModel) -> bool:
        out.append(model)
        return True

    monkeypatch.setattr(api, "send", send)
    return out


def _train(net: Any, scaffold: Any, steps: int) -> None:
    import torch

    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(steps):
        optimizer.zero_grad()
        net.p.sum().backward()
        scaffold.correct()
        optimizer.step()


def test_corrected_steps_and_option_two_update(sent: list[FLModel]) -> None:
    from fedsec.client.scaffold import Scaffold
    from fedsec.client.torch_io import load_into

    net = _module()
    scaffold = Scaffold(net, lr=0.1)
    task = _task([0.1, -0.2])
    scaffold.start(task)
    assert task.params is not None and set(task.params) == {"p", "b"}  # c taken out: the model loads as it is
    load_into(net, task.params)
    _train(net, scaffold, 2)
    assert net.p.detach().numpy().tolist() == pytest.approx([0.78, 1.84])
    assert scaffold.send(FLModel(params={"p": net.p.detach().numpy(), "b": net.b.numpy()}, params_type=ParamsType.FULL))
    (update,) = sent
    assert update.params is not None
    assert list(update.params) == ["p", "b", "scaffold/p", "scaffold/b"]
    assert update.params["scaffold/p"].tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    assert update.params["scaffold/p"].dtype == np.float32
    assert update.params["scaffold/b"].tolist() == [0.0]
    assert scaffold.control_variate["p"].tolist() == pytest.approx([1.0, 1.0], abs=1e-5)

    # the next round corrects with c - c_i = [0.5, 0.5] - [1, 1]: each step moves p by -0.1 * ([1, 1] - [0.5, 0.5])
    scaffold.start(_task([0.5, 0.5]))
    load_into(net, {"p": np.array([1.0, 2.0], np.float32), "b": np.array([0.5], np.float32)})
    _train(net, scaffold, 1)
    assert net.p.detach().numpy().tolist() == pytest.approx([0.95, 1.95])


def test_c_i_stays_when_the_update_is_refused(sent: list[FLModel], monkeypatch: pytest.MonkeyPatch) -> None:
    from fedsec.client.scaffold import Scaffold

    monkeypatch.setattr(api, "send", lambda model: False)
    net = _module()
    scaffold = Scaffold(net, lr=0.1)
    scaffold.start(_task([0.1, -0.2]))
    _train(net, scaffold, 1)
    assert not scaffold.send(FLModel(params={"p": net.p.detach().numpy(), "b": net.b.numpy()}))
    assert scaffold.control_variate["p"].tolist() == [0.0, 0.0]


def test_misuse_is_refused(sent: list[FLModel], monkeypatch: pytest.MonkeyPatch) -> None:
    from fedsec.client.scaffold import Scaffold

    net = _module()
    with pytest.raises(JobError, match="lr must be a positive number"):
        Scaffold(net, lr=0.0)
    scaffold = Scaffold(net, lr=0.1)
    with pytest.raises(JobError, match="correct\\(\\) before start\\(\\)"):
        scaffold.correct()
    task = _task([0.1, -0.2])
    assert task.params is not None
    del task.params["scaffold/p"]
    with pytest.raises(WireError, match="'scaffold/p' is missing"):
        scaffold.start(task)
    scaffold.start(_task([0.1, -0.2]))
    with pytest.raises(JobError, match="no corrected step"):
        scaffold.update(FLModel(params={"p": np.zeros(2, np.float32), "b": np.zeros(1, np.float32)}))
    monkeypatch.setattr(api, "strategy_settings", lambda: {"name": "fedavg"})
    with pytest.raises(JobError, match="strategy is 'fedavg', not scaffold"):
        scaffold.start(_task([0.1, -0.2]))
