"""Weighted averaging of model updates as they arrive, one tensor in memory at a time.

Memory stays about one model's size whatever the number of sites: each
accepted update is added into running sums straight from its file. Under HE the
sums are of ciphertexts (EncryptedAccumulator), and for FedOpt the sites' sealed
optimizer step is kept beside them, unread (SiteStepAccumulator).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from fedsec import _fs, limits
from fedsec.errors import JobError, WireError
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


class SiteStepAccumulator:
    """FedOpt under HE: the sum of the sites' encrypted differences, and the sealed step they agree on, kept unread.

    Each result is an FSO1 bundle (fedsec.he.sealed): the global model and optimizer state the site
    stepped to, sealed, with the digest of their plain bytes; then, in a training round, its encrypted
    weight difference (summed as EncryptedAccumulator does); in the final evaluation, nothing more.
    The first sealed state accepted is kept (the sites' ciphertexts differ, their plain bytes must
    not); every site's digest is kept, and write() refuses to go on when they differ. Never decrypts.
    """

    def __init__(
        self,
        server_context: Any,
        specs: tuple[arrays.TensorSpec, ...],
        clip: float,
        max_clients: int,
        folder: Path,
        *,
        final: bool,
    ) -> None:
        """folder: where the kept state waits (the driver's incoming/); final: the final evaluation (no update)."""
        from fedsec.he.codec import EncryptedSum  # tenseal: only in HE jobs

        self.specs = specs
        self._ctx = server_context
        self._sum = None if final else EncryptedSum(server_context, specs, clip, max_clients)
        self._folder = folder
        self.digests: dict[str, str] = {}  # site -> the digest of its step, in the order accepted
        self.kept_from = ""  # the site whose sealed copy is kept (the next round's sites check it against the digest)
        self._state: Path | None = None

    @property
    def count(self) -> int:
        """The updates summed (training), or the steps received (the final evaluation)."""
        return len(self.digests) if self._sum is None else self._sum.count

    def check(self, path: Path, where: str) -> None:
        """Nothing to do here: add_result() checks everything before it keeps anything."""

    def add_result(self, site: str, path: Path, where: str) -> None:
        """Take site's result at path: its sealed state (kept if first) and digest, and its update into the sum.

        All or nothing. Raises WireError for a malformed bundle or ciphertext, HEError from the sum.
        """
        from fedsec.he.sealed import check_sealed, read_bundle

        fd, name = tempfile.mkstemp(prefix=f"{site}-", suffix=".fsx", dir=self._folder)
        state = Path(name)
        kept = False
        try:
            with path.open("rb") as f, os.fdopen(fd, "wb") as out:
                size = os.fstat(f.fileno()).st_size
                bundle = read_bundle(f.read, size, where)
                left = bundle.state_bytes
                while left:
                    chunk = f.read(min(left, limits.CHUNK_BYTES))
                    if not chunk:
                        raise WireError(f"{where}: truncated in the sealed state")
                    out.write(chunk)
                    left -= len(chunk)
            with state.open("rb") as f:
                check_sealed(self._ctx, f.read, bundle.state_bytes, f"{where}: sealed state")
            if self._sum is None:
                if bundle.rest_start != size:
                    raise WireError(f"{where}: a final evaluation's answer carries no update")
            else:
                if bundle.rest_start == size:
                    raise WireError(f"{where}: the training result carries no encrypted update")
                self._sum.add_file(path, where, bundle.rest_start)
            kept = self._state is None
            if kept:
                self._state, self.kept_from = state, site
            self.digests[site] = bundle.digest
        finally:
            if not kept:
                state.unlink(missing_ok=True)

    def agreed(self, number: int) -> str:
        """The digest every site of round number sent; JobError naming the sites when they differ (or none came)."""
        groups: dict[str, list[str]] = {}
        for site, digest in self.digests.items():
            groups.setdefault(digest, []).append(site)
        if not groups:
            raise JobError(f"round {number}: no site sent its FedOpt step")
        if len(groups) > 1:
            sides = "; ".join(f"{', '.join(sorted(sites))} sent {digest[:16]}" for digest, sites in groups.items())
            raise JobError(
                f"round {number}: the sites disagree on the FedOpt step (the digests of their new global model and "
                f"optimizer state differ): {sides}"
            )
        return next(iter(groups))

    def write(self, dest: Path, number: int) -> str:
        """Write the agreed step (and, training, the sum) to dest as an FSO1 bundle; the agreed digest.

        Raises JobError when the sites disagree, OSError when it cannot be written.
        """
        from fedsec.he.sealed import bundle_header

        digest = self.agreed(number)
        if self._state is None:  # agreed() found a digest, so a state was kept
            raise JobError(f"round {number}: the FedOpt step was not kept")
        parts: list[bytes | Path] = [bundle_header(digest, self._state.stat().st_size), self._state]
        total = self._folder / f".sum-{number}.fsh"
        try:
            if self._sum is not None:
                self._sum.write(total)
                parts.append(total)
            _fs.join_atomic(dest, parts)
        finally:
            total.unlink(missing_ok=True)
        return digest

    def close(self) -> None:
        """Remove the kept state."""
        if self._state is not None:
            self._state.unlink(missing_ok=True)
