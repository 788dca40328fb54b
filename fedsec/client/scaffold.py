"""SCAFFOLD on a site, for a PyTorch training loop: the correction of each step and the control-variate update.

A scaffold job's training task carries the global control variate c beside the model
(fedsec.jobs.control); the site keeps its own c_i. Used in a training loop::

    scaffold = Scaffold(net, lr=0.05)             # once; lr: the step size of the local updates
    model = scaffold.receive()                    # instead of fedsec.client.receive(): takes c out of params
    load_into(net, model.params)
    ...  loss.backward(); scaffold.correct(); optimizer.step()   # each step: grad += c - c_i
    scaffold.send(FLModel(params=..., ...))       # instead of fedsec.client.send(): adds delta_c_i

(start(model) and update(result) do the same around a script's own receive and send.) After K
corrected steps from the global model x to y_i, option II of the paper gives

    c_i+ = c_i - c + (x - y_i) / (K * lr),        delta_c_i = c_i+ - c_i

and the update carries delta_c_i for every floating-point tensor of the model (zero for a buffer or a
frozen parameter, which has no gradient). c_i is kept in memory for the life of the script's process
and advances only when the server accepts the update: a script that starts again (a restart after a
failure) starts from c_i = 0, its earlier contributions staying in c, as those of a site that left.
For SGD with momentum m, the step size is about lr / (1 - m): pass that as lr. torch is imported
only when these run; a job that is not scaffold is refused (JobError).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedsec import _deps
from fedsec.client import api
from fedsec.client.api import FLModel
from fedsec.errors import JobError
from fedsec.jobs import control


class Scaffold:
    """One site's SCAFFOLD state for module: its control variate c_i and the round in progress."""

    def __init__(self, module: Any, lr: float) -> None:
        """lr: the step size of the local updates (> 0); JobError otherwise."""
        if isinstance(lr, bool) or not isinstance(lr, int | float) or not np.isfinite(lr) or lr <= 0:
            raise JobError(f"Scaffold: lr must be a positive number, got {lr!r}")
        self.module = module
        self.lr = float(lr)
        self.steps = 0  # corrected steps of the round in progress
        self._c_i: dict[str, NDArray[np.float64]] = {}  # this site's control variate, by tensor name
        self._c: dict[str, NDArray[np.float64]] = {}  # the global one of the round in progress
        self._x: dict[str, NDArray[np.float64]] = {}  # the round's global model (the controlled tensors)
        self._correction: dict[str, Any] = {}  # parameter name -> the torch tensor c - c_i
        self._pending: dict[str, NDArray[np.float64]] | None = None  # c_i+ until the server accepts it

    def receive(self, timeout: float | None = None) -> FLModel | None:
        """fedsec.client.receive(), then start(model) for a training task; None when the job is done."""
        model = api.receive(timeout)
        if model is not None:
            self.start(model)
        return model

    def start(self, model: FLModel) -> None:
        """Begin a round from a received task: take c out of model.params (a training task must carry it).

        Raises JobError when the job's strategy is not scaffold, WireError when the task's control
        variates do not match the model's floating-point tensors.
        """
        settings = api.strategy_settings()
        if settings.get("name") != "scaffold":
            raise JobError(f"Scaffold: the job's strategy is {settings.get('name')!r}, not scaffold")
        if model.task != "train" or model.params is None:
            return
        params, c = control.split(model.params, control.CONTROL, f"task of round {model.current_round}")
        model.params = params
        torch = _torch()
        self._c = {name: value.astype(np.float64) for name, value in c.items()}
        self._x = {name: params[name].astype(np.float64) for name in c}
        self._c_i = {name: self._c_i.get(name, np.zeros_like(value)) for name, value in self._c.items()}
        self._correction = {}
        for name, param in self.module.named_parameters():
            if not param.requires_grad:
                continue
            if name not in self._c:
                raise JobError(f"Scaffold: the task has no control variate for parameter {name!r}")
            delta = self._c[name] - self._c_i[name]
            self._correction[name] = torch.as_tensor(delta, dtype=param.dtype, device=param.device)
        self.steps = 0
        self._pending = None

    def correct(self) -> None:
        """Correct the gradients of this step: grad += c - c_i; call it after backward(), before step()."""
        if not self._c:
            raise JobError("Scaffold: correct() before start() of a training task")
        for name, param in self.module.named_parameters():
            correction = self._correction.get(name)
            if correction is not None and param.grad is not None:
                param.grad.add_(correction)
        self.steps += 1

    def update(self, result: FLModel) -> FLModel:
        """result with delta_c_i added to its params (CONTROL + name); c_i+ waits for commit().

        Raises JobError before any corrected step or when result has no params.
        """
        if not self._c or self.steps == 0:
            raise JobError("Scaffold: no corrected step this round (call correct() before each optimizer.step())")
        if result.params is None:
            raise JobError("Scaffold: the result has no params to add the control-variate update to")
        trained = dict(self.module.named_parameters())
        new: dict[str, NDArray[np.float64]] = {}
        delta: dict[str, NDArray[Any]] = {}
        for name, c in self._c.items():
            param = trained.get(name)
            if param is None or not param.requires_grad:  # a buffer or a frozen parameter: no gradient, no c_i
                new[name] = self._c_i[name]
            else:
                y = param.detach().cpu().numpy().astype(np.float64)
                new[name] = self._c_i[name] - c + (self._x[name] - y) / (self.steps * self.lr)
            delta[name] = new[name] - self._c_i[name]
        self._pending = new
        out = FLModel(
            params=control.join(result.params, delta),
            params_type=result.params_type,
            metrics=dict(result.metrics),
            meta=dict(result.meta),
            current_round=result.current_round,
            total_rounds=result.total_rounds,
            task=result.task,
        )
        return out

    def commit(self) -> None:
        """Take c_i+ of the last update() as this site's c_i (its update was accepted)."""
        if self._pending is not None:
            self._c_i, self._pending = self._pending, None

    def send(self, result: FLModel) -> bool:
        """fedsec.client.send(update(result)); c_i advances when the server accepts it. Returns the acceptance."""
        accepted = api.send(self.update(result))
        if accepted:
            self.commit()
        return accepted

    def global_norm(self) -> float:
        """The L2 norm of the global control variate c of the round in progress (0 before the first)."""
        return float(np.sqrt(sum(float(np.sum(value * value)) for value in self._c.values())))

    @property
    def control_variate(self) -> Mapping[str, NDArray[np.float64]]:
        """This site's c_i (float64, by tensor name; empty before the first training task)."""
        return dict(self._c_i)


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # the ml extra is not installed
        raise _deps.missing("torch", exc) from exc
    return torch
