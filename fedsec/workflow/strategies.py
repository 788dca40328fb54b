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
This module handles plain updates only: under homomorphic encryption the job's
update codec (fedsec.workflow.codec) sums ciphertexts for the strategies whose
supports_he is true, and a job asking for another one is refused when it is
loaded; for a strategy whose sites_step_under_he is true (fedopt) the sites run
the step themselves (fedsec.fedopt, shared with this module) and the codec keeps
their sealed result unread. It never reads a site's identity or anything but
checked arrays.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from fedsec.errors import JobError
from fedsec.fedopt import FedOptStep
from fedsec.jobs.meta import ServerOptimizer, StrategyConfig, StrategyKind
from fedsec.wire import arrays
from fedsec.workflow.aggregate import Accumulator
from fedsec.workflow.scaffold import Scaffold

Arrays = dict[str, NDArray[Any]]


class Strategy(Protocol):
    """One job's strategy on the server (plain updates; see the module's docstring for HE)."""

    name: str
    supports_he: bool  # whether the driver may sum this strategy's updates encrypted (it then averages them)
    sites_step_under_he: bool  # under HE the sites run the step and seal it (fedopt): the server keeps it unread
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


class _ModelOnly:
    """For a strategy whose tasks and updates are the model alone, folded into a plain weighted sum."""

    def update_specs(self, model: tuple[arrays.TensorSpec, ...], encrypted: bool) -> tuple[arrays.TensorSpec, ...]:
        return model

    def task_model(self, model: Path, dest: Path) -> Path:
        return model

    def fold(self, specs: tuple[arrays.TensorSpec, ...]) -> Accumulator:
        return Accumulator(specs)


class FedAvg(_ModelOnly):
    """The weighted average of the updates; FedProx is this on the server, with mu sent to the sites."""

    supports_he = True
    sites_step_under_he = False
    stateful = False

    def __init__(self, name: str = StrategyKind.FEDAVG.value, settings: Mapping[str, float | str] | None = None):
        self.name = name
        self._settings = dict(settings or {})

    def task_meta(self) -> dict[str, Any]:
        return {"name": self.name, **self._settings}

    def write_result(self, fold: Accumulator, model: Path, diff: bool, dest: Path) -> None:
        fold.write_average(dest, model if diff else None)

    def state(self) -> Arrays:
        return {}

    def restore(self, state: Mapping[str, NDArray[Any]], where: str) -> None:
        if state:
            raise JobError(f"{where}: {self.name} keeps no state, but the checkpoint has some")


class FedOpt(_ModelOnly):
    """A server optimizer stepping the global model with the pseudo-gradient delta = average - global.

    The step and its state are fedsec.fedopt.FedOptStep (adam, yogi, adagrad, avgm), the one
    implementation the sites also run under HE. Plain jobs step here, on the server. Under HE the
    driver never calls write_result: the sites step (fedsec.site.fedopt_he) and the driver only
    stores and forwards their encrypted result (fedsec.workflow.aggregate.SiteStepAccumulator).
    """

    stateful = True
    supports_he = True  # under HE the step runs on the sites: see the class docstring
    sites_step_under_he = True

    def __init__(self, optimizer: ServerOptimizer, settings: Mapping[str, float]) -> None:
        self.name = StrategyKind.FEDOPT.value
        self.optimizer = optimizer
        self._settings = dict(settings)
        self._step = FedOptStep(optimizer, settings)

    def task_meta(self) -> dict[str, Any]:
        return {"name": self.name, "optimizer": self.optimizer.value, **self._settings}

    def write_result(self, fold: Accumulator, model: Path, diff: bool, dest: Path) -> None:
        current = dict(arrays.iter_file(model, "global model"))

        def delta(name: str, x: NDArray[np.float64]) -> NDArray[np.float64]:
            mean = fold.mean(name)
            return mean if diff else mean - x

        arrays.write_file(dest, self._step.step(fold.specs, current, delta))

    def state(self) -> Arrays:
        return self._step.state()

    def restore(self, state: Mapping[str, NDArray[Any]], where: str) -> None:
        self._step.restore(state, where)


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
