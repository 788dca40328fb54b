"""SCAFFOLD's control variates on the wire: the reserved tensor names, their specs and the checks on them.

SCAFFOLD (Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated Learning") keeps a
control variate, one tensor per floating-point tensor of the model: the server's global c and each
site's own c_i. They travel as extra tensors of the model file, named by a reserved prefix:

- plain: a training task's model carries CONTROL + name (the global c) beside each floating-point
  tensor name; an update carries the same names (the site's control-variate update delta_c_i). Task
  and update therefore have the same tensors, and the server checks an update against them as it
  checks any update against the model.
- HE: the update a site encrypts carries two sections, C_SECTION + name (the c its task gave, weighted
  like the model, so the sum decrypts to c itself) and DELTA_SECTION + name (delta_c_i divided by the
  site's quantised weight, so the sum decrypts, times the total weight, to the plain sum of the
  delta_c_i). The server adds these ciphertexts like any others; only the sites read them.

A model may not use these prefixes for its own tensors. This module only names and checks; it never
computes an update (fedsec.workflow.scaffold does on the server, fedsec.client.scaffold and
fedsec.site.scaffold on a site).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedsec import limits
from fedsec.errors import ConfigError, WireError
from fedsec.wire import arrays

CONTROL = "scaffold/"  # plain task: the global c; plain update: the site's delta_c_i
C_SECTION = "scaffold.c/"  # encrypted update and sum: the task's c, weighted like the model
DELTA_SECTION = "scaffold.dc/"  # encrypted update and sum: delta_c_i / the site's quantised weight
RESERVED = (CONTROL, C_SECTION, DELTA_SECTION)
FLOAT_DTYPES = frozenset({"float16", "float32", "float64"})


def controlled(model: Sequence[arrays.TensorSpec]) -> tuple[arrays.TensorSpec, ...]:
    """The model's tensors that have a control variate: its floating-point ones, in order."""
    return tuple(spec for spec in model if spec.dtype in FLOAT_DTYPES)


def section(model: Sequence[arrays.TensorSpec], prefix: str) -> tuple[arrays.TensorSpec, ...]:
    """The control variates' specs under prefix: prefix + name for each controlled tensor."""
    return tuple(arrays.TensorSpec(prefix + spec.name, spec.dtype, spec.shape) for spec in controlled(model))


def task_specs(model: Sequence[arrays.TensorSpec]) -> tuple[arrays.TensorSpec, ...]:
    """The tensors of a plain training task and of a plain update: the model's, then CONTROL's."""
    return (*model, *section(model, CONTROL))


def sum_specs(model: Sequence[arrays.TensorSpec]) -> tuple[arrays.TensorSpec, ...]:
    """The tensors of an encrypted update and of an encrypted sum: the model's, C_SECTION's, DELTA_SECTION's."""
    return (*model, *section(model, C_SECTION), *section(model, DELTA_SECTION))


def check_model(model: Sequence[arrays.TensorSpec], encrypted: bool, where: str) -> None:
    """Check that a model can carry its control variates; ConfigError naming the tensor or the limit.

    Refuses a tensor named with a reserved prefix, a model without floating-point tensors, names that the
    prefix takes over limits.MAX_TENSOR_NAME, and (task or update, plain or encrypted) tensor counts,
    bytes or encrypted values over their limits.
    """
    for spec in model:
        if spec.name.startswith(RESERVED):
            raise ConfigError(f"{where}: tensor {spec.name!r}: names starting {' or '.join(RESERVED)} are scaffold's")
    if not controlled(model):
        raise ConfigError(f"{where}: scaffold needs a model with floating-point tensors (it has none)")
    specs = sum_specs(model) if encrypted else task_specs(model)
    try:
        arrays.check_specs(specs, f"{where} with its scaffold control variates")
    except WireError as exc:
        raise ConfigError(str(exc)) from exc
    if encrypted:
        values = sum(math.prod(spec.shape) for spec in specs) + 1
        if values >= limits.MAX_HE_VALUES:
            raise ConfigError(
                f"{where}: with scaffold's two encrypted control-variate sections an update holds {values} values, "
                f"over the limit of {limits.MAX_HE_VALUES - 1}"
            )


def split(
    params: Mapping[str, NDArray[Any]], prefix: str, where: str
) -> tuple[dict[str, NDArray[Any]], dict[str, NDArray[Any]]]:
    """params as (the model's tensors, the control variates under prefix by model name), checked strictly.

    Every floating-point tensor of the model must have its control variate of the same dtype and shape,
    and there must be no other; WireError naming the tensor otherwise.
    """
    model = {name: value for name, value in params.items() if not name.startswith(RESERVED)}
    found = {name[len(prefix) :]: value for name, value in params.items() if name.startswith(prefix)}
    stray = [name for name in params if name.startswith(RESERVED) and not name.startswith(prefix)]
    if stray:
        raise WireError(f"{where}: tensor {stray[0]!r} does not belong here (control variates are {prefix}<name>)")
    expected = controlled(arrays.specs_of(model, where))
    for spec in expected:
        value = found.get(spec.name)
        if value is None:
            raise WireError(f"{where}: tensor {prefix + spec.name!r} is missing (the control variate of {spec.name!r})")
        if value.dtype.name != spec.dtype or tuple(value.shape) != spec.shape:
            raise WireError(
                f"{where}: tensor {prefix + spec.name!r} is {value.dtype.name} {tuple(value.shape)}, "
                f"its tensor {spec.name!r} is {spec.dtype} {spec.shape}"
            )
    extra = sorted(set(found) - {spec.name for spec in expected})
    if extra:
        raise WireError(f"{where}: tensor {prefix + extra[0]!r} controls no floating-point tensor of the model")
    return model, {spec.name: found[spec.name] for spec in expected}


def join(
    model: Mapping[str, NDArray[Any]], control: Mapping[str, NDArray[Any]], prefix: str = CONTROL
) -> dict[str, NDArray[Any]]:
    """model's tensors, then each control variate under prefix, cast to its tensor's dtype."""
    out = dict(model)
    for name, value in control.items():
        out[prefix + name] = np.asarray(value).astype(model[name].dtype)
    return out
