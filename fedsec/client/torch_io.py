"""PyTorch <-> numpy for training scripts. torch is imported only when these run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def to_numpy(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A module's state_dict as numpy arrays (copies on the CPU)."""
    return {name: value.detach().cpu().numpy().copy() for name, value in state_dict.items()}


def load_into(module: Any, params: Mapping[str, np.ndarray]) -> None:
    """Load numpy params into a torch module (strict: every key must match)."""
    import torch

    state = {name: torch.from_numpy(np.array(value, copy=True)) for name, value in params.items()}
    module.load_state_dict(state, strict=True)
