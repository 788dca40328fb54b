"""The data of the cifar10 jobs: CIFAR-10 in its binary format, split across sites by Dirichlet.

Reads the official binary release (cifar-10-binary.tar.gz, unpacked by
prepare_data.py) with numpy alone: each record is one label byte and 3072 pixel
bytes (1024 red, 1024 green, 1024 blue, each 32x32 row-major). Never unpickles
anything: the python release of CIFAR-10 is not used.

Every site holds the whole test set and its own Dirichlet share of the training
set. The split is computed once per (n_sites, alpha, seed), written atomically as
JSON and reused, so every site (and job.py) sees the same one.
Augmentation and normalisation are plain torch ops (no torchvision).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedsec._fs import write_atomic

BATCHES_DIR = "cifar-10-batches-bin"
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
IMAGE_SHAPE = (3, 32, 32)
RECORD_BYTES = 1 + 3 * 32 * 32
N_CLASSES = 10
MIN_SITE_SAMPLES = 10
MAX_SPLIT_ATTEMPTS = 1000
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
PAD = 4


@dataclass(frozen=True)
class SiteData:
    """One site's training share and the whole test set: uint8 images (N, 3, 32, 32), int64 labels."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def batches_dir(data_dir: Path) -> Path:
    """The folder holding the .bin files: data_dir/cifar-10-batches-bin, or data_dir itself if it is that folder."""
    return data_dir if data_dir.name == BATCHES_DIR else data_dir / BATCHES_DIR


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 (N, 3, 32, 32), labels int64 (N,)) of one CIFAR-10 binary file.

    Raises ValueError for a missing or empty file, a size that is not a whole number
    of 3073-byte records (a truncated file), or a label outside 0..9.
    """
    if not path.is_file():
        raise ValueError(f"CIFAR-10 file {path} does not exist (run jobs/cifar10/prepare_data.sh)")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD_BYTES:
        raise ValueError(
            f"CIFAR-10 file {path}: {raw.size} bytes is not a whole number of {RECORD_BYTES}-byte records"
            " (truncated or not the binary format)"
        )
    records = raw.reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    bad = np.flatnonzero(labels >= N_CLASSES)
    if bad.size:
        raise ValueError(f"CIFAR-10 file {path}: record {int(bad[0])} has label {int(labels[bad[0]])}, not 0..9")
    return records[:, 1:].reshape(-1, *IMAGE_SHAPE).copy(), labels


def read_train(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The five training files, concatenated in order. Raises ValueError as read_batch does."""
    parts = [read_batch(batches_dir(data_dir) / name) for name in TRAIN_FILES]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def read_test(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The test file. Raises ValueError as read_batch does."""
    return read_batch(batches_dir(data_dir) / TEST_FILE)


def dirichlet_split(labels: np.ndarray, n_sites: int, alpha: float, seed: int) -> list[np.ndarray]:
    """Split sample indices across n_sites, each class's share per site drawn from Dirichlet(alpha).

    Smaller alpha, more skew. Every sample goes to exactly one site; every site gets at
    least MIN_SITE_SAMPLES: a draw that leaves a site short is redrawn from the same
    generator, so the result depends only on the arguments. Indices per site are sorted.
    Raises ValueError on bad arguments or when no draw in MAX_SPLIT_ATTEMPTS works.
    """
    if n_sites < 1:
        raise ValueError(f"n_sites must be at least 1, got {n_sites}")
    if not alpha > 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    if len(labels) < MIN_SITE_SAMPLES * n_sites:
        raise ValueError(f"{len(labels)} samples cannot give {n_sites} sites {MIN_SITE_SAMPLES} each")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(MAX_SPLIT_ATTEMPTS):
        shares: list[list[int]] = [[] for _ in range(n_sites)]
        for cls in classes:
            idx = rng.permutation(np.flatnonzero(labels == cls))
            proportions = rng.dirichlet(np.full(n_sites, alpha))
            # A site already holding its fair share takes no more of this class (keeps sizes sane).
            full = np.array([len(s) >= len(labels) / n_sites for s in shares])
            proportions = np.where(full, 0.0, proportions)
            total = proportions.sum()
            proportions = proportions / total if total > 0 else np.full(n_sites, 1.0 / n_sites)
            cuts = (np.cumsum(proportions)[:-1] * len(idx)).astype(int)
            for site, part in enumerate(np.split(idx, cuts)):
                shares[site].extend(part.tolist())
        if min(len(s) for s in shares) >= MIN_SITE_SAMPLES:
            return [np.sort(np.array(s, dtype=np.int64)) for s in shares]
    raise ValueError(
        f"no Dirichlet({alpha}) split of {len(labels)} samples gave each of {n_sites} sites"
        f" {MIN_SITE_SAMPLES} samples in {MAX_SPLIT_ATTEMPTS} draws"
    )


def split_path(split_dir: Path, n_sites: int, alpha: float, seed: int) -> Path:
    return split_dir / f"split_{n_sites}_{alpha}_{seed}.json"


def load_split(labels: np.ndarray, n_sites: int, alpha: float, seed: int, split_dir: Path) -> list[np.ndarray]:
    """The split of split_dir/split_{n}_{alpha}_{seed}.json, made (and written atomically) if missing.

    A stored split that is unreadable or for another number of samples is refused: ValueError.
    """
    path = split_path(split_dir, n_sites, alpha, seed)
    if path.exists():
        try:
            doc = json.loads(path.read_text())
            sites = [np.array(s, dtype=np.int64) for s in doc["sites"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"split file {path} is not a split ({exc}); delete it to make a new one") from exc
        if doc.get("n_samples") != len(labels) or len(sites) != n_sites:
            raise ValueError(f"split file {path} was made for other data; delete it to make a new one")
        return sites
    sites = dirichlet_split(labels, n_sites, alpha, seed)
    doc = {"n_sites": n_sites, "alpha": alpha, "seed": seed, "n_samples": len(labels)}
    doc["sites"] = [s.tolist() for s in sites]
    write_atomic(path, json.dumps(doc).encode())
    return sites


def load_site(
    data_dir: Path,
    site_index: int,
    n_sites: int,
    alpha: float,
    seed: int,
    split_dir: Path,
    *,
    max_train: int | None = None,
    max_test: int | None = None,
) -> SiteData:
    """Site site_index's (0-based) training share and the test set (each optionally capped).

    Raises ValueError on bad arguments or bad data files.
    """
    if not 0 <= site_index < n_sites:
        raise ValueError(f"site_index {site_index} is not in [0, {n_sites})")
    train_x, train_y = read_train(data_dir)
    mine = load_split(train_y, n_sites, alpha, seed, split_dir)[site_index][:max_train]
    test_x, test_y = read_test(data_dir)
    return SiteData(
        torch.from_numpy(train_x[mine]),
        torch.from_numpy(train_y[mine]),
        torch.from_numpy(test_x[:max_test]),
        torch.from_numpy(test_y[:max_test]),
    )


def site_sizes(
    data_dir: Path, n_sites: int, alpha: float, seed: int, split_dir: Path, *, max_train: int | None = None
) -> list[int]:
    """How many training samples each site gets (after max_train), without loading the images."""
    labels = np.concatenate([read_batch(batches_dir(data_dir) / name)[1] for name in TRAIN_FILES])
    return [len(s[:max_train]) for s in load_split(labels, n_sites, alpha, seed, split_dir)]


def steps_per_round(n_samples: int, batch_size: int, epochs: int) -> int:
    """SGD steps of one round: epochs passes over n_samples in batches (the last one may be short)."""
    return epochs * math.ceil(n_samples / batch_size)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, 32, 32) -> float32, scaled to [0, 1] and standardised per channel."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def augment(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard CIFAR augmentation of a uint8 batch: reflect-pad 4, random 32x32 crop, random horizontal flip.

    Returns float32 of the same shape, normalised.
    """
    x = normalize(images)
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (PAD, PAD, PAD, PAD), mode="reflect")
    dy = torch.randint(0, 2 * PAD + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * PAD + 1, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1).expand(n, 3, h, w + 2 * PAD)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w).expand(n, 3, h, w)
    cropped = padded.gather(2, rows).gather(3, cols)
    flip = torch.rand(n, generator=generator) < 0.5
    return torch.where(flip.view(n, 1, 1, 1), cropped.flip(3), cropped)
