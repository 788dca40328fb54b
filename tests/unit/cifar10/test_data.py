"""jobs/cifar10/data.py and model.py: reading the binary format, the Dirichlet split, augmentation."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from tests.unit.cifar10 import RECORD_BYTES, job_module, records, write_dataset

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs the ml extra")


def _entropy_of_sites(labels: np.ndarray, sites: list[np.ndarray]) -> float:
    """Mean over sites of the entropy of the site's class distribution."""
    values = []
    for idx in sites:
        p = np.bincount(labels[idx], minlength=10) / len(idx)
        p = p[p > 0]
        values.append(float(-(p * np.log(p)).sum()))
    return float(np.mean(values))


def test_model_has_about_3_49m_parameters() -> None:
    import torch

    net = job_module("model").ModerateCNN()
    count = sum(p.numel() for p in net.parameters())
    assert abs(count - 3_490_000) <= 0.01 * 3_490_000, count
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_read_batch_reads_the_binary_format(tmp_path: Path) -> None:
    data = job_module("data")
    raw = records(7, seed=1)
    (tmp_path / "b.bin").write_bytes(raw)
    images, labels = data.read_batch(tmp_path / "b.bin")
    assert images.shape == (7, 3, 32, 32) and images.dtype == np.uint8
    assert labels.tolist() == list(range(7))
    second = np.frombuffer(raw, dtype=np.uint8)[RECORD_BYTES : 2 * RECORD_BYTES]
    assert images[1, 0, 0, 0] == second[1]  # red plane first, row-major
    assert images[1, 1, 0, 0] == second[1 + 1024]  # then green
    assert images[1, 2, 31, 31] == second[-1]  # blue, last pixel


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (records(3, 0)[:-1], "not a whole number"),  # truncated
        (b"", "not a whole number"),
        (bytes([10]) + bytes(3072), "label 10"),
    ],
)
def test_read_batch_rejects_bad_files(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "bad.bin"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=problem):
        job_module("data").read_batch(path)


def test_read_batch_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        job_module("data").read_batch(tmp_path / "data_batch_1.bin")


def test_dirichlet_split_is_deterministic_disjoint_and_fills_every_site() -> None:
    data = job_module("data")
    labels = np.random.default_rng(0).integers(0, 10, 2000)
    for alpha in (0.1, 0.5, 1.0):
        sites = data.dirichlet_split(labels, 8, alpha, 3)
        again = data.dirichlet_split(labels, 8, alpha, 3)
        assert all(np.array_equal(a, b) for a, b in zip(sites, again, strict=True))
        joined = np.concatenate(sites)
        assert len(np.unique(joined)) == len(joined)  # no sample twice
        assert len(joined) <= len(labels) and joined.min() >= 0 and joined.max() < len(labels)
        assert min(len(s) for s in sites) >= data.MIN_SITE_SAMPLES
    other = data.dirichlet_split(labels, 8, 1.0, 4)
    assert not all(np.array_equal(a, b) for a, b in zip(data.dirichlet_split(labels, 8, 1.0, 3), other, strict=True))


def test_dirichlet_split_skew_grows_as_alpha_falls() -> None:
    data = job_module("data")
    labels = np.random.default_rng(0).integers(0, 10, 5000)
    entropy = {a: _entropy_of_sites(labels, data.dirichlet_split(labels, 10, a, 0)) for a in (0.1, 1.0, 100.0)}
    assert entropy[0.1] < entropy[1.0] < entropy[100.0], entropy


@pytest.mark.parametrize(("n_sites", "alpha"), [(0, 1.0), (3, 0.0), (3, -1.0), (300, 1.0)])
def test_dirichlet_split_rejects_bad_arguments(n_sites: int, alpha: float) -> None:
    labels = np.arange(1000) % 10
    with pytest.raises(ValueError, match=r"n_sites|alpha|cannot give"):
        job_module("data").dirichlet_split(labels, n_sites, alpha, 0)


def test_load_site_writes_the_split_once_and_reuses_it(tmp_path: Path) -> None:
    data = job_module("data")
    write_dataset(tmp_path / "cifar", n_train=200, n_test=30)
    splits = tmp_path / "splits"
    site = data.load_site(tmp_path / "cifar", 2, 4, 0.5, 7, splits)
    path = splits / "split_4_0.5_7.json"
    assert path.is_file()
    assert site.train_images.shape[1:] == (3, 32, 32) and len(site.train_labels) == len(site.train_images)
    assert site.test_images.shape == (30, 3, 32, 32)
    stamp = path.stat().st_mtime_ns
    again = data.load_site(tmp_path / "cifar", 2, 4, 0.5, 7, splits, max_train=5, max_test=10)
    assert path.stat().st_mtime_ns == stamp  # reused, not rewritten
    assert np.array_equal(again.train_labels.numpy(), site.train_labels.numpy()[:5])
    assert len(again.test_labels) == 10
    sizes = data.site_sizes(tmp_path / "cifar", 4, 0.5, 7, splits)
    assert sum(sizes) == 200 and sizes[2] == len(site.train_labels)


def test_augment_keeps_shapes_and_normalises() -> None:
    import torch

    data = job_module("data")
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    out = data.augment(images, torch.Generator().manual_seed(0))
    assert out.shape == (6, 3, 32, 32) and out.dtype == torch.float32
    plain = data.normalize(images)
    assert plain.shape == out.shape
    assert torch.isfinite(out).all()
    assert data.augment(images, torch.Generator().manual_seed(0)).equal(out)
