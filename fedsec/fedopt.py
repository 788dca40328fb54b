"""FedOpt's server optimizer step and its state: the one implementation, shared by the server and the sites.

A plain job's workflow (fedsec.workflow.strategies.FedOpt) steps the global model on the server; under
homomorphic encryption the server cannot see the aggregate, so the site parent (fedsec.site.fedopt_he)
runs this same step on the decrypted aggregate. Both import it from here, a building block below both
process packages, so the two can never drift apart.

The step is deterministic: float64 throughout, elementwise numpy operations only (each correctly
rounded, so the same inputs give the same bytes on every CPU), tensors in the model's order. With m
and v zero at the start (float64, one pair per floating-point tensor, kept as "m.<i>" and "v.<i>" where
i is the tensor's index in the model), each step with the pseudo-gradient delta:

    m = beta1 * m + (1 - beta1) * delta                      (adam, yogi, adagrad)
    v = beta2 * v + (1 - beta2) * delta**2                   (adam)
    v = v - (1 - beta2) * delta**2 * sign(v - delta**2)      (yogi)
    v = v + delta**2                                         (adagrad)
    global = global + server_lr * m / (sqrt(v) + tau)
    m = momentum * m + delta;  global = global + server_lr * m   (avgm: no v)

as in Reddi et al., "Adaptive Federated Optimization" (Algorithm 2, no bias correction) and Hsu et
al. for avgm. Integer tensors (counters) take global + delta, rounded, as in FedAvg.

sealed_plaintext() and split_plaintext() give the canonical bytes of a global model and its state
that HE jobs encrypt exactly (fedsec.he.sealed) and digest(): what the sites compare through the
server. This module never imports tenseal, and holds no key.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedsec.errors import JobError, WireError
from fedsec.jobs.meta import ServerOptimizer
from fedsec.wire import arrays

Arrays = dict[str, NDArray[Any]]
FLOAT_DTYPES = frozenset({"float16", "float32", "float64"})
_DIGEST_DOMAIN = b"fedsec fedopt step v1\0"
_MODEL_LENGTH = struct.Struct("<Q")


class FedOptStep:
    """A server optimizer and its state (m, v): step() moves a global model by a pseudo-gradient."""

    def __init__(self, optimizer: ServerOptimizer, settings: Mapping[str, float]) -> None:
        """settings: the optimizer's effective settings (fedsec.jobs.meta.StrategyConfig.settings(), no optimizer)."""
        self.optimizer = optimizer
        self._settings = {key: float(value) for key, value in settings.items()}
        self._m: dict[int, NDArray[np.float64]] = {}
        self._v: dict[int, NDArray[np.float64]] = {}

    def step(
        self,
        specs: tuple[arrays.TensorSpec, ...],
        model: Mapping[str, NDArray[Any]],
        delta: Callable[[str, NDArray[np.float64]], NDArray[np.float64]],
    ) -> Arrays:
        """The next global model, in the model's dtypes, from model and delta(name, global tensor in float64).

        The state moves on with it. Raises JobError when the state does not fit the model.
        """
        out: Arrays = {}
        for i, spec in enumerate(specs):
            x = np.asarray(model[spec.name]).astype(np.float64)
            d = np.asarray(delta(spec.name, x), dtype=np.float64)
            if spec.dtype in FLOAT_DTYPES:
                out[spec.name] = self._float_step(i, x, d).astype(spec.dtype)
            else:
                total = np.array(x + d, dtype=np.float64)  # an array even for a 0-d tensor
                np.rint(total, out=total)
                out[spec.name] = total.astype(spec.dtype)
        return out

    def _float_step(self, i: int, x: NDArray[np.float64], delta: NDArray[np.float64]) -> NDArray[np.float64]:
        s = self._settings
        m = self._m.setdefault(i, np.zeros_like(x))
        if m.shape != x.shape:
            raise JobError(f"fedopt state m.{i}: shape {m.shape}, the model's tensor {i} has {x.shape}")
        if self.optimizer is ServerOptimizer.AVGM:
            m *= s["momentum"]
            m += delta
            return x + s["server_lr"] * m
        v = self._v.setdefault(i, np.zeros_like(x))
        if v.shape != x.shape:
            raise JobError(f"fedopt state v.{i}: shape {v.shape}, the model's tensor {i} has {x.shape}")
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
        """The state after the last step ({} before the first): "m.<i>", then "v.<i>", float64, by index."""
        out: Arrays = {f"m.{i}": m for i, m in sorted(self._m.items())}
        out.update({f"v.{i}": v for i, v in sorted(self._v.items())})
        return out

    def restore(self, state: Mapping[str, NDArray[Any]], where: str) -> None:
        """Continue from a state that state() gave; JobError naming where if a key or dtype does not fit."""
        m: dict[int, NDArray[np.float64]] = {}
        v: dict[int, NDArray[np.float64]] = {}
        for key, value in state.items():
            slot, _, index = key.partition(".")
            if slot not in ("m", "v") or not index.isdigit() or value.dtype != np.float64:
                raise JobError(f"{where}: {key!r} is not a float64 fedopt state tensor")
            (m if slot == "m" else v)[int(index)] = np.array(value, dtype=np.float64)
        self._m, self._v = m, v


def sealed_plaintext(model: Mapping[str, NDArray[Any]], state: Mapping[str, NDArray[Any]]) -> bytes:
    """The canonical bytes of a global model and its optimizer state: what HE jobs encrypt and digest.

    uint64 little-endian length of the model's array container | the model's container (tensors in
    model's order) | the state's container (state()'s order). One model and state have one encoding.
    """
    body = arrays.encode(model, "global model")
    return _MODEL_LENGTH.pack(len(body)) + body + arrays.encode(state, "fedopt state")


def split_plaintext(data: bytes, where: str) -> tuple[Arrays, Arrays]:
    """The model and the state in sealed_plaintext()'s bytes; WireError if they are not such bytes."""
    if len(data) < _MODEL_LENGTH.size:
        raise WireError(f"{where}: {len(data)} bytes, too short for a global model and its state")
    (length,) = _MODEL_LENGTH.unpack_from(data)
    end = _MODEL_LENGTH.size + length
    if end > len(data):
        raise WireError(f"{where}: the global model claims {length} bytes, more than there are")
    view = memoryview(data)
    return arrays.decode(view[_MODEL_LENGTH.size : end], where), arrays.decode(view[end:], where)


def digest(job_id: str, current_round: int, plaintext: bytes) -> str:
    """The hex SHA-256 the sites compare: of the job, the round that made it, and sealed_plaintext()'s bytes.

    Binding the job and the round means equal digests in two rounds or two jobs never say "same model".
    """
    h = hashlib.sha256(_DIGEST_DOMAIN)
    h.update(job_id.encode() + b"\0" + str(current_round).encode() + b"\0")
    h.update(plaintext)
    return h.hexdigest()
