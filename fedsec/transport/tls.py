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
from typing import Any, TypeVar

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from fedsec import limits
from fedsec.errors import AuthError, FedsecError, JobError, SessionExpiredError, WireError
from fedsec.kit import Kit
from fedsec.pki import certs

log = logging.getLogger(__name__)

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
    pems = context.auth_context().get("x509_pem_cert")
    if not pems:
        raise AuthError("no verified client certificate")
    return certs.load_cert(pems[0], "peer certificate")


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def peer_identity(context: grpc.ServicerContext) -> certs.Identity:
    """The identity in the verified client certificate of this call's peer.

    Raises AuthError when the call carries no verified certificate.
    """
    return certs.identity_of(peer_cert(context))


def require(context: grpc.ServicerContext, kind: certs.Kind) -> certs.Identity:
    """The peer's identity, which must be of kind; AuthError otherwise."""
    identity = peer_identity(context)
    if identity.kind is not kind:
        raise AuthError(f"a {identity.kind.value} certificate ({identity.name}) is not accepted here")
    return identity


_CODES: list[tuple[type[FedsecError], grpc.StatusCode]] = [
    (SessionExpiredError, grpc.StatusCode.UNAUTHENTICATED),
    (AuthError, grpc.StatusCode.PERMISSION_DENIED),
    (WireError, grpc.StatusCode.INVALID_ARGUMENT),
    (JobError, grpc.StatusCode.FAILED_PRECONDITION),
]

F = TypeVar("F", bound=Callable[..., Any])


def _code_for(exc: FedsecError) -> grpc.StatusCode:
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def rpc_boundary(method: F) -> F:
    """Turn fedsec errors raised by an RPC handler into gRPC statuses with a public message.

    Anything else is logged with its traceback and answered INTERNAL, so no
    detail of the server's state leaks to the peer.
    """

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            result = method(self, request, context)
            if isinstance(result, Iterator):
                return _guard_stream(result, context, method.__name__)
            return result
        except FedsecError as exc:
            log.info("rpc=%s refused: %s", method.__name__, exc)
            context.abort(_code_for(exc), str(exc))
        except Exception:  # the RPC boundary: log the detail, answer a generic error
            log.exception("rpc=%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, "internal error on the server (see its log)")

    return wrapper  # type: ignore[return-value]


def _guard_stream(stream: Iterator[Any], context: grpc.ServicerContext, name: str) -> Iterator[Any]:
    try:
        yield from stream
    except FedsecError as exc:
        log.info("rpc=%s refused: %s", name, exc)
        context.abort(_code_for(exc), str(exc))
    except Exception:  # the RPC boundary
        log.exception("rpc=%s failed", name)
        context.abort(grpc.StatusCode.INTERNAL, "internal error on the server (see its log)")


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


def error_from_rpc(exc: grpc.RpcError, what: str) -> FedsecError:
    """A fedsec error for a failed call, with the server's public message."""
    code = exc.code() if isinstance(exc, grpc.Call) else None
    detail = exc.details() if isinstance(exc, grpc.Call) else str(exc)
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
