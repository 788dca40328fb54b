"""Optional dependencies: which extra of the fedsec package provides each, and the error when one is missing.

`pip install fedsec` gives the federation itself (PKI, server, sites, admin, numpy models). The heavy
libraries come with extras: tenseal with `fedsec[he]`, mlflow and tensorboardX with `fedsec[tracking]`,
torch and scikit-learn with `fedsec[ml]`, psycopg (a server store in PostgreSQL) with `fedsec[postgres]`,
all of them with `fedsec[all]`. Each module that imports one of them wraps that import and raises
missing(); this module is the one home of the table and the text.
It imports nothing beyond the standard library and fedsec.errors, and never imports the libraries.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from fedsec.errors import DependencyError


@dataclass(frozen=True)
class Extra:
    """An optional library: the extra that installs it and what fedsec needs it for."""

    extra: str
    needed_for: str


OPTIONAL: dict[str, Extra] = {
    "tenseal": Extra("he", "homomorphic encryption"),
    "mlflow": Extra("tracking", "experiment tracking"),
    "tensorboardX": Extra("tracking", "TensorBoard event files"),
    "torch": Extra("ml", "PyTorch models"),
    "sklearn": Extra("ml", "scikit-learn models"),
    "psycopg": Extra("postgres", "a server store in PostgreSQL"),
}


def missing(module: str, exc: ImportError | None = None) -> DependencyError:
    """The error to raise when importing module (a key of OPTIONAL) failed with exc.

    The message is one line: what needs the library, the extra, and the pip command; when the
    import failed on something else than the library itself (a broken install), what it said too.
    """
    opt = OPTIONAL[module]
    failed = (getattr(exc, "name", None) or module).split(".")[0]
    detail = f" ({exc})" if exc is not None and failed != module else ""
    return DependencyError(f"{opt.needed_for} needs the {opt.extra} extra: pip install 'fedsec[{opt.extra}]'{detail}")


def require(module: str) -> None:
    """Import module (a key of OPTIONAL) now, raising missing() if it is not installed.

    For code that imports the library later, inside functions: it fails early with the extra's name.
    """
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise missing(module, exc) from exc
