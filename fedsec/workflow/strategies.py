"""Strategies: what a round sends, how each accepted update folds in, and what the round's result is.

The round driver (fedsec.workflow.fedavg.RoundDriver) owns sampling, deadlines,
site failures, checkpoints and progress; a Strategy owns the mathematics of a
round, chosen by app/config.yml's strategy section (fedsec.jobs.meta.StrategyConfig):

- fedavg: the weighted average of the updates (weights: num_examples).
- fedprox: the server side is FedAvg; each task carries mu, and the sites add
  mu/2 * ||w - w_global||^2 to their loss (fedsec.client.torch_io.proximal_term).
- fedopt: the weighted average of the updates gives the pseudo-gradient
  delta = average - global, and a server optimizer (adam, yogi, adagrad, avgm)
  steps the global model with it, in float64, its state kept beside each
  checkpoint so a resumed job continues it.
- scaffold: control variates correct the sites' local steps (fedsec.workflow.scaffold); its tasks and
  updates carry them beside the model's tensors (fedsec.jobs.control).

Every fold is streaming: an update is added into float64 running sums straight
from its file (fedsec.workflow.aggregate.Accumulator), so the server holds about
one model (and, for fedopt, its optimizer state) whatever the number of sites.
This module handles plain updates only: under homomorphic encryption the driver
sums ciphertexts (EncryptedAccumulator) for the strategies whose supports_he is
true, and a job asking for another one is refused when it is loaded. It never
reads a site's identity or anything but checked arrays.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from fedsec.errors import JobError
from fedsec.jobs.meta import ServerOptimizer, StrategyConfig, StrategyKind
from fedsec.wire import arrays
from fedsec.workflow.aggregate import FLOAT_DTYPES, Accumulator
from fedsec.workflow.scaffold import Scaffold

Arrays = dict[str, NDArray[Any]]


class Strategy(Protocol):
    """One job's strategy on the server (plain updates; see the module's docstring for HE)."""

    name: str
    supports_he: bool  # whether the driver may sum this strategy's updates encrypted (it then averages them)
    stateful: bool  # whether state() has something to keep with each checkpoint

    def task_meta(self) -> dict[str, Any]:
        """What each task tells the sites about the strategy: {"name": ..., and its settings}."""
        ...

    def update_specs(self, model: tuple[arrays.TensorSpec, ...], encrypted: bool) -> tuple[arrays.TensorSpec, ...]:
        """The tensors of an update (encrypted or not) for a model of these tensors: the model's, or more."""
        ...

    def task_model(self, model: Path, dest: Path) -> Path:
        """The file a training task sends for the plain global model at model: model itself, or one written to dest."""
        ...

    def fold(self, specs: tuple[arrays.TensorSpec, ...]) -> Accumulator:
        """A new round's fold: check() and add() each accepted update into it."""
        ...

    def write_result(self, fold: Accumulator, model: Path, diff: bool, dest: Path) -> None:
        """Write the next global model to dest from the round's fold and the round's global model at model.

        diff: the updates are differences to the global model (params_type "diff"), not full weights.
        """
        ...

    def state(self) -> Arrays:
        """The strategy's state after the last result, to keep with its checkpoint ({} when it has none)."""
        ...

    def restore(self, state: Mapping[str, NDArray[Any]], where: str) -> None:
        """Continue from a state that state() gave (a resumed job); JobError naming where if it does not fit."""
        ...


class FedAvg:
    """The weighted average of the updates; FedProx is this on the server, with mu sent to the sites."""

    supports_he = True
    stateful = False

    def __init__(self, name: str = StrategyKind.FEDAVG.value, settings: Mapping[str, float | str] | None = None):
        self.name = name
        self._settings = dict(settings or {})

    def task_meta(self) -> dict[str, Any]:
        return {"name": self.name, **self._settings}

    def update_specs(self, model: tuple[arrays.TensorSpec, ...], encrypted: bool) -> tuple[arrays.TensorSpec, ...]:
        return model

    def task_model(self, model: Path, dest: Path) -> Path:
        return model

    def fold(self, specs: tuple[arrays.TensorSpec, ...]) -> Accumulator:
        return Accumulator(specs)

    def write_result(self, fold: Accumulator, model: Path, diff: bool, dest: Path) -> None:
        fold.write_average(dest, model if diff else None)

    def state(self) -> Arrays:
        return {}

    def restore(self, state: Mapping[str, NDArray[Any]], where: str) -> None:
        if state:
            raise JobError(f"{where}: {self.name} keeps no state, but the checkpoint has some")


class FedOpt:
    """A server optimizer stepping the global model with the pseudo-gradient delta = average - global.

    With m and v zero at the start (float64, one pair per floating-point tensor), each round:

        m = beta1 * m + (1 - beta1) * delta                      (adam, yogi, adagrad)
        v = beta2 * v + (1 - beta2) * delta**2                   (adam)
        v = v - (1 - beta2) * delta**2 * sign(v - delta**2)      (yogi)
        v = v + delta**2                                         (adagrad)
        global = global + server_lr * m / (sqrt(v) + tau)
        m = momentum * m + delta;  global = global + server_lr * m   (avgm)

    as in Reddi et al., "Adaptive Federated Optimization" (Algorithm 2, no bias correction) and Hsu et
    al. for avgm. Integer tensors (counters) take the rounded average, as in FedAvg.
    """

    stateful = True
    supports_he = False  # under HE the server cannot see delta: the step must run on the sites (not built yet)

    def __init__(self, optimizer: ServerOptimizer, settings: Mapping[str, float]) -> None:
        self.name = StrategyKind.FEDOPT.value
        self.optimizer = optimizer
        self._settings = dict(settings)
        self._m: dict[int, NDArray[np.float64]] = {}
        self._v: dict[int, NDArray[np.float64]] = {}

    def task_meta(self) -> dict[str, Any]:
        return {"name": self.name, "optimizer": self.optimizer.value, **self._settings}

    def update_specs(self, model: tuple[arrays.TensorSpec, ...], encrypted: bool) -> tuple[arrays.TensorSpec, ...]:
        return model

    def task_model(self, model: Path, dest: Path) -> Path:
        return model

    def fold(self, specs: tuple[arrays.TensorSpec, ...]) -> Accumulator:
        return Accumulator(specs)

    def write_result(self, fold: Accumulator, model: Path, diff: bool, dest: Path) -> None:
        current = dict(arrays.iter_file(model, "global model"))
        out: Arrays = {}
        for i, spec in enumerate(fold.specs):
            x = current[spec.name].astype(np.float64)
            mean = fold.mean(spec.name)
            delta = mean if diff else mean - x
            if spec.dtype in FLOAT_DTYPES:
                out[spec.name] = self._step(i, x, delta).astype(spec.dtype)
            else:
                total = x + delta
                np.rint(total, out=total)
                out[spec.name] = total.astype(spec.dtype)
        arrays.write_file(dest, out)

    def _step(self, i: int, x: NDArray[np.float64], delta: NDArray[np.float64]) -> NDArray[np.float64]:
        s = self._settings
        m = self._m.setdefault(i, np.zeros_like(x))
        v = self._v.setdefault(i, np.zeros_like(x)) if self.optimizer is not ServerOptimizer.AVGM else x
        if m.shape != x.shape or v.shape != x.shape:
            raise JobError(f"fedopt state of tensor {i}: shape {m.shape} or {v.shape}, the model has {x.shape}")
        if self.optimizer is ServerOptimizer.AVGM:
            m *= s["momentum"]
            m += delta
            return x + s["server_lr"] * m
        m *= s["beta1"]
        m += (1.0 - s["beta1"]) * delta
        square = delta * delta
        if self.optimizer is ServerOptimizer.ADAM:
            v *= s["beta2"]
            v += (1.0 - s["beta2"]) * square
        elif self.optimizer is ServerOptimizer.YOGI:
            v -= (1.0 - s["beta2"]) * square * np.sign(v - square)
        else:  # adagrad
            v += square
        return x + s["server_lr"] * m / (np.sqrt(v) + s["tau"])

    def state(self) -> Arrays:
        out: Arrays = {f"m.{i}": m for i, m in sorted(self._m.items())}
        out.update({f"v.{i}": v for i, v in sorted(self._v.items())})
        return out

    def restore(self, state: Mapping[str, NDArray[Any]], where: str) -> None:
        m: dict[int, NDArray[np.float64]] = {}
        v: dict[int, NDArray[np.float64]] = {}
        for key, value in state.items():
            slot, _, index = key.partition(".")
            if slot not in ("m", "v") or not index.isdigit() or value.dtype != np.float64:
                raise JobError(f"{where}: {key!r} is not a float64 fedopt state tensor")
            (m if slot == "m" else v)[int(index)] = np.array(value, dtype=np.float64)
        self._m, self._v = m, v


def make(config: StrategyConfig, sites: int = 0, encrypted: bool = False) -> Strategy:
    """The strategy a job's (checked) strategy section names; sites: how many the job lists (0: any).

    encrypted: the job's updates are encrypted (the driver sums them).
    """
    settings = config.settings()
    if config.name is StrategyKind.SCAFFOLD:
        return Scaffold(float(settings["server_lr"]), sites, encrypted)
    if config.name is StrategyKind.FEDOPT:
        if config.optimizer is None:  # check_strategy refuses this first
            raise JobError("strategy.optimizer: fedopt needs an optimizer")
        return FedOpt(config.optimizer, {k: float(v) for k, v in settings.items() if k != "optimizer"})
    return FedAvg(config.name.value, settings)
