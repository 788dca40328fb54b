"""Tests of jobs/cifar10, and small CIFAR-10 data sets in the real binary format for them.

The job's modules live outside the package (jobs/cifar10 is put on sys.path by
the scripts themselves), so they are loaded here by path with importlib.
"""

from __future__ import annotations

import importlib
import io
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import numpy as np

JOB_DIR = Path(__file__).resolve().parents[3] / "jobs" / "cifar10"
RECORD_BYTES = 3073
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))


def job_module(name: str) -> ModuleType:
    """jobs/cifar10/<name>.py, imported (torch comes with data and model)."""
    if str(JOB_DIR) not in sys.path:
        sys.path.insert(0, str(JOB_DIR))
    return importlib.import_module(name)


def records(n: int, seed: int) -> bytes:
    """n CIFAR-10 binary records: a label byte (classes in turn) and 3072 random pixel bytes each."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, RECORD_BYTES), dtype=np.uint8)
    out[:, 0] = np.arange(n) % 10
    out[:, 1:] = rng.integers(0, 256, (n, RECORD_BYTES - 1), dtype=np.uint8)
    return out.tobytes()


def dataset_files(n_train: int, n_test: int, seed: int = 0) -> dict[str, bytes]:
    """The release's members under cifar-10-batches-bin/: n_train records spread over the five batches."""
    sizes = [len(part) for part in np.array_split(np.arange(n_train), len(TRAIN_FILES))]
    files = {name: records(size, seed + i) for i, (name, size) in enumerate(zip(TRAIN_FILES, sizes, strict=True))}
    files["test_batch.bin"] = records(n_test, seed + 100)
    files["batches.meta.txt"] = "\n".join(f"class{i}" for i in range(10)).encode() + b"\n"
    return files


def write_dataset(dest: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Write an unpacked data set to dest/cifar-10-batches-bin; returns dest."""
    folder = dest / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for name, data in dataset_files(n_train, n_test, seed).items():
        (folder / name).write_bytes(data)
    return dest


def write_archive(path: Path, n_train: int, n_test: int, extra: dict[str, bytes] | None = None) -> Path:
    """A cifar-10-binary.tar.gz like the official one (plus extra members, for bad archives)."""
    with tarfile.open(path, "w:gz") as tar:
        folder = tarfile.TarInfo("cifar-10-batches-bin")
        folder.type = tarfile.DIRTYPE
        folder.mode = 0o755
        tar.addfile(folder)
        members = {f"cifar-10-batches-bin/{k}": v for k, v in dataset_files(n_train, n_test).items()}
        for name, data in {**members, **(extra or {})}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return path
