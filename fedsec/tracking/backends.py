"""The tracking backends a server's operator names, and the one a job picks by name.

A job never says where its tracking data goes: its app/config.yml names a
backend (``tracking: {backend: NAME}``), and the server's operator says what
each name is in the server kit's ``local/tracking.yml``::

    backends:
      team: {mlflow_uri: https://mlflow.example.org}

The name ``local`` is always there and always means the embedded MLflow store
in the server kit's ``tracking/`` folder; it is the default and cannot be
redefined. A named backend is an MLflow tracking server reached over
http(s)://, never a file or a database URI, so no job and no file can make the
server write a file anywhere or reach anything but what its operator listed.

The file is the operator's own setting (not signed by the provisioner): it may
hold credentials in its URIs, so it must be a regular file owned by the user
that runs the server and closed to everyone else (mode 0600). A missing file
means only ``local``. This module reads the file and nothing else; it never
opens a backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from fedsec import _fs, _schema, limits
from fedsec.errors import ConfigError, JobError

LOCAL = "local"  # the embedded store in <server kit>/tracking/mlflow
BACKENDS_FILE = "local/tracking.yml"  # in the server kit
MAX_URI = 2048
# How the server parent hands a job process its checked backend (a URI may hold credentials: not in argv).
ENV_TRACKING_BACKEND = "FEDSEC_TRACKING_BACKEND"
ENV_TRACKING_MLFLOW_URI = "FEDSEC_TRACKING_MLFLOW_URI"
# in a job's workspace: what its job process could not write to its backend before it ended (the round
# metrics, job params and final model), kept for the server's late-events writer (fedsec.workflow.late)
PENDING_FILE = "tracking_pending.json"


@dataclass(frozen=True)
class Backend:
    """A tracking backend: mlflow_uri "" is the embedded store. repr never shows the URI's credentials."""

    name: str
    mlflow_uri: str = field(default="", repr=False)

    @property
    def embedded(self) -> bool:
        return not self.mlflow_uri

    def __repr__(self) -> str:
        return f"Backend(name={self.name!r}, where={self.shown!r})"

    def env(self) -> dict[str, str]:
        """The environment that hands this backend to a job process."""
        return {ENV_TRACKING_BACKEND: self.name, ENV_TRACKING_MLFLOW_URI: self.mlflow_uri}

    @property
    def shown(self) -> str:
        """Where the backend is, as logs and admins may see it: no credentials, no server path."""
        return "the server's embedded store" if self.embedded else public_uri(self.mlflow_uri)


@dataclass(frozen=True)
class _Entry:
    mlflow_uri: str


@dataclass(frozen=True)
class _File:
    backends: dict[str, _Entry] = field(default_factory=dict)


@dataclass(frozen=True)
class Backends:
    """The backends of a server, by name; always holds LOCAL."""

    by_name: dict[str, Backend]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self.by_name))

    def get(self, name: str) -> Backend:
        """The backend called name; JobError naming the ones there are when there is none."""
        backend = self.by_name.get(name)
        if backend is None:
            raise JobError(
                f"tracking.backend: {name[:64]!r} is not a tracking backend of this server "
                f"(it has: {', '.join(self.names)}); ask the server's operator to add it to {BACKENDS_FILE}"
            )
        return backend


ONLY_LOCAL = Backends({LOCAL: Backend(LOCAL)})


def check_backend_name(name: str) -> str:
    """name if it can name a backend (a safe short name); ConfigError otherwise."""
    return _fs.check_name("tracking backend", name)


def public_uri(uri: str) -> str:
    """uri without the user name and password it may carry."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urlunsplit(parts._replace(netloc=netloc))


def parse_backends(raw: Any, where: str) -> Backends:
    """Backends from a parsed tracking.yml (None: an empty file). ConfigError naming the key on any problem."""
    try:
        doc = _schema.build(_File, {} if raw is None else raw, "")
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    by_name = {LOCAL: Backend(LOCAL)}
    for name, entry in doc.backends.items():
        at = f"{where}: backends.{name}"
        try:
            check_backend_name(name)
        except ConfigError as exc:
            raise ConfigError(f"{at}: {exc}") from exc
        if name.lower() == LOCAL:
            raise ConfigError(f"{at}: {LOCAL!r} is always the embedded store and cannot be redefined")
        if any(existing.lower() == name.lower() for existing in by_name):
            raise ConfigError(f"{at}: names a backend twice (names are compared without case)")
        by_name[name] = Backend(name, _check_uri(entry.mlflow_uri, f"{at}.mlflow_uri"))
    return Backends(by_name)


def _check_uri(uri: str, where: str) -> str:
    if len(uri) > MAX_URI:
        raise ConfigError(f"{where}: longer than {MAX_URI} characters")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in uri):
        raise ConfigError(f"{where}: contains a space or a control character")
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{where}: not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        shown = public_uri(uri)[:80]
        raise ConfigError(f"{where}: {shown!r} is not an http:// or https:// URL (a named backend is an MLflow server)")
    if not parts.hostname:
        raise ConfigError(f"{where}: has no host")
    if port == 0:
        raise ConfigError(f"{where}: port 0 is not a port")
    if parts.query or parts.fragment:
        raise ConfigError(f"{where}: must not have a query or a fragment")
    return uri


def load_backends(kit_root: Path) -> Backends:
    """The backends named in kit_root/local/tracking.yml (only LOCAL when the file is missing).

    Raises ConfigError when the file is a link or not a regular file, is not owned by this process's user, is
    open to the group or others, is too large, or is not a valid tracking.yml.
    """
    path = kit_root / BACKENDS_FILE
    if not _fs.check_operator_file(path, f"{BACKENDS_FILE} (it may hold credentials)", others_may_read=False):
        return ONLY_LOCAL
    data = _fs.read_bounded(path, limits.MAX_CONFIG_FILE_BYTES, BACKENDS_FILE)
    return parse_backends(_schema.parse_yaml(data, BACKENDS_FILE), BACKENDS_FILE)
