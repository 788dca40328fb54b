"""Model files a user opens: safetensors (the standard format), and fedsec's own array container (.fsa).

A finished plain job's result holds ``global_model.safetensors``: named arrays that numpy, PyTorch
and other tools read without fedsec and without pickle (``safetensors.numpy.load_file``,
``safetensors.torch.load_file``). load_model() reads that, the older ``.fsa`` container, or a
result folder holding either, into a dict of numpy arrays; an HE job's encrypted
``global_model.fsh`` is refused with the command that decrypts it. Inside the federation models
still travel and are stored as the .fsa container (fedsec.wire.arrays).

This module owns the safetensors conversion. It checks every file's size against
fedsec.limits before reading it, never unpickles, and never imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors
import safetensors.numpy
from numpy.typing import NDArray

from fedsec import _fs, limits
from fedsec.errors import ConfigError, HEError, WireError
from fedsec.wire import arrays

SAFETENSORS_SUFFIX = ".safetensors"
CONTAINER_SUFFIX = ".fsa"
ENCRYPTED_SUFFIX = ".fsh"
GLOBAL_MODEL = "global_model"  # the stem of a result's model file


def to_safetensors(params: Mapping[str, NDArray[Any]], where: str = "model") -> bytes:
    """params as a safetensors file's bytes. Raises WireError as arrays.specs_of does."""
    arrays.specs_of(params, where)  # the same dtypes, names and bounds as the container
    # a C-ordered copy where needed (np.ascontiguousarray would turn a 0-d array into 1-d)
    contiguous = {name: a if a.flags.c_contiguous else a.copy(order="C") for name, a in params.items()}
    return bytes(safetensors.numpy.save(contiguous))


def write_safetensors(path: Path, params: Mapping[str, NDArray[Any]], where: str | None = None) -> None:
    """Write params to path as safetensors, atomically, mode 0600 (weights are private data).

    Raises WireError as to_safetensors does (before any file is made), OSError if it cannot be written.
    """
    _fs.write_atomic(path, to_safetensors(params, where or f"model file {path}"), mode=arrays.FILE_MODE)


def read_safetensors(path: Path) -> dict[str, NDArray[Any]]:
    """The arrays of the safetensors file at path. Raises WireError if it is too large, unreadable or invalid."""
    where = f"model file {path}"
    data = _fs.read_bounded(path, limits.MAX_MODEL_BYTES, where, WireError)
    try:
        loaded = safetensors.numpy.load(data)
    except (safetensors.SafetensorError, ValueError, TypeError) as exc:  # TypeError: a dtype numpy lacks
        raise WireError(f"{where}: not a valid safetensors file: {exc}") from exc
    if len(loaded) > limits.MAX_TENSORS:
        raise WireError(f"{where}: more than {limits.MAX_TENSORS} tensors")
    return dict(loaded)


def container_to_safetensors(source: Path, dest: Path) -> None:
    """Convert the .fsa container at source into the safetensors file dest. Raises WireError, OSError."""
    write_safetensors(dest, arrays.read_file(source), f"model file {source}")


def load_model(path: str | Path) -> dict[str, NDArray[Any]]:
    """A model's arrays by name: from a .safetensors file, an .fsa container, or a downloaded result folder.

    A folder is read through its global_model.safetensors, else its global_model.fsa. Raises
    ConfigError when path is missing or of another kind, HEError for an encrypted model (with the
    command that decrypts it), WireError when the file is invalid or over the limits.
    """
    path = Path(path)
    if path.is_dir():
        path = _model_in(path)
    if not path.is_file():
        raise ConfigError(f"model file {path}: no such file")
    if path.suffix == SAFETENSORS_SUFFIX:
        return read_safetensors(path)
    if path.suffix == CONTAINER_SUFFIX:
        try:
            return arrays.read_file(path)
        except OSError as exc:
            raise WireError(f"model file {path}: cannot read: {exc.strerror or exc}") from exc
    if path.suffix == ENCRYPTED_SUFFIX:
        raise _encrypted(path)
    raise ConfigError(f"model file {path}: not a {SAFETENSORS_SUFFIX} or {CONTAINER_SUFFIX} file")


def _model_in(folder: Path) -> Path:
    for suffix in (SAFETENSORS_SUFFIX, CONTAINER_SUFFIX):
        if (folder / f"{GLOBAL_MODEL}{suffix}").is_file():
            return folder / f"{GLOBAL_MODEL}{suffix}"
    if (folder / f"{GLOBAL_MODEL}{ENCRYPTED_SUFFIX}").is_file():
        raise _encrypted(folder / f"{GLOBAL_MODEL}{ENCRYPTED_SUFFIX}")
    raise ConfigError(f"result folder {folder}: holds no {GLOBAL_MODEL}{SAFETENSORS_SUFFIX}")


def _encrypted(path: Path) -> HEError:
    return HEError(
        f"model file {path}: the model of an HE job is encrypted; decrypt it with a site's key: "
        f"fedsec he decrypt --context SITE_KIT/startup/client_context.tenseal {path}"
    )
