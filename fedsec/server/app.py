"""The server parent process: two mTLS gRPC ports, the site registry, the job manager.

It never imports torch or numpy: it moves bytes and keeps records. SIGTERM
stops it cleanly; running jobs stay "running" in the store and resume from
their last completed round at the next start. With a postgres store it is one
replica of the server (fedsec.server.replica): standby until it holds the
server lease, then active; a replica that loses the lease stops its job
processes and stands by again, and the replica that takes the lease resumes
the jobs.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from types import FrameType

import grpc

from fedsec import _proc, limits
from fedsec.errors import ConfigError, KitError
from fedsec.kit import HE_SERVER_CONTEXT, Kit, ServerConfig, read_ca
from fedsec.pki.identity import Kind
from fedsec.server.admin_service import AdminContext, AdminService
from fedsec.server.audit import AuditLog
from fedsec.server.authz import load_policy
from fedsec.server.jobs import JobManager
from fedsec.server.registry import SiteRegistry
from fedsec.server.replica import Replica, StandbyHandler, replica_name
from fedsec.server.services import FederationService
from fedsec.server.sessions import AdminSessions
from fedsec.server.store import JobStore
from fedsec.state.settings import open_state
from fedsec.tracking.backends import load_backends
from fedsec.transport.gate import Gate, GateConfig, Lane
from fedsec.transport.tls import GRPC_OPTIONS, server_credentials
from fedsec.wire import fedsec_pb2_grpc

log = logging.getLogger(__name__)

_LOOPBACK = {"localhost", "127.0.0.1", "::1"}
_STANDBY_WORKERS = 4  # a standby answers at once: a few threads serve any number of callers


def listen_host(config: ServerConfig) -> str:
    """127.0.0.1 when every host name of the server is a loopback name, else all interfaces."""
    return "127.0.0.1" if set(config.host_names) <= _LOOPBACK else "0.0.0.0"  # noqa: S104


def _bind(server: grpc.Server, host: str, port: int, creds: grpc.ServerCredentials) -> None:
    try:
        bound = server.add_secure_port(f"{host}:{port}", creds)
    except RuntimeError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc} (is another server running?)") from exc
    if bound == 0:
        raise ConfigError(f"cannot listen on {host}:{port} (is another server running?)")


SITE_PORT = GateConfig(
    kind=Kind.CLIENT,
    lanes=(
        Lane("liveness", limits.SITE_LIVENESS_WORKERS, limits.SITE_LIVENESS_PER_PEER),
        Lane("transfer", limits.SITE_TRANSFER_WORKERS, limits.SITE_TRANSFER_PER_PEER),
    ),
    methods={m: "transfer" for m in ("FetchJob", "GetTask", "SubmitResult", "SendEvents", "AppendJobLog")},
    first_message_seconds=limits.GATE_FIRST_MESSAGE_SECONDS,
    idle_seconds=limits.GATE_IDLE_SECONDS,
)
ADMIN_PORT = GateConfig(
    kind=Kind.ADMIN,
    lanes=(
        Lane("session", limits.ADMIN_SESSION_WORKERS, limits.ADMIN_SESSION_PER_PEER),
        Lane("transfer", limits.ADMIN_TRANSFER_WORKERS, limits.ADMIN_TRANSFER_PER_PEER),
    ),
    methods={"SubmitJob": "transfer", "DownloadJob": "transfer"},
    first_message_seconds=limits.GATE_FIRST_MESSAGE_SECONDS,
    idle_seconds=limits.GATE_IDLE_SECONDS,
)


def _grpc_server(name: str, gate: Gate) -> grpc.Server:
    """A gRPC server whose calls all pass the gate (which gives each lane its own workers)."""
    pool = futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix=name)  # for nothing the gate routes
    return grpc.server(pool, interceptors=[gate], options=GRPC_OPTIONS)


def tracking_folder(kit_root: Path, replicated: bool) -> Path:
    """The embedded MLflow store's folder: <kit>/tracking, or <kit>/store/tracking for a replicated server.

    The replicas of a server share <kit>/store, so a job's runs stay in one store when another replica
    takes the job over (its tracking.db, also there, remembers which events that store has).
    """
    return kit_root / "store" / "tracking" if replicated else kit_root / "tracking"


def _set_up_tracking_store(kit_root: Path, tracking_dir: Path) -> None:
    """Set up the embedded MLflow store once, in a child (the parent never imports mlflow), in the background.

    Job processes that start meanwhile wait on the store's lock; its outcome goes to this server's log.
    """
    log_path = tracking_dir / "store_setup.log"
    argv = [sys.executable, "-m", "fedsec.tracking.receivers.store", "--tracking-dir", str(tracking_dir)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDSEC_")}
    mark = log_path.stat().st_size if log_path.exists() else 0
    # niced: importing MLflow takes seconds of CPU, which the sites registering meanwhile need more
    proc = _proc.start(argv, cwd=kit_root, env=env, log_path=log_path, nice=limits.BACKGROUND_NICE)

    def wait() -> None:
        code = proc.wait()
        with log_path.open("rb") as f:
            f.seek(mark)
            text = f.read(64 * 1024).decode("utf-8", "replace").splitlines()
        said = [line for line in text if " WARNING " in line or " ERROR " in line][-5:]
        for line in said:
            log.warning("tracking store setup: %s", line.split(": ", 1)[-1])
        if code == 0:
            log.info("tracking: the embedded MLflow store is ready")
        else:
            log.error(
                "tracking: the embedded MLflow store could not be set up (exit %d); see tracking/store_setup.log; "
                "jobs on backend local retry it",
                code,
            )

    threading.Thread(target=wait, name="tracking-setup", daemon=True).start()


def _standby_server(name: str, host: str, ports: tuple[int, int], creds: grpc.ServerCredentials) -> grpc.Server:
    """A started gRPC server on both ports that answers every call as standby replica name."""
    pool = futures.ThreadPoolExecutor(max_workers=_STANDBY_WORKERS, thread_name_prefix="standby")
    server = grpc.server(pool, handlers=[StandbyHandler(name)], options=GRPC_OPTIONS)
    for port in ports:
        _bind(server, host, port, creds)
    server.start()
    return server


def _await_lease(
    replica: Replica,
    server: str,
    host: str,
    ports: tuple[int, int],
    creds: grpc.ServerCredentials,
    stop: threading.Event,
    lost: threading.Event,
) -> bool:
    """Stand by on ports until replica holds the server lease (True, renewing it; lost set when it goes) or stop."""
    if replica.try_acquire() is None:  # held by another: stand by (a free lease is taken without a pause)
        standby = _standby_server(replica.name, host, ports, creds)
        log.info(
            "server=%s replica=%s standby, listening fl=%s:%d admin=%s:%d; waiting for the server lease",
            server, replica.name, host, ports[0], host, ports[1],
        )  # fmt: skip
        active = replica.wait_active(stop)
        standby.stop(grace=None).wait()
        if not active:
            return False
    lease = replica.lease()
    log.info(
        "server=%s replica=%s active: holds the server lease (fencing token %d)",
        server, replica.name, lease.fencing_token if lease else 0,
    )  # fmt: skip
    lost.clear()
    replica.keep(lambda why: lost.set())
    return True


def run_server(kit: Kit, listen: str | None = None, fl_port: int | None = None) -> int:
    """Serve until SIGTERM or SIGINT; return the exit status.

    fl_port: the port to take sites' calls on, instead of the kit's (sites still dial the
    kit's address: something between them, a NAT or a proxy, forwards it here).
    With a postgres store the server runs under the server lease (fedsec.server.replica):
    it serves while it holds it, and stands by while another replica does.
    Raises ConfigError when it is not a port number or a port cannot be bound.
    """
    if kit.kind is not Kind.SERVER or not isinstance(kit.config, ServerConfig):
        raise KitError(f"kit {kit.name}: is a {kit.kind.value} kit, not a server kit")
    config = kit.config
    if fl_port is not None and not 0 < fl_port < 65536:
        raise ConfigError(f"--fl-port: must be a port number between 1 and 65535, got {fl_port}")
    ports = (fl_port or config.fl_port, config.admin_port)
    host = listen or listen_host(config)
    _proc.lock_kit(kit.root / "run", f"server {config.label}")
    load_policy(kit.root)  # a bad policy stops the server here, standby or not
    load_backends(kit.root)  # the operator's tracking backends: likewise
    settings = config.store_settings
    state = open_state(kit.root, settings)  # sqlite by default; the kit's settings may say postgres
    log.info("server=%s state backend=%s", config.name, state.backend)
    store = JobStore(kit.root / "store", state=state)
    audit = AuditLog(state, legacy=kit.root / "audit" / "audit.log")
    creds = server_credentials(kit)
    stop = threading.Event()
    lost = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    name = config.replica or replica_name(config.name, ports[1])  # the provisioned replica's name, when it has one
    replica = Replica(state, name, settings.lease_ttl) if settings.replicated else None
    store.fence = replica.lease if replica is not None else None
    tracking_dir = tracking_folder(kit.root, replica is not None)
    tracking_set_up: list[bool] = []

    def listening() -> None:  # the MLflow store's set-up (a child's seconds of CPU) starts once sites can register
        if not tracking_set_up:
            _set_up_tracking_store(kit.root, tracking_dir)
            tracking_set_up.append(True)

    if replica is not None:  # a standby sets the shared store up too (under its lock): a takeover finds it ready
        listening()
    try:
        while not stop.is_set():
            if replica is not None and not _await_lease(replica, config.name, host, ports, creds, stop, lost):
                break
            _serve_active(kit, host, ports, creds, store, audit, replica, stop, lost, listening)
            if replica is None:
                break
            replica.step_down()
            if lost.is_set():
                log.warning("server=%s replica=%s stepped down: standing by again", config.name, replica.name)
    finally:
        if replica is not None:
            replica.release()
        store.close()
        audit.close()
    return 0


def _serve_active(
    kit: Kit,
    host: str,
    ports: tuple[int, int],
    creds: grpc.ServerCredentials,
    store: JobStore,
    audit: AuditLog,
    replica: Replica | None,
    stop: threading.Event,
    lost: threading.Event,
    listening: Callable[[], None],
) -> None:
    """Serve as the active server until stop or lost is set; then stop every job process (jobs stay running).

    listening: called once both ports listen.
    """
    assert isinstance(kit.config, ServerConfig)
    config = kit.config
    policy = load_policy(kit.root)
    holder: list[JobManager] = []
    registry = SiteRegistry(
        config.heartbeat_timeout,
        lambda alive: holder[0].sites_changed(alive) if holder else None,
        kit.root / "store" / "removed_sites.json",
    )
    he_context = kit.startup / HE_SERVER_CONTEXT
    tracking = load_backends(kit.root)
    jobs = JobManager(
        store,
        kit.root / "run",
        registry.alive,
        read_ca(kit),
        he_context if he_context.exists() else None,
        tracking,
        tracking_folder(kit.root, replica is not None),
    )  # resumes every unfinished job from its last completed round
    holder.append(jobs)
    admin_ctx = AdminContext(
        config=config,
        store=store,
        jobs=jobs,
        registry=registry,
        sessions=AdminSessions(config.name, config.admin_session_timeout),
        audit=audit,
        policy=policy,
        request_stop=stop.set,
        started_at=time.time(),
        replica=replica.status if replica is not None else None,
    )
    fl_gate, admin_gate = Gate(SITE_PORT), Gate(ADMIN_PORT)
    fl = _grpc_server("fl", fl_gate)
    fedsec_pb2_grpc.add_FederationServicer_to_server(FederationService(config, registry, jobs), fl)
    _bind(fl, host, ports[0], creds)
    admin = _grpc_server("admin", admin_gate)
    fedsec_pb2_grpc.add_AdminServicer_to_server(AdminService(admin_ctx), admin)
    _bind(admin, host, ports[1], creds)
    fl.start()
    admin.start()
    log.info(
        "server=%s replica=%s project=%s listening fl=%s:%d admin=%s:%d",
        config.name, config.replica or "-", config.project, host, ports[0], host, ports[1],
    )  # fmt: skip
    listening()
    while not stop.is_set() and not lost.is_set():
        stop.wait(0.2)
    log.info("server=%s stopping%s", config.name, " (lost the server lease)" if lost.is_set() else "")
    fl.stop(grace=None if lost.is_set() else 1).wait()
    admin.stop(grace=None if lost.is_set() else 1).wait()
    fl_gate.close()
    admin_gate.close()
    jobs.close()
    registry.close()
