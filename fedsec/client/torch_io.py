"""PyTorch <-> numpy for training scripts. torch is imported only when these run.

to_numpy() turns a state_dict into numpy arrays; load_into() loads arrays (a received
global model, or a downloaded result read with fedsec.load_model) into a module.
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
