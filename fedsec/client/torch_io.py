"""PyTorch <-> numpy for training scripts. torch is imported only when these run.

to_numpy() turns a state_dict into numpy arrays; load_into() loads arrays (a received
global model, or a downloaded result read with fedsec.load_model) into a module;
proximal_term() is FedProx's mu/2 * ||w - w_global||^2, added to a loss in one line.
Without torch installed (the ml extra), load_into raises DependencyError naming the extra.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedsec import _deps


def to_numpy(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A module's state_dict as numpy arrays (copies on the CPU)."""
    return {name: value.detach().cpu().numpy().copy() for name, value in state_dict.items()}


def load_into(module: Any, params: Mapping[str, np.ndarray]) -> None:
    """Load numpy params into a torch module (strict: every key must match).

    Raises DependencyError when torch is not installed; torch's own error when a name or shape differs.
    """
    try:
        import torch
    except ImportError as exc:  # the ml extra is not installed
        raise _deps.missing("torch", exc) from exc

    state = {name: torch.from_numpy(np.array(value, copy=True)) for name, value in params.items()}
    module.load_state_dict(state, strict=True)


def proximal_term(module: Any, global_params: Mapping[str, Any], mu: float) -> Any:
    """FedProx's proximal term mu/2 * sum ||w - w_global||^2 over module's trainable parameters, a torch scalar.

    global_params: the global model of the round (the received FLModel.params: numpy arrays, or tensors),
    by the names of module.named_parameters(); buffers (batch-norm statistics) are not in the term. Its
    gradient pulls each weight towards the global one: loss = loss + proximal_term(net, model.params, mu).
    Raises DependencyError without torch, KeyError naming a parameter global_params lacks.
    """
    try:
        import torch
    except ImportError as exc:  # the ml extra is not installed
        raise _deps.missing("torch", exc) from exc

    terms = []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        if name not in global_params:
            raise KeyError(f"proximal_term: the global model has no parameter {name!r}")
        anchor = torch.as_tensor(global_params[name], dtype=param.dtype, device=param.device)
        terms.append((param - anchor).pow(2).sum())
    if not terms:
        return torch.zeros(())
    return (mu / 2.0) * torch.stack(terms).sum()
