"""The one error tree of fedsec, and the CLI exit codes.

Everything fedsec raises derives from FedsecError. Errors are grouped by what
a caller does about them::

    FedsecError
    +-- ConfigError          bad input from a user: a project.yml, meta.yml, a flag  (exit 2)
    |   +-- DependencyError  an optional library is not installed: install the extra it names
    +-- KitError             a startup kit is missing, tampered with or inconsistent (exit 2)
    +-- AuthError            an identity or a right was refused                      (exit 1)
    +-- UnreachableError     the server cannot be reached: start it, or try again     (exit 1)
    +-- WireError            a message broke the protocol or a limit                 (exit 1)
    |   +-- TransferInterruptedError  a payload stream ended early: send it again
    +-- JobError             a job could not be built, stored, run or found          (exit 1)
    |   +-- StoreUnavailableError  the server's state backend cannot be read or written: try again later
    +-- HEError              homomorphic encryption could not be set up or applied   (exit 1)

This module must never import anything beyond the standard library.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_BAD_INPUT = 2


class FedsecError(Exception):
    """Base of every error fedsec raises on purpose."""

    exit_code = EXIT_RUNTIME


class ConfigError(FedsecError):
    """A configuration file, a flag or other user input is invalid."""

    exit_code = EXIT_BAD_INPUT


class DependencyError(ConfigError):
    """An optional library (tenseal, mlflow, torch, ...) is not installed; the message names the extra."""


class KitError(FedsecError):
    """A startup kit is missing, unreadable, tampered with or inconsistent."""

    exit_code = EXIT_BAD_INPUT


class AuthError(FedsecError):
    """A peer's identity or right was refused."""


class UnreachableError(FedsecError):
    """The server cannot be reached: it is not running, not listening there, or the network is down.

    Transient: nothing was refused, so the same call may succeed once the server is back.
    """


class WireError(FedsecError):
    """A message broke the protocol: malformed, oversized, wrong type or shape."""


class TransferInterruptedError(WireError):
    """A payload stream ended (or was cut) before all its announced bytes arrived: the sender may send it again.

    Unlike its parent, it says nothing against the payload itself: nothing was
    checked, so the receiver must not count it as a bad payload.
    """


class JobError(FedsecError):
    """A job could not be built, stored, run or found."""


class StoreUnavailableError(JobError):
    """The server's state backend (its database, its blob folder) cannot be read or written.

    Nothing was decided about the job: the caller may try again later, and must never read
    it as the job having ended.
    """


class HEError(FedsecError):
    """Homomorphic encryption could not be set up or applied."""


class SessionExpiredError(AuthError):
    """An admin session expired or is unknown: log in again."""
