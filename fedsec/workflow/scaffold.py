"""SCAFFOLD on the server: the global model's step and the global control variate c.

Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated Learning" (Algorithm 1,
option II on the sites). Each round, with x the global model, c the global control variate (zero at the
start, one float64 tensor per floating-point tensor of the model), S the sites whose updates were
accepted and N the number of sites the job lists:

    x <- x + server_lr * mean_w(y_i - x)       (weights num_examples, as FedAvg; integer tensors: rounded)
    c <- c + sum_{i in S}(delta_c_i) / N       (= c + |S|/N * mean(delta_c_i), unweighted)

so c stays the mean of all N sites' c_i (each zero until the site first trains). A training task sends x
with c beside it (fedsec.jobs.control.CONTROL), an update carries y_i (or y_i - x) with delta_c_i under
the same names; c is kept with each checkpoint (state()) so a resumed job continues it.

Under homomorphic encryption the server holds nothing of this: the sites encrypt y_i already stepped
by server_lr, the c of their task and delta_c_i in sections of one upload (fedsec.site.scaffold), the
driver adds the ciphertexts, and the next task's encrypted sum gives every site the same x and c. This
module then only names the upload's tensors and writes round 0's task (c = 0). It never reads a site's
identity or anything but checked arrays.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedsec.errors import JobError
from fedsec.jobs import control
from fedsec.jobs.meta import StrategyKind
from fedsec.wire import arrays
from fedsec.workflow.aggregate import FLOAT_DTYPES, Accumulator


class Scaffold:
    """The SCAFFOLD strategy; sites: N, the number of sites the job lists."""

    supports_he = True
    sites_step_under_he = False  # under HE the sites' uploads make the step in the encrypted sum itself

    def __init__(self, server_lr: float, sites: int, encrypted: bool) -> None:
        if sites < 1:
            raise JobError("scaffold needs the job's sites listed: N, their number, scales the update of c")
        self.name = StrategyKind.SCAFFOLD.value
        self.server_lr = server_lr
        self.sites = sites
        self.encrypted = encrypted
        self.stateful = not encrypted  # under HE, c lives in the encrypted sums, never here
        self._c: dict[str, NDArray[np.float64]] = {}

    def task_meta(self) -> dict[str, Any]:
        return {"name": self.name, "server_lr": self.server_lr}

    def update_specs(self, model: tuple[arrays.TensorSpec, ...], encrypted: bool) -> tuple[arrays.TensorSpec, ...]:
        return control.sum_specs(model) if encrypted else control.task_specs(model)

    def task_model(self, model: Path, dest: Path) -> Path:
        """Write the training task's model to dest: the global model at model with c beside it."""
        tensors = arrays.read_file(model, "global model")
        out = control.join(tensors, self._control(arrays.specs_of(tensors, "global model")))
        arrays.write_file(dest, out, "the training task's model")
        return dest

    def fold(self, specs: tuple[arrays.TensorSpec, ...]) -> Accumulator:
        unweighted = frozenset(spec.name for spec in specs if spec.name.startswith(control.CONTROL))
        return Accumulator(specs, unweighted)

    def write_result(self, fold: Accumulator, model: Path, diff: bool, dest: Path) -> None:
        current = arrays.read_file(model, "global model")
        c = self._control(arrays.specs_of(current, "global model"))
        out: dict[str, NDArray[Any]] = {}
        for spec in fold.specs:
            if spec.name.startswith(control.CONTROL):
                continue
            x = current[spec.name].astype(np.float64)
            mean = fold.mean(spec.name)
            delta = mean if diff else mean - x
            if spec.dtype in FLOAT_DTYPES:
                out[spec.name] = (x + self.server_lr * delta).astype(spec.dtype)
            else:  # a counter: the average, rounded, as FedAvg
                total = x + delta
                np.rint(total, out=total)
                out[spec.name] = total.astype(spec.dtype)
        for name, value in c.items():
            value += fold.total(control.CONTROL + name) / self.sites
        arrays.write_file(dest, out)

    def _control(self, model: tuple[arrays.TensorSpec, ...]) -> dict[str, NDArray[np.float64]]:
        """c for the model's controlled tensors (zero at the start); JobError if a restored c does not fit."""
        specs = control.controlled(model)
        if not self._c:
            self._c = {spec.name: np.zeros(spec.shape, dtype=np.float64) for spec in specs}
        if [(s.name, s.shape) for s in specs] != [(name, value.shape) for name, value in self._c.items()]:
            raise JobError("the scaffold state's control variate does not fit the model's tensors")
        return self._c

    def state(self) -> dict[str, NDArray[Any]]:
        return dict(self._c)

    def restore(self, state: Mapping[str, NDArray[Any]], where: str) -> None:
        c: dict[str, NDArray[np.float64]] = {}
        for name, value in state.items():
            if value.dtype != np.float64 or (value.size and not np.isfinite(value).all()):
                raise JobError(f"{where}: {name!r} is not a finite float64 control variate")
            c[name] = np.array(value, dtype=np.float64)
        self._c = c
