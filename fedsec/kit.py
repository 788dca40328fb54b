"""load_kit(): the one way every process opens its startup kit.

It checks startup/signature.json against the kit's root CA first, then loads
the participant's fed_*.json, certificate and key and checks that they belong
together. Server, site and admin start paths all call it, so a tampered kit
is refused everywhere with the same message naming the file.

A site's or an admin's config names the server by one endpoint (`server`: a
server of one replica, as every kit always did) or by the ordered list of its
replicas' endpoints (`servers`), never both; `endpoints` gives either as a list.
A server replica's config names its replica (`replica`; "" for a server of one).

The X.509 and signature code (cryptography) loads only inside load_kit() and
read_ca(): a parent process can take a Kit checked in a child of its own
(to_json / from_json carry it across, fedsec.launch) and never load it while idle.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsec import _fs, _schema, limits
from fedsec.errors import AuthError, ConfigError, KitError
from fedsec.pki.identity import Identity, Kind, Role
from fedsec.state.settings import StoreSettings, parse_store

if TYPE_CHECKING:
    from cryptography import x509

KIT_FORMAT = "fedsec-kit/1"
ROOT_CA_FILE = "rootCA.pem"
HE_CLIENT_CONTEXT = "client_context.tenseal"  # sites: the HE context with the shared secret key
HE_SERVER_CONTEXT = "server_context.tenseal"  # the server: an HE context with no key
CONFIG_FILES = {
    Kind.SERVER: "fed_server.json",
    Kind.CLIENT: "fed_client.json",
    Kind.ADMIN: "fed_admin.json",
}


@dataclass(frozen=True)
class ServerEndpoint:
    """Where a client or an admin reaches the server: host and the port for its kind."""

    name: str
    host: str
    port: int


@dataclass(frozen=True)
class ServerConfig:
    format: str
    project: str
    name: str
    org: str
    host_names: tuple[str, ...]
    fl_port: int
    admin_port: int
    heartbeat_timeout: float = 30.0
    admin_session_timeout: float = 1800.0
    replica: str = ""  # this kit's replica of the server; "" for a server of one replica
    store: Any = "sqlite"  # the state backend: "sqlite", or {"postgres": {"dsn_file": "local/..."}} (fedsec.state)

    @property
    def label(self) -> str:
        """The server's name, with the replica's when it has replicas: "server1 (replica server1-b)"."""
        return f"{self.name} (replica {self.replica})" if self.replica else self.name

    @property
    def store_settings(self) -> StoreSettings:
        """The checked store setting (checked when the kit loads, so this does not raise)."""
        return parse_store(self.store, "startup/fed_server.json: store")


@dataclass(frozen=True)
class ClientConfig:
    format: str
    project: str
    name: str
    org: str
    server: ServerEndpoint | None = None  # a server of one replica
    heartbeat_interval: float = 5.0
    servers: tuple[ServerEndpoint, ...] = ()  # a server of several replicas, in the order to try them

    @property
    def endpoints(self) -> tuple[ServerEndpoint, ...]:
        """The server's endpoints in the order to try them (one for a server of one replica)."""
        return self.servers or ((self.server,) if self.server is not None else ())


@dataclass(frozen=True)
class AdminConfig:
    format: str
    project: str
    name: str
    org: str
    role: str
    server: ServerEndpoint | None = None  # a server of one replica
    servers: tuple[ServerEndpoint, ...] = ()  # a server of several replicas, in the order to try them

    @property
    def endpoints(self) -> tuple[ServerEndpoint, ...]:
        """The server's endpoints in the order to try them (one for a server of one replica)."""
        return self.servers or ((self.server,) if self.server is not None else ())


def config_json(config: ServerConfig | ClientConfig | AdminConfig) -> dict[str, Any]:
    """The config as its kit file holds it: a server of one replica written exactly as before replicas existed."""
    body = dataclasses.asdict(config)
    if isinstance(config, ClientConfig | AdminConfig):
        body.pop("servers" if config.server is not None else "server")
    elif not config.replica:
        body.pop("replica")
    return body


Config = ServerConfig | ClientConfig | AdminConfig
_CONFIG_TYPES: dict[Kind, type[ServerConfig] | type[ClientConfig] | type[AdminConfig]] = {
    Kind.SERVER: ServerConfig,
    Kind.CLIENT: ClientConfig,
    Kind.ADMIN: AdminConfig,
}


@dataclass(frozen=True)
class Kit:
    """A verified startup kit."""

    root: Path
    kind: Kind
    config: Config
    identity: Identity
    signed_files: tuple[str, ...]
    ca_pem: bytes  # startup/rootCA.pem as it was when the kit's signatures were checked

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def startup(self) -> Path:
        return self.root / "startup"

    @property
    def ca_path(self) -> Path:
        return self.startup / ROOT_CA_FILE

    @property
    def cert_path(self) -> Path:
        return self.startup / f"{self.config.name}.crt"

    @property
    def key_path(self) -> Path:
        return self.startup / f"{self.config.name}.key"


def load_kit(root: Path) -> Kit:
    """Verify and load the startup kit in folder root.

    Raises KitError for a missing, tampered or inconsistent kit.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec

    from fedsec.pki import certs, signing

    root = root.absolute()  # children run in other folders: every path derived from the kit is absolute
    label = root.name or str(root)
    if not (root / "startup").is_dir():
        raise KitError(f"kit {root}: has no startup/ folder (is this a startup kit?)")
    ca_pem = _read(root / "startup" / ROOT_CA_FILE, label)
    ca = certs.load_cert(ca_pem, f"kit {label}: startup/{ROOT_CA_FILE}")
    try:
        ca_key = ca.public_key()
        ca.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise KitError(
            f"kit {label}: startup/{ROOT_CA_FILE} is damaged (not a valid self-signed CA certificate)"
        ) from exc
    if not isinstance(ca_key, ec.EllipticCurvePublicKey):
        raise KitError(f"kit {label}: startup/{ROOT_CA_FILE} does not hold an EC key")
    signed = signing.verify(root, ca_key, label)

    present = [kind for kind, fname in CONFIG_FILES.items() if (root / "startup" / fname).exists()]
    if len(present) != 1:
        raise KitError(f"kit {label}: expected exactly one of {', '.join(CONFIG_FILES.values())} in startup/")
    kind = present[0]
    cfg_rel = f"startup/{CONFIG_FILES[kind]}"
    config = _load_config(root / cfg_rel, _CONFIG_TYPES[kind], f"kit {label}: {cfg_rel}")

    cert = certs.load_cert(
        _read(root / "startup" / f"{config.name}.crt", label), f"kit {label}: startup/{config.name}.crt"
    )
    key = certs.load_key(
        _read(root / "startup" / f"{config.name}.key", label), f"kit {label}: startup/{config.name}.key"
    )
    try:
        certs.verify_chain(cert, ca, f"kit {label}: startup/{config.name}.crt")
        identity = certs.identity_of(cert)
    except AuthError as exc:
        raise KitError(str(exc)) from exc
    if not certs.root_matches(key, cert):
        raise KitError(f"kit {label}: startup/{config.name}.key is not the key of startup/{config.name}.crt")
    if identity.kind is not kind or identity.name != config.name:
        raise KitError(
            f"kit {label}: certificate is for {identity.kind.value} {identity.name!r}, "
            f"config says {kind.value} {config.name!r}"
        )
    return Kit(root=root, kind=kind, config=config, identity=identity, signed_files=tuple(signed), ca_pem=ca_pem)


def _read(path: Path, label: str) -> bytes:
    where = f"kit {label}: {path.parent.name}/{path.name}"
    return _fs.read_bounded(path, limits.MAX_KIT_FILE_BYTES, where, KitError)


def _load_config(path: Path, cls: type[ServerConfig] | type[ClientConfig] | type[AdminConfig], where: str) -> Config:
    try:
        raw = json.loads(path.read_bytes())
        config = _schema.build(cls, raw, "")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise KitError(f"{where}: not valid JSON") from exc
    except ConfigError as exc:
        raise KitError(f"{where}: {exc}") from exc
    if config.format != KIT_FORMAT:
        raise KitError(f"{where}: format {config.format!r} is not {KIT_FORMAT!r}")
    if isinstance(config, ClientConfig | AdminConfig):
        _check_endpoints(config, where)
    else:
        try:
            if config.replica:
                _fs.check_name("replica", config.replica)
            config.store_settings  # noqa: B018 - checked now, not when the server first needs it
        except ConfigError as exc:
            raise KitError(f"{where}: {exc}") from exc
    return config


def _check_endpoints(config: ClientConfig | AdminConfig, where: str) -> None:
    """Exactly one of server and servers; every endpoint of one server, once, at a safe host and a port."""
    if config.server is not None and config.servers:
        raise KitError(f"{where}: names both server and servers; a kit names one or the other")
    endpoints = config.endpoints
    if not endpoints:
        raise KitError(f"{where}: names no server (neither server nor servers)")
    if len(endpoints) > limits.MAX_SERVER_REPLICAS:
        raise KitError(f"{where}: servers: more than {limits.MAX_SERVER_REPLICAS} endpoints")
    seen: set[tuple[str, int]] = set()
    for i, endpoint in enumerate(endpoints):
        at = f"servers[{i}]" if config.servers else "server"
        if endpoint.name != endpoints[0].name:
            raise KitError(
                f"{where}: {at} names server {endpoint.name!r}, not {endpoints[0].name!r}: "
                "every endpoint must be a replica of the one server"
            )
        try:
            _fs.check_name(f"{at}.host", endpoint.host)
        except ConfigError as exc:
            raise KitError(f"{where}: {exc}") from exc
        if not 1 <= endpoint.port <= 65535:
            raise KitError(f"{where}: {at}.port: {endpoint.port} is not a port number (1-65535)")
        if (endpoint.host.lower(), endpoint.port) in seen:
            raise KitError(f"{where}: {at}: {endpoint.host}:{endpoint.port} is listed twice")
        seen.add((endpoint.host.lower(), endpoint.port))


def read_ca(kit: Kit) -> x509.Certificate:
    """The kit's root CA certificate, as load_kit checked it (loads the X.509 code at the first call)."""
    from fedsec.pki import certs

    return certs.load_cert(kit.ca_pem, f"kit {kit.name}: startup/{ROOT_CA_FILE}")


def to_json(kit: Kit) -> dict[str, Any]:
    """A checked kit as JSON data, for a process that checked it to hand it to the one that runs it (from_json)."""
    return {
        "root": str(kit.root),
        "kind": kit.kind.value,
        "config": json.loads(json.dumps(dataclasses.asdict(kit.config))),  # tuples as JSON lists, as a file has them
        "identity": {
            "name": kit.identity.name,
            "org": kit.identity.org,
            "kind": kit.identity.kind.value,
            "role": kit.identity.role.value if kit.identity.role is not None else None,
        },
        "signed_files": list(kit.signed_files),
        "ca_pem": kit.ca_pem.decode("ascii"),
    }


def from_json(doc: Any) -> Kit:
    """The Kit that to_json() wrote, checked again for its shape only (the kit's files were checked by load_kit).

    Raises KitError when doc is not what to_json() writes.
    """
    try:
        kind = Kind(doc["kind"])
        ident = doc["identity"]
        role = Role(ident["role"]) if ident["role"] is not None else None
        identity = Identity(str(ident["name"]), str(ident["org"]), Kind(ident["kind"]), role)
        config = _schema.build(_CONFIG_TYPES[kind], doc["config"], "")
        signed = tuple(str(rel) for rel in doc["signed_files"])
        return Kit(Path(doc["root"]), kind, config, identity, signed, str(doc["ca_pem"]).encode("ascii"))
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise KitError(f"a checked kit's record is malformed: {exc}") from exc


def read_kit_yaml(path: Path, where: str) -> Any:
    """A bounded, safely parsed YAML file of a kit (its local/ policies); KitError naming the problem."""
    if path.is_symlink() or not path.is_file():
        raise KitError(f"{where}: missing or not a regular file")
    data = _fs.read_bounded(path, limits.MAX_CONFIG_FILE_BYTES, where, KitError)
    try:
        return _schema.parse_yaml(data, where)
    except ConfigError as exc:
        raise KitError(str(exc)) from exc
