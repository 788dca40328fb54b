"""Build prod_NN: the root CA (kept in state/) and one signed kit per participant.

Everything is made in a staging folder inside the project folder and moved
into place with renames at the end, so a failure leaves the workspace as it
was. The root CA key stays in state/ and never goes into a kit.

A server with replicas gets one kit per replica, named after the replica, each
with a key of its own and a certificate for the server's identity (its name and
org) carrying every name of the server (Project.server_names); sites' and
admins' kits list every replica's endpoint, in the project's order.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from fedsec import _fs
from fedsec.errors import ConfigError, KitError
from fedsec.kit import (
    CONFIG_FILES,
    HE_CLIENT_CONTEXT,
    HE_SERVER_CONTEXT,
    KIT_FORMAT,
    ROOT_CA_FILE,
    AdminConfig,
    ClientConfig,
    ServerConfig,
    ServerEndpoint,
    config_json,
)
from fedsec.pki import certs, signing
from fedsec.provision import templates
from fedsec.provision.project import AdminSpec, ClientSpec, Project, Replica, ServerSpec
from fedsec.state.settings import parse_store

STATE_DIR = "state"
_ROOT_KEY = "rootCA.key"
_PROD_RE = re.compile(r"prod_(\d{2,})")
_HE_CLIENT = "he_client_context.tenseal"
_HE_SERVER = "he_server_context.tenseal"


@dataclass(frozen=True)
class ProvisionResult:
    project: Project
    prod_dir: Path
    kits: tuple[Path, ...]
    new_root: bool


def provision(project: Project, workspace: Path) -> ProvisionResult:
    """Write WORKSPACE/<project>/prod_NN with a kit per participant.

    Raises ConfigError when the existing state is unusable; nothing is changed then.
    """
    project_dir = workspace / project.name
    state = project_dir / STATE_DIR
    existing = _load_root(state)
    prod_name = f"prod_{_next_prod(project_dir):02d}"
    created_project_dir = not project_dir.exists()
    project_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=project_dir))
    try:
        if existing is None:
            ca_key, ca_cert = certs.make_root(project.name, project.validity.root_days)
            (staging / STATE_DIR).mkdir(mode=0o700)
            _fs.write_secret(staging / STATE_DIR / _ROOT_KEY, certs.key_pem(ca_key))
            _fs.write_atomic(staging / STATE_DIR / ROOT_CA_FILE, certs.cert_pem(ca_cert))
        else:
            ca_key, ca_cert = existing
        he = _he_contexts(state, staging / STATE_DIR) if project.features.he.enabled else None
        prod = staging / prod_name
        kits = tuple(
            _build_kit(prod, project, spec, replica, ca_key, ca_cert, he)
            for spec in project.participants
            for replica in (project.replicas if isinstance(spec, ServerSpec) else (None,))
        )
        if existing is None:
            (staging / STATE_DIR).rename(state)
        elif he is not None and not (state / _HE_CLIENT).exists():  # HE turned on for an existing project
            for name in (_HE_CLIENT, _HE_SERVER):
                (staging / STATE_DIR / name).rename(state / name)
        prod.rename(project_dir / prod_name)
    except BaseException:
        if created_project_dir:
            shutil.rmtree(project_dir, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    final = project_dir / prod_name
    return ProvisionResult(project, final, tuple(final / k.name for k in kits), existing is None)


def _load_root(state: Path) -> tuple[certs.PrivateKey, x509.Certificate] | None:
    if not state.exists():
        return None
    key_path, cert_path = state / _ROOT_KEY, state / ROOT_CA_FILE
    if not key_path.is_file() or not cert_path.is_file():
        raise ConfigError(f"{state}: state folder exists but lacks {_ROOT_KEY} or {ROOT_CA_FILE}")
    try:
        key = certs.load_key(key_path.read_bytes(), str(key_path))
        cert = certs.load_cert(cert_path.read_bytes(), str(cert_path))
    except (KitError, OSError) as exc:
        raise ConfigError(f"{state}: cannot load the root CA: {exc}") from exc
    if not certs.root_matches(key, cert):
        raise ConfigError(f"{state}: {_ROOT_KEY} is not the key of {ROOT_CA_FILE}")
    return key, cert


def _he_contexts(state: Path, staging_state: Path) -> tuple[bytes, bytes]:
    """The project's HE contexts (client, server): made once, kept in state/ so every prod_NN shares them."""
    if (state / _HE_CLIENT).exists():
        return (state / _HE_CLIENT).read_bytes(), (state / _HE_SERVER).read_bytes()
    from fedsec.he.context import make_contexts  # tenseal: only when a project enables HE

    client, server = make_contexts()
    staging_state.mkdir(mode=0o700, exist_ok=True)
    _fs.write_secret(staging_state / _HE_CLIENT, client)
    _fs.write_atomic(staging_state / _HE_SERVER, server)
    return client, server


def _next_prod(project_dir: Path) -> int:
    numbers = [
        int(m.group(1))
        for p in (project_dir.iterdir() if project_dir.is_dir() else [])
        if (m := _PROD_RE.fullmatch(p.name))
    ]
    return max(numbers, default=-1) + 1


def _build_kit(
    prod: Path,
    project: Project,
    spec: ServerSpec | ClientSpec | AdminSpec,
    replica: Replica | None,
    ca_key: certs.PrivateKey,
    ca_cert: x509.Certificate,
    he: tuple[bytes, bytes] | None,
) -> Path:
    """The kit of one participant (of one replica of the server: replica is given for a server only)."""
    kit = prod / (replica.name if replica is not None else spec.name)
    startup, local = kit / "startup", kit / "local"
    for d in (startup, local, kit / "transfer"):
        d.mkdir(parents=True)
    server = project.server
    several = server.replicas is not None  # declared replicas: kits list them (else written as they always were)
    fmt = dict(name=kit.name, project=project.name)
    signed_local: list[str] = []
    if isinstance(spec, ServerSpec):
        assert replica is not None  # provision() gives a server's kit its replica
        identity = certs.Identity(spec.name, spec.org, certs.Kind.SERVER)
        config: ServerConfig | ClientConfig | AdminConfig = ServerConfig(
            KIT_FORMAT,
            project.name,
            spec.name,
            spec.org,
            project.server_names,
            replica.fl_port,
            replica.admin_port,
            spec.heartbeat_timeout,
            spec.admin_session_timeout,
            replica=replica.name if several else "",
            store=parse_store(spec.store, "server.store").to_json(),
        )
        scripts = {"start.sh": templates.START_SH, "stop_fl.sh": templates.STOP_SH}
        signed_local.append(_write_text(local / "authorization.yml", templates.AUTHORIZATION_YML))
    elif isinstance(spec, ClientSpec):
        identity = certs.Identity(spec.name, spec.org, certs.Kind.CLIENT)
        ends = tuple(ServerEndpoint(server.name, r.host, r.fl_port) for r in project.replicas)
        config = ClientConfig(
            KIT_FORMAT, project.name, spec.name, spec.org, None if several else ends[0], servers=ends if several else ()
        )
        scripts = {"start.sh": templates.START_SH, "stop_fl.sh": templates.STOP_SH}
        signed_local.append(_write_text(local / "site_policy.yml", templates.SITE_POLICY_YML))
    else:
        identity = certs.Identity(spec.name, spec.org, certs.Kind.ADMIN, spec.role)
        ends = tuple(ServerEndpoint(server.name, r.host, r.admin_port) for r in project.replicas)
        config = AdminConfig(
            KIT_FORMAT, project.name, spec.name, spec.org, spec.role.value, None if several else ends[0],
            servers=ends if several else (),
        )  # fmt: skip
        scripts = {"fl_admin.sh": templates.FL_ADMIN_SH}
    host_names = project.server_names if isinstance(spec, ServerSpec) else ()
    key, cert = certs.issue(ca_key, ca_cert, identity, project.validity.leaf_days, host_names)
    _fs.write_secret(startup / f"{spec.name}.key", certs.key_pem(key))
    _fs.write_atomic(startup / f"{spec.name}.crt", certs.cert_pem(cert))
    _fs.write_atomic(startup / ROOT_CA_FILE, certs.cert_pem(ca_cert))
    if he is not None and identity.kind is certs.Kind.CLIENT:
        _fs.write_secret(startup / HE_CLIENT_CONTEXT, he[0])  # holds the secret key shared by the sites
    elif he is not None and identity.kind is certs.Kind.SERVER:
        _fs.write_atomic(startup / HE_SERVER_CONTEXT, he[1])  # no key at all: the server only adds
    body = json.dumps(config_json(config), indent=2) + "\n"
    _fs.write_atomic(startup / CONFIG_FILES[identity.kind], body.encode())
    for fname, text in scripts.items():
        _fs.write_atomic(startup / fname, text.format(kind=identity.kind.value, **fmt).encode(), mode=0o755)
    signed = [f"startup/{p.name}" for p in startup.iterdir()] + [f"local/{p}" for p in signed_local]
    _fs.write_atomic(kit / signing.SIGNATURE_FILE, signing.sign(kit, signed, ca_key))
    return kit


def _write_text(path: Path, text: str) -> str:
    _fs.write_atomic(path, text.encode())
    return path.name
