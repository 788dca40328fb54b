"""The gate in front of every server port: who may call, how many at once, and how long a peer may stall.

A gRPC server reads a call's first message in a worker thread before the
handler runs, so a peer that opens streams and never sends could hold every
worker of a port. The gate is a server interceptor that runs before anything
is read:

- the connection must be TLS 1.3 (the gRPC release in use cannot set a
  minimum version on a listener, so a TLS 1.2 handshake completes, but no
  call on it is ever served);
- the peer's verified certificate must be of the port's kind (sites on the
  fl port, admins on the admin port), checked before a byte of the request;
- each method belongs to a lane (liveness: heartbeats, logins; transfers:
  uploads, downloads, long polls), and each lane has its own thread pool, so
  transfers can never starve heartbeats or logins;
- one certificate holds at most `per_peer` calls in a lane at once; more are
  refused with RESOURCE_EXHAUSTED;
- a watchdog cancels a call whose peer has not sent its first message within
  `first_message_seconds`, or stalls (sends nothing, or reads nothing the
  server sends) for `idle_seconds`. Time the server itself spends (a held
  heartbeat, waiting for a round) is never counted against the peer.

Unary requests are served as one-message streams, so the same deadlines hold
for them: the wire format is the same. This module never reads a payload
and never logs one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc

from fedsec.errors import AuthError, WireError
from fedsec.logs import RateLimitedLog
from fedsec.pki import certs
from fedsec.transport.tls import abort_with, fingerprint, peer_cert

log = logging.getLogger(__name__)
_REFUSED = RateLimitedLog(log, interval=60.0)  # a peer over its bounds logs one line a minute, not one a call

TLS_VERSION = "TLSv1.3"  # the only protocol version served


@dataclass(frozen=True)
class Lane:
    """A class of calls with its own workers and a per-certificate bound."""

    name: str
    workers: int
    per_peer: int


@dataclass(frozen=True)
class GateConfig:
    """What one port admits: the peer kind, its lanes and which methods go where."""

    kind: certs.Kind
    lanes: tuple[Lane, ...]
    methods: dict[str, str]  # method name -> lane name; a method not listed goes to the first lane
    first_message_seconds: float
    idle_seconds: float


class _Watchdog:
    """Cancels calls whose armed deadline passed; one thread per gate."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._armed: dict[int, tuple[float, grpc.ServicerContext, str]] = {}
        self._next = 0
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="gate-watchdog", daemon=True)
        self._thread.start()

    def arm(self, context: grpc.ServicerContext, seconds: float, what: str) -> int:
        with self._cond:
            self._next += 1
            self._armed[self._next] = (time.monotonic() + seconds, context, what)
            self._cond.notify()
            return self._next

    def disarm(self, token: int) -> None:
        with self._cond:
            self._armed.pop(token, None)

    def close(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _loop(self) -> None:
        with self._cond:
            while not self._stopped:
                now = time.monotonic()
                due = [t for t, (deadline, _, _) in self._armed.items() if deadline <= now]
                for token in due:
                    _, context, what = self._armed.pop(token)
                    log.info("gate: cancelled %s", what)
                    context.cancel()
                wait = min((d for d, _, _ in self._armed.values()), default=now + 60.0) - now
                self._cond.wait(max(wait, 0.01))


@dataclass
class _Counts:
    lock: threading.Lock = field(default_factory=threading.Lock)
    held: dict[tuple[str, str], int] = field(default_factory=dict)  # (lane, peer fingerprint) -> calls


class Gate(grpc.ServerInterceptor):  # type: ignore[misc]
    """The server interceptor for one port; close() when the server has stopped."""

    def __init__(self, config: GateConfig) -> None:
        self._config = config
        self._lanes = {lane.name: lane for lane in config.lanes}
        self._pools = {
            lane.name: futures.ThreadPoolExecutor(max_workers=lane.workers, thread_name_prefix=f"gate-{lane.name}")
            for lane in config.lanes
        }
        self._counts = _Counts()
        self._watchdog = _Watchdog()

    def close(self) -> None:
        self._watchdog.close()
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None:
            return None
        method = str(details.method).rsplit("/", 1)[-1]
        lane = self._lanes.get(self._config.methods.get(method, ""), self._config.lanes[0])
        if handler.response_streaming:
            streaming = self._streaming_behavior(handler, lane, method)
            streaming.experimental_thread_pool = self._pools[lane.name]  # type: ignore[attr-defined]
            return grpc.stream_stream_rpc_method_handler(
                streaming, _decoder(handler.request_deserializer), handler.response_serializer
            )
        unary = self._unary_behavior(handler, lane, method)
        unary.experimental_thread_pool = self._pools[lane.name]  # type: ignore[attr-defined]
        return grpc.stream_unary_rpc_method_handler(
            unary, _decoder(handler.request_deserializer), handler.response_serializer
        )

    # ------------------------------------------------------------ behaviours

    def _unary_behavior(
        self, handler: grpc.RpcMethodHandler, lane: Lane, method: str
    ) -> Callable[[Iterator[Any], grpc.ServicerContext], Any]:
        behavior = handler.stream_unary if handler.request_streaming else handler.unary_unary

        def run(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            peer = self._enter(context, lane, method)
            try:
                return behavior(self._argument(handler, requests, context, f"{method} from {peer}"), context)
            finally:
                self._leave(lane, peer)

        return run

    def _streaming_behavior(
        self, handler: grpc.RpcMethodHandler, lane: Lane, method: str
    ) -> Callable[[Iterator[Any], grpc.ServicerContext], Iterator[Any]]:
        behavior = handler.stream_stream if handler.request_streaming else handler.unary_stream

        def run(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            peer = self._enter(context, lane, method)
            try:
                what = f"{method} from {peer}"
                for response in behavior(self._argument(handler, requests, context, what), context):
                    token = self._watchdog.arm(context, self._config.idle_seconds, f"{what}: peer reads nothing")
                    try:
                        yield response  # resumes once gRPC has sent it: the peer's reading is what is timed
                    finally:
                        self._watchdog.disarm(token)
            finally:
                self._leave(lane, peer)

        return run

    def _argument(
        self, handler: grpc.RpcMethodHandler, requests: Iterator[Any], context: grpc.ServicerContext, what: str
    ) -> Any:
        watched = self._watched(requests, context, what)
        if handler.request_streaming:
            return watched
        try:
            request = next(watched, None)
        except WireError as exc:  # before the handler and its RPC boundary: answered the same way
            abort_with(context, what.split(" ", maxsplit=1)[0], exc)
        if request is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{what.split(' ', maxsplit=1)[0]}: no request message")
        return request

    def _watched(self, requests: Iterator[Any], context: grpc.ServicerContext, what: str) -> Iterator[Any]:
        seconds, stall = self._config.first_message_seconds, "no first message"
        while True:
            token = self._watchdog.arm(context, seconds, f"{what}: {stall} within {seconds:g} s")
            try:
                request = next(requests, None)
            except grpc.RpcError as exc:  # cancelled (by the watchdog or the peer) or reset: one line, no traceback
                raise WireError(f"{what}: the request stream broke off ({_status(exc)})") from None
            finally:
                self._watchdog.disarm(token)
            if request is None:
                return
            if isinstance(request, Undecodable):
                raise WireError(f"{what}: a request message that is not a valid {request.type_name} ({request.error})")
            yield request
            seconds, stall = self._config.idle_seconds, "stalled"

    # ------------------------------------------------------------ admission

    def _enter(self, context: grpc.ServicerContext, lane: Lane, method: str) -> str:
        """Check TLS 1.3, the peer's certificate and its share of the lane, before anything is read; return its key."""
        version = b"".join(context.auth_context().get("ssl_tls_version", [])).decode(errors="replace")
        if version != TLS_VERSION:
            _REFUSED.log(logging.INFO, ("tls", method), "gate: refused %s over %s", method, version or "no TLS")
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{version or 'no TLS'} is not accepted: TLS 1.3 only")
        try:
            cert = peer_cert(context)
            identity = certs.identity_of(cert)
        except AuthError as exc:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        if identity.kind is not self._config.kind:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"a {identity.kind.value} certificate ({identity.name}) is not accepted on this port",
            )
        peer = f"{identity.name}/{fingerprint(cert)[:16]}"
        key = (lane.name, peer)
        with self._counts.lock:
            held = self._counts.held.get(key, 0)
            if held >= lane.per_peer:
                refused = True
            else:
                refused = False
                self._counts.held[key] = held + 1
        if refused:
            _REFUSED.log(
                logging.INFO, (method, peer), "gate: refused %s from %s: %d %s calls already open",
                method, peer, held, lane.name,
            )  # fmt: skip
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{identity.name} has {held} {lane.name} calls open, the most one peer may hold; retry later",
            )
        return peer

    def _leave(self, lane: Lane, peer: str) -> None:
        key = (lane.name, peer)
        with self._counts.lock:
            left = self._counts.held.get(key, 1) - 1
            if left:
                self._counts.held[key] = left
            else:
                self._counts.held.pop(key, None)


@dataclass(frozen=True)
class Undecodable:
    """A request message that does not parse as its type: the handler refuses it (gRPC would log a traceback)."""

    type_name: str
    error: str


def _decoder(decode: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """decode, answering Undecodable instead of raising: gRPC would answer INTERNAL and log a traceback."""
    if decode is None:
        return None
    type_name = getattr(getattr(decode, "__self__", None), "__name__", "message")

    def safe(data: bytes) -> Any:
        try:
            return decode(data)
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and the like: the peer's bytes are at fault
            return Undecodable(type_name, type(exc).__name__)

    return safe


def _status(exc: grpc.RpcError) -> str:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    return code.name.lower() if code is not None else "cancelled"
