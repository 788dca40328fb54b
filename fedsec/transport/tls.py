"""TLS credentials from a verified kit, and the identity of an authenticated peer.

Every federation link is mutual TLS: the server requires a client
certificate from the project's root CA; clients verify the server against the
same root and its host name. A peer is known only by its verified
certificate (identity_of), never by a name it sends.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from fedsec import limits
from fedsec.errors import (
    AuthError,
    ConfigError,
    FedsecError,
    HEError,
    JobError,
    KitError,
    SessionExpiredError,
    StoreUnavailableError,
    UnreachableError,
    WireError,
)
from fedsec.kit import Kit
from fedsec.logs import RateLimitedLog, RateLimiter
from fedsec.pki.identity import Identity, Kind

if TYPE_CHECKING:  # the X.509 code loads at the first peer certificate read: a site parent never reads one
    from cryptography import x509

log = logging.getLogger(__name__)
# What a peer makes the server log goes through these: one line per peer, RPC and kind of refusal a
# minute, one traceback per RPC a minute; an internal error's id names the line that covers it.
_REFUSALS = RateLimitedLog(log, interval=60.0)
_FAILURES = RateLimitedLog(log, interval=60.0)
_TRACEBACKS = RateLimiter(interval=60.0)
INTERNAL_MESSAGE = "internal error on the server (error id {ident}; the detail is in the server's log)"

# Server-side gRPC caps use the same constants as the rest of the code.
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", limits.MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", limits.MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
]
CHANNEL_OPTIONS = [
    *GRPC_OPTIONS,
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5_000),
]


def server_credentials(kit: Kit) -> grpc.ServerCredentials:
    """Credentials for a listening port that requires a client certificate from the kit's root CA."""
    return grpc.ssl_server_credentials(
        [(kit.key_path.read_bytes(), kit.cert_path.read_bytes())],
        root_certificates=kit.ca_path.read_bytes(),
        require_client_auth=True,
    )


def channel(kit: Kit, host: str, port: int, server_name: str, *, own_connection: bool = False) -> grpc.Channel:
    """A mutual-TLS channel from this kit to the server at host:port.

    The server's certificate must chain to the kit's root CA and name host.
    own_connection: the channel gets a TCP connection of its own, shared with no
    other channel (a site's heartbeats must never queue behind its transfers).
    """
    creds = grpc.ssl_channel_credentials(
        root_certificates=kit.ca_path.read_bytes(),
        private_key=kit.key_path.read_bytes(),
        certificate_chain=kit.cert_path.read_bytes(),
    )
    target = f"{host}:{port}"
    options = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)] if own_connection else CHANNEL_OPTIONS
    return grpc.secure_channel(target, creds, options=options)


def peer_cert(context: grpc.ServicerContext) -> x509.Certificate:
    """The verified client certificate of this call's peer; AuthError when there is none."""
    from fedsec.pki import certs

    pems = context.auth_context().get("x509_pem_cert")
    if not pems:
        raise AuthError("no verified client certificate")
    return certs.load_cert(pems[0], "peer certificate")


def fingerprint(cert: x509.Certificate) -> str:
    from cryptography.hazmat.primitives import hashes

    return cert.fingerprint(hashes.SHA256()).hex()


def peer_identity(context: grpc.ServicerContext) -> Identity:
    """The identity in the verified client certificate of this call's peer.

    Raises AuthError when the call carries no verified certificate.
    """
    from fedsec.pki import certs

    return certs.identity_of(peer_cert(context))


def require(context: grpc.ServicerContext, kind: Kind) -> Identity:
    """The peer's identity, which must be of kind; AuthError otherwise."""
    identity = peer_identity(context)
    if identity.kind is not kind:
        raise AuthError(f"a {identity.kind.value} certificate ({identity.name}) is not accepted here")
    return identity


_CODES: list[tuple[type[FedsecError], grpc.StatusCode]] = [
    (SessionExpiredError, grpc.StatusCode.UNAUTHENTICATED),
    (AuthError, grpc.StatusCode.PERMISSION_DENIED),
    (WireError, grpc.StatusCode.INVALID_ARGUMENT),
    (ConfigError, grpc.StatusCode.INVALID_ARGUMENT),
    (StoreUnavailableError, grpc.StatusCode.ABORTED),  # the server's state is down for now: try again, never "job over"
    (JobError, grpc.StatusCode.FAILED_PRECONDITION),
    (KitError, grpc.StatusCode.FAILED_PRECONDITION),
    (HEError, grpc.StatusCode.FAILED_PRECONDITION),
]

F = TypeVar("F", bound=Callable[..., Any])


def _code_for(exc: FedsecError) -> grpc.StatusCode:
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def rpc_boundary(method: F) -> F:
    """Turn errors raised by an RPC handler into gRPC statuses with a public message.

    The catalog: a FedsecError's message is written by fedsec for the caller, so it is
    public, with the code of its class (_CODES). Anything else is answered INTERNAL with
    a generic message and an error id; the detail (type, text, at most one traceback per
    RPC a minute) goes to the server's log on a line with the same id. Every line is
    rate-limited per peer and RPC, so a peer cannot flood the log.
    """

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            result = method(self, request, context)
            if isinstance(result, Iterator):
                return _guard_stream(result, context, method.__name__)
            return result
        except Exception as exc:  # noqa: BLE001 - the RPC boundary: a public status, the detail logged by abort_with
            abort_with(context, method.__name__, exc)

    return wrapper  # type: ignore[return-value]


def _guard_stream(stream: Iterator[Any], context: grpc.ServicerContext, name: str) -> Iterator[Any]:
    try:
        yield from stream
    except Exception as exc:  # noqa: BLE001 - the RPC boundary, as above
        abort_with(context, name, exc)


def abort_with(context: grpc.ServicerContext, rpc: str, exc: Exception) -> None:
    """End the call with exc's public status; log it once (rate-limited). Raises as context.abort does.

    The one place an RPC's error becomes a status: rpc_boundary and the port's gate use it.
    """
    peer = _peer_name(context)
    if isinstance(exc, FedsecError):
        key = (rpc, peer, type(exc).__name__)
        _REFUSALS.log(logging.INFO, key, "rpc=%s peer=%s refused: %s", rpc, peer, exc)
        context.abort(_code_for(exc), str(exc))
    kind = type(exc).__name__
    ticket = _FAILURES.log(
        logging.ERROR, (rpc, peer, kind), "rpc=%s peer=%s failed: %s: %.500s", rpc, peer, kind, exc,
        with_id=True, traceback=(_TRACEBACKS, rpc),
    )  # fmt: skip
    context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE.format(ident=ticket.ident))


def _peer_name(context: grpc.ServicerContext) -> str:
    """The common name of the peer's verified certificate (as gRPC states it), or its address; for log lines."""
    try:
        names = context.auth_context().get("x509_common_name")
    except Exception:  # noqa: BLE001 - the RPC boundary: a log line must never fail the call
        names = None
    if names:
        return str(names[0].decode(errors="replace"))[:64]
    return str(context.peer())[:64]


_TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)
_TRANSIENT_INTERNAL = ("stream removed", "connection reset", "broken pipe", "socket closed", "rst_stream")


def transient(exc: BaseException) -> bool:
    """Whether a failed call may succeed when made again: the link or the peer's load, not the request, failed.

    UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED, RESOURCE_EXHAUSTED and ABORTED are
    transient, and so is INTERNAL when it reports a cut stream or a reset
    connection; everything else (PERMISSION_DENIED, INVALID_ARGUMENT,
    FAILED_PRECONDITION, UNAUTHENTICATED, NOT_FOUND, ...) is final. This is the one
    place that decides it for every site-server transfer and the training API.
    """
    if not isinstance(exc, grpc.RpcError):
        return False
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNAVAILABLE
    if code in _TRANSIENT_CODES:
        return True
    if code is grpc.StatusCode.INTERNAL:
        detail = (exc.details() if isinstance(exc, grpc.Call) else str(exc)) or ""
        return any(mark in detail.lower() for mark in _TRANSIENT_INTERNAL)
    return False


UNREACHABLE_MESSAGE = "cannot reach the server at {server} (is it running? see its log.txt)"


def error_from_rpc(exc: grpc.RpcError, what: str, server: str | None = None) -> FedsecError:
    """A fedsec error for a failed call, with the server's public message.

    server ("HOST:PORT"): where the call went; given, an UNAVAILABLE call (nothing
    listens there, the link is down: gRPC's own text names addresses and socket
    errors) becomes an UnreachableError that names it instead of gRPC's text.
    """
    code = exc.code() if isinstance(exc, grpc.Call) else None
    detail = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    if code is grpc.StatusCode.UNAVAILABLE and server is not None:
        log.debug("%s: %s unavailable: %s", what, server, detail)
        return UnreachableError(UNREACHABLE_MESSAGE.format(server=server))
    message = f"{what}: {detail}"
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return SessionExpiredError(message)
    if code is grpc.StatusCode.PERMISSION_DENIED:
        return AuthError(message)
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return WireError(message)
    if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
        return JobError(message)
    return FedsecError(message)
