"""The data of the digits_fedavg job: scikit-learn's bundled digits, split across sites.

load_digits() ships with scikit-learn (1797 images of 8x8 pixels, no download).
Every site holds the same 20% stratified test set and its own share of the rest:
an even random share (iid) or a Dirichlet share over the classes (non-iid).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

MIN_SITE_SAMPLES = 10
TEST_FRACTION = 0.2


def load_split(
    site_index: int, n_sites: int, *, alpha: float | None = None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (train_x, train_y, test_x, test_y) of site site_index (0-based) out of n_sites.

    Images are float32 in [0, 1] of shape (N, 1, 8, 8); labels are int64.
    alpha None splits the training data evenly at random; a positive alpha draws
    each class's share per site from Dirichlet(alpha): smaller alpha, more skew.
    The same seed gives the same split on every site. Raises ValueError on bad arguments.
    """
    if not 0 <= site_index < n_sites:
        raise ValueError(f"site_index {site_index} is not in [0, {n_sites})")
    if alpha is not None and alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    train_x, test_x, train_y, test_y = train_test_split(x, y, test_size=TEST_FRACTION, stratify=y, random_state=seed)
    if len(train_y) < MIN_SITE_SAMPLES * n_sites:
        raise ValueError(f"{len(train_y)} training samples cannot give {n_sites} sites {MIN_SITE_SAMPLES} each")
    rng = np.random.default_rng(seed)
    if alpha is None:
        shares = np.array_split(rng.permutation(len(train_y)), n_sites)
    else:
        shares = _dirichlet_shares(train_y, n_sites, alpha, rng)
    mine = np.sort(shares[site_index])
    return (
        torch.from_numpy(train_x[mine]),
        torch.from_numpy(train_y[mine]),
        torch.from_numpy(test_x),
        torch.from_numpy(test_y),
    )


def _dirichlet_shares(labels: np.ndarray, n_sites: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Split sample indices per class by Dirichlet(alpha) proportions; top up small sites."""
    shares: list[list[int]] = [[] for _ in range(n_sites)]
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        proportions = rng.dirichlet(np.full(n_sites, alpha))
        cuts = (np.cumsum(proportions)[:-1] * len(idx)).astype(int)
        for site, part in enumerate(np.split(idx, cuts)):
            shares[site].extend(part.tolist())
    # Every site needs a few samples to train on: move some from the largest share.
    for site in range(n_sites):
        while len(shares[site]) < MIN_SITE_SAMPLES:
            largest = max(range(n_sites), key=lambda s: len(shares[s]))
            shares[site].append(shares[largest].pop())
    return [np.array(s, dtype=np.int64) for s in shares]
