"""The project file: parse, type-check and validate a project.yml.

load_project() returns a frozen Project or raises ConfigError naming the
first problem: invalid YAML, an unknown key, a duplicate or unsafe name, not
exactly one server, an unknown role, a port clash. It writes nothing.

The server may list replicas (`replicas:`, each {name, host, fl_port, admin_port},
the ports defaulting to the server's): one kit per replica, named after it, each
with its own key and a certificate for the same server identity that carries every
name of the server and every replica's host. Without replicas the server is its
own single replica (kit named after the server, reached at host_names[0]), as it
always was. Project.replicas lists them in the order sites and admins try them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsec import _fs, _schema, limits
from fedsec.errors import ConfigError
from fedsec.pki.certs import Kind, Role
from fedsec.state.settings import parse_store

API_VERSION = 1


@dataclass(frozen=True)
class Validity:
    root_days: int = limits.DEFAULT_ROOT_DAYS
    leaf_days: int = limits.DEFAULT_LEAF_DAYS


@dataclass(frozen=True)
class HEFeature:
    """Homomorphic encryption of model updates: BFV contexts for the sites and the server (fedsec.he.params)."""

    enabled: bool = False


@dataclass(frozen=True)
class Features:
    he: HEFeature = field(default_factory=HEFeature)


@dataclass(frozen=True)
class _Common:
    name: str
    type: str
    org: str


@dataclass(frozen=True)
class ReplicaSpec:
    """One replica of the server as project.yml declares it (ports: the server's when left out)."""

    name: str
    host: str
    fl_port: int | None = None
    admin_port: int | None = None


@dataclass(frozen=True)
class Replica:
    """One replica of the server, resolved: its kit's name, and where sites and admins reach it."""

    name: str
    host: str
    fl_port: int
    admin_port: int


@dataclass(frozen=True)
class ServerSpec(_Common):
    host_names: tuple[str, ...]
    fl_port: int
    admin_port: int
    heartbeat_timeout: float = 30.0
    admin_session_timeout: float = 1800.0
    replicas: tuple[ReplicaSpec, ...] | None = None
    store: Any = "sqlite"  # fedsec.state.settings: sqlite, or {postgres: {dsn_file: local/FILE}}


@dataclass(frozen=True)
class ClientSpec(_Common):
    pass


@dataclass(frozen=True)
class AdminSpec(_Common):
    role: Role


@dataclass(frozen=True)
class _Document:
    api_version: int
    name: str
    participants: tuple[dict[str, Any], ...]
    description: str = ""
    validity: Validity = field(default_factory=Validity)
    features: Features = field(default_factory=Features)


@dataclass(frozen=True)
class Project:
    name: str
    description: str
    server: ServerSpec
    clients: tuple[ClientSpec, ...]
    admins: tuple[AdminSpec, ...]
    validity: Validity
    features: Features
    replicas: tuple[Replica, ...] = ()  # the server's, in failover order; parse_project always fills it

    @property
    def participants(self) -> tuple[ServerSpec | ClientSpec | AdminSpec, ...]:
        return (self.server, *self.clients, *self.admins)

    @property
    def server_names(self) -> tuple[str, ...]:
        """Every name the server's certificates carry: its host_names, then each replica's host not among them."""
        names = list(self.server.host_names)
        for replica in self.replicas:
            if replica.host not in names:
                names.append(replica.host)
        return tuple(names)


_SPECS: dict[str, type[ServerSpec] | type[ClientSpec] | type[AdminSpec]] = {
    Kind.SERVER.value: ServerSpec,
    Kind.CLIENT.value: ClientSpec,
    Kind.ADMIN.value: AdminSpec,
}


def load_project(path: Path) -> Project:
    """Read and validate a project file; raises ConfigError naming the problem."""
    raw = _schema.load_yaml(path, "project file")
    try:
        return parse_project(raw)
    except ConfigError as exc:
        raise ConfigError(f"project file {path}: {exc}") from exc


def parse_project(raw: Any) -> Project:
    """Validate a parsed project document."""
    doc = _schema.build(_Document, raw, "")
    if doc.api_version != API_VERSION:
        raise ConfigError(f"api_version: {doc.api_version} is not supported (this fedsec reads {API_VERSION})")
    _fs.check_name("project", doc.name)
    v = doc.validity
    for key, days in (("root_days", v.root_days), ("leaf_days", v.leaf_days)):
        if not 1 <= days <= limits.MAX_VALIDITY_DAYS:
            raise ConfigError(f"validity.{key}: must be between 1 and {limits.MAX_VALIDITY_DAYS} days")
    if v.leaf_days > v.root_days:
        raise ConfigError("validity.leaf_days: longer than validity.root_days")
    if not doc.participants:
        raise ConfigError("participants: the list is empty")
    if len(doc.participants) > limits.MAX_PARTICIPANTS:
        raise ConfigError(f"participants: more than {limits.MAX_PARTICIPANTS}")

    specs = [_participant(raw_p, f"participants[{i}]") for i, raw_p in enumerate(doc.participants)]
    seen: dict[str, str] = {}
    for i, spec in enumerate(specs):
        key = spec.name.lower()  # names become file names: refuse case-only differences too
        if key in seen:
            raise ConfigError(f"participants[{i}].name: {spec.name!r} is a duplicate of {seen[key]}")
        seen[key] = f"participants[{i}]"
    servers = [s for s in specs if isinstance(s, ServerSpec)]
    if len(servers) != 1:
        raise ConfigError(f"participants: need exactly one server, found {len(servers)}")
    where = f"participants[{specs.index(servers[0])}]"
    replicas = _replicas(servers[0], where, seen)
    project = Project(
        name=doc.name,
        description=doc.description,
        server=servers[0],
        clients=tuple(s for s in specs if isinstance(s, ClientSpec)),
        admins=tuple(s for s in specs if isinstance(s, AdminSpec)),
        validity=v,
        features=doc.features,
        replicas=replicas,
    )
    if len(project.server_names) > limits.MAX_HOST_NAMES:
        raise ConfigError(f"{where}: host_names and the replicas' hosts make more than {limits.MAX_HOST_NAMES} names")
    return project


def _replicas(spec: ServerSpec, where: str, taken: dict[str, str]) -> tuple[Replica, ...]:
    """The server's replicas, resolved and checked: names free and safe, no two on one host and port."""
    if spec.replicas is None:
        return (Replica(spec.name, spec.host_names[0], spec.fl_port, spec.admin_port),)
    if not spec.replicas:
        raise ConfigError(f"{where}.replicas: the list is empty (leave it out for a server of one replica)")
    if len(spec.replicas) > limits.MAX_SERVER_REPLICAS:
        raise ConfigError(f"{where}.replicas: more than {limits.MAX_SERVER_REPLICAS}")
    out: list[Replica] = []
    ports: dict[tuple[str, int], str] = {}  # (host, port) -> the key that takes it
    for i, raw in enumerate(spec.replicas):
        at = f"{where}.replicas[{i}]"
        _fs.check_name(f"{at}.name", raw.name)
        if raw.name.lower() in taken:  # a replica's name names its kit folder, beside every participant's
            raise ConfigError(f"{at}.name: {raw.name!r} is a duplicate of {taken[raw.name.lower()]}")
        taken[raw.name.lower()] = at
        _fs.check_name(f"{at}.host", raw.host)
        replica = Replica(
            raw.name,
            raw.host,
            spec.fl_port if raw.fl_port is None else raw.fl_port,
            spec.admin_port if raw.admin_port is None else raw.admin_port,
        )
        for key, port in (("fl_port", replica.fl_port), ("admin_port", replica.admin_port)):
            if not 1 <= port <= 65535:
                raise ConfigError(f"{at}.{key}: {port} is not a port number (1-65535)")
            where_port = (replica.host.lower(), port)
            if where_port in ports:
                raise ConfigError(f"{at}.{key}: {replica.host}:{port} is taken already by {ports[where_port]}")
            ports[where_port] = f"{at}.{key}"
        out.append(replica)
    return tuple(out)


def _participant(raw: Any, where: str) -> ServerSpec | ClientSpec | AdminSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    kind = raw.get("type")
    if kind not in _SPECS:
        raise ConfigError(f"{where}.type: {kind!r} is not one of server, client, admin")
    spec = _schema.build(_SPECS[kind], raw, where)
    _fs.check_name(f"{where}.org", spec.org)
    if isinstance(spec, AdminSpec):
        _fs.check_email(f"{where}.name", spec.name)
    else:
        _fs.check_name(f"{where}.name", spec.name)
    if isinstance(spec, ServerSpec):
        _check_server(spec, where)
    return spec


def _check_server(spec: ServerSpec, where: str) -> None:
    if not spec.host_names:
        raise ConfigError(f"{where}.host_names: give at least one host name")
    if len(spec.host_names) > limits.MAX_HOST_NAMES:
        raise ConfigError(f"{where}.host_names: more than {limits.MAX_HOST_NAMES}")
    for j, host in enumerate(spec.host_names):
        _fs.check_name(f"{where}.host_names[{j}]", host)
    for key, port in (("fl_port", spec.fl_port), ("admin_port", spec.admin_port)):
        if not 1 <= port <= 65535:
            raise ConfigError(f"{where}.{key}: {port} is not a port number (1-65535)")
    if spec.fl_port == spec.admin_port:
        raise ConfigError(f"{where}: fl_port and admin_port are both {spec.fl_port}; they must differ")
    if not 1.0 <= spec.heartbeat_timeout <= 3600.0:
        raise ConfigError(f"{where}.heartbeat_timeout: must be between 1 and 3600 seconds")
    if not 1.0 <= spec.admin_session_timeout <= 7 * 86400.0:
        raise ConfigError(f"{where}.admin_session_timeout: must be between 1 second and 7 days")
    parse_store(spec.store, f"{where}.store")
