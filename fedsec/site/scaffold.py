"""SCAFFOLD under homomorphic encryption, in the site's relay (trusted code that holds the HE key).

The training script sees the plain protocol either way (fedsec.jobs.control): a training task's model
with the global control variate c beside it, an update with delta_c_i beside it. Under HE the server
cannot step the model or c, so the relay encodes an upload whose plain sum is all the next round needs:

- the model's tensors: y_i' = x + server_lr * (y_i - x), which the weighted average turns into the
  server step x + server_lr * mean_w(y_i - x), since every site of a round starts from the same x;
- C_SECTION: c itself, weighted like the model, so the sum decrypts to c;
- DELTA_SECTION: delta_c_i / w_i (w_i the site's quantised weight), so the weighting leaves delta_c_i
  and the sum decrypts, times the total weight W, to sum(delta_c_i).

A task's encrypted sum then gives every site, sampled before or not, the same x and
c + W * sum(delta_c_i) / W / N = c + sum(delta_c_i) / N. A control-variate value beyond he.clip would be
clipped, and c would drift from the mean of the sites' c_i: the relay refuses such an upload instead,
naming the tensor and the clip (the model's own values are clipped as in any HE job). This module does
the arithmetic only; fedsec.site.local calls it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedsec.errors import WireError
from fedsec.jobs import control

Arrays = dict[str, NDArray[Any]]


def plain_task(params: Mapping[str, NDArray[Any]], where: str) -> tuple[Arrays, Arrays]:
    """A plain training task (round 0: the server's model and c = 0) as (the model, c)."""
    return control.split(params, control.CONTROL, where)


def task_from_sum(params: Mapping[str, NDArray[Any]], total: float, sites: int, where: str) -> tuple[Arrays, Arrays]:
    """The decrypted sum of a round's uploads (weighted averages, total weight total) as the next (model, c)."""
    deltas = {name: value for name, value in params.items() if name.startswith(control.DELTA_SECTION)}
    rest = {name: value for name, value in params.items() if name not in deltas}
    model, c = control.split(rest, control.C_SECTION, where)
    _, delta = control.split({**model, **deltas}, control.DELTA_SECTION, where)
    scale = total / sites
    out = {name: (c[name].astype(np.float64) + scale * delta[name].astype(np.float64)) for name in c}
    return model, {name: value.astype(c[name].dtype) for name, value in out.items()}


def upload(
    model: Mapping[str, NDArray[Any]],
    delta: Mapping[str, NDArray[Any]],
    base: Mapping[str, NDArray[Any]],
    c: Mapping[str, NDArray[Any]],
    server_lr: float,
    weight: float,
    clip: float,
    where: str,
) -> Arrays:
    """What a site encrypts for the script's full weights model and its control-variate update delta.

    base: the task's global model x; c: the task's c; weight: the site's quantised weight
    (fedsec.he.params.quantised_weight). Raises WireError when the tensors are not the task's, or a
    control-variate value is beyond clip.
    """
    if set(model) != set(base) or set(c) != set(delta):
        raise WireError(f"{where}: the update's tensors are not the task's")
    stepped: Arrays = {}
    for name, y in model.items():
        if server_lr == 1.0 or name not in c:  # integer tensors (counters) average as they are
            stepped[name] = y
        else:
            x = base[name].astype(np.float64)
            stepped[name] = (x + server_lr * (y.astype(np.float64) - x)).astype(y.dtype)
    for label, values in (("the task's control variate", c), ("the control-variate update", delta)):
        for name, value in values.items():
            peak = float(np.max(np.abs(value))) if value.size else 0.0
            if peak > clip:
                raise WireError(
                    f"{where}: {label} of {name!r} reaches {peak:.4g}, beyond he.clip {clip:g}: the encrypted "
                    "sum would clip it (raise he.clip, or lower the learning rate)"
                )
    scaled = {name: value.astype(np.float64) / weight for name, value in delta.items()}
    return control.join(control.join(stepped, c, control.C_SECTION), scaled, control.DELTA_SECTION)
