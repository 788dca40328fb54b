"""fedsec.client.torch_io: FedProx's proximal term, worked by hand; the strategy a task names."""

from __future__ import annotations

import numpy as np
import pytest

from fedsec.client import api
from fedsec.client.torch_io import proximal_term
from fedsec.errors import WireError

torch = pytest.importorskip("torch")


class Net(torch.nn.Module):  # type: ignore[misc,name-defined]
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 1)
        self.norm = torch.nn.BatchNorm1d(1)  # its running statistics are buffers: not in the term
        self.norm.weight.requires_grad_(False)  # a frozen parameter is not in the term either
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([[1.0, 2.0]]))
            self.lin.bias.copy_(torch.tensor([-1.0]))


def test_the_proximal_term_and_its_gradient_match_the_hand_worked_values() -> None:
    net = Net()
    anchor = {"lin.weight": np.array([[0.0, 0.0]], np.float32), "lin.bias": np.array([1.0], np.float32)}
    anchor.update({"norm.weight": np.array([100.0], np.float32), "norm.bias": np.array([0.0], np.float32)})
    # mu/2 * ((1-0)^2 + (2-0)^2 + (-1-1)^2 + (0-0)^2) = 0.5/2 * 9 = 2.25
    term = proximal_term(net, anchor, 0.5)
    assert term.item() == pytest.approx(2.25)
    term.backward()
    # the gradient is mu * (w - w_global): [[0.5, 1.0]] and [-1.0]
    assert net.lin.weight.grad.flatten().tolist() == pytest.approx([0.5, 1.0])
    assert net.lin.bias.grad.tolist() == pytest.approx([-1.0])
    assert net.norm.weight.grad is None


def test_the_proximal_term_names_a_parameter_the_global_model_lacks() -> None:
    with pytest.raises(KeyError, match="no parameter 'lin.bias'"):
        proximal_term(Net(), {"lin.weight": np.zeros((1, 2), np.float32)}, 0.1)


def test_a_tasks_strategy_meta_is_an_object_with_a_name() -> None:
    assert api._strategy_meta({}) == {"name": "fedavg"}  # a server that sends none runs fedavg
    assert api._strategy_meta({"strategy": {"name": "fedprox", "mu": 0.1}}) == {"name": "fedprox", "mu": 0.1}
    for bad in ("fedprox", {"mu": 0.1}, {"name": 3}):
        with pytest.raises(WireError, match="strategy is not an object with a name"):
            api._strategy_meta({"strategy": bad})
