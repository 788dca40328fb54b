"""Weighted averaging of model updates as they arrive, one tensor in memory at a time.

Memory stays about one model's size whatever the number of sites: each
accepted update is added into running sums straight from its file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedsec.errors import WireError
from fedsec.wire import arrays

FLOAT_DTYPES = frozenset({"float16", "float32", "float64"})


def _sum_dtype(dtype: str) -> type[np.floating]:
    # float64 sums whatever the model's dtype: the result then does not depend on the order updates arrive in
    return np.float64


class Accumulator:
    """Running weighted sums of updates that all have the global model's specs.

    unweighted: names of tensors summed as they are, whatever the update's weight (SCAFFOLD's
    control-variate updates: total() gives their plain sum).
    """

    def __init__(self, specs: tuple[arrays.TensorSpec, ...], unweighted: frozenset[str] = frozenset()) -> None:
        self.specs = specs
        self._sums = {s.name: np.zeros(s.shape, dtype=_sum_dtype(s.dtype)) for s in specs}
        self._unweighted = unweighted
        self.weight = 0.0
        self.count = 0

    def check(self, path: Path, where: str) -> None:
        """Raise WireError unless the update at path fits the model and is finite."""
        arrays.check_compatible(arrays.read_specs(path, where), self.specs, where)
        for name, tensor in arrays.iter_file(path, where):
            arrays.check_finite(name, tensor, where)

    def add(self, path: Path, weight: float, where: str) -> None:
        """Add weight * the (checked) update at path into the sums."""
        if not weight > 0:
            raise WireError(f"{where}: weight must be positive")
        for name, tensor in arrays.iter_file(path, where):
            out = self._sums[name]
            np.add(out, np.multiply(tensor, 1.0 if name in self._unweighted else weight, dtype=out.dtype), out=out)
        self.weight += weight
        self.count += 1

    def total(self, name: str) -> np.ndarray:
        """The plain sum of the unweighted tensor name, in float64 (the fold's own array: do not change it)."""
        if name not in self._unweighted:
            raise WireError(f"tensor {name!r} is summed weighted: take its mean()")
        return self._sums[name]

    def mean(self, name: str) -> np.ndarray:
        """The weighted average of tensor name, in float64 (the fold's sums are divided in place: call it once)."""
        if self.count == 0:
            raise WireError("no update to average")
        total = self._sums[name]
        total /= self.weight
        return total

    def write_average(self, dest: Path, base: Path | None) -> None:
        """Write the weighted average (added to the model at base, for weight differences) to dest."""
        if self.count == 0:
            raise WireError("no update to average")
        base_tensors = dict(arrays.iter_file(base, "global model")) if base is not None else {}
        out: dict[str, np.ndarray] = {}
        for spec in self.specs:
            total = self.mean(spec.name)
            if spec.name in base_tensors:
                total += base_tensors[spec.name]
            if spec.dtype in FLOAT_DTYPES:
                out[spec.name] = total.astype(spec.dtype, copy=False)
            else:  # in place, so a 0-d tensor stays an array (np.rint of a 0-d array returns a scalar)
                np.rint(total, out=total)
                out[spec.name] = total.astype(spec.dtype)
        arrays.write_file(dest, out)


class EncryptedAccumulator:
    """The HE aggregator: sums encrypted uploads, never decrypts (fedsec.he.codec.EncryptedSum).

    Uploads carry their weight inside the ciphertexts, so the weight given to
    add() is ignored, and the written model is the encrypted weighted sum that
    only the sites can turn into the average.
    """

    def __init__(
        self, server_context: Any, specs: tuple[arrays.TensorSpec, ...], clip: float, max_clients: int
    ) -> None:
        from fedsec.he.codec import EncryptedSum  # tenseal: only in HE jobs

        self.specs = specs
        self._sum = EncryptedSum(server_context, specs, clip, max_clients)

    @property
    def count(self) -> int:
        return self._sum.count

    def check(self, path: Path, where: str) -> None:
        """Nothing to do here: add() checks everything before it adds anything."""

    def add(self, path: Path, weight: float, where: str) -> None:
        self._sum.add_file(path, where)

    def write_average(self, dest: Path, base: Path | None) -> None:
        if self._sum.count == 0:
            raise WireError("no update to average")
        self._sum.write(dest)
