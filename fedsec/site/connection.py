"""The site's channels to the server replica it uses now: the one place its server stub is chosen.

Everything a site sends to the server (registration and heartbeats on one
connection, transfers, events, reports and every job's relay on another) takes
its stub from ServerConnection at the moment of the call, so when the agent
moves to the next endpoint (fail_over) every later call follows at once.

Each endpoint gets its two channels the first time it is used and keeps them
until close(): a call that picked the old stub a moment before a move fails and
is retried on the new one, never on a closed channel. The one exception is
renew_live(): while the site cannot reach the server at all, the agent replaces
the registration channel before each quick retry, since a gRPC channel that
failed to connect waits out its own reconnect backoff (0.2 s growing to 5 s)
and fails every call meanwhile; a fresh one dials at once.
"""

from __future__ import annotations

import threading

import grpc

from fedsec.kit import Kit, ServerEndpoint
from fedsec.transport.failover import Endpoints, address
from fedsec.transport.tls import channel
from fedsec.wire import fedsec_pb2_grpc


class ServerConnection:
    """The site's connections to the server's endpoints, and which one is in use."""

    def __init__(self, kit: Kit, endpoints: Endpoints) -> None:
        self._kit = kit
        self._endpoints = endpoints
        self._lock = threading.Lock()
        # endpoint index -> (live channel, live stub, transfer channel, transfer stub)
        self._open: dict[
            int, tuple[grpc.Channel, fedsec_pb2_grpc.FederationStub, grpc.Channel, fedsec_pb2_grpc.FederationStub]
        ] = {}
        self._closed = False

    @property
    def endpoint(self) -> ServerEndpoint:
        return self._endpoints.current

    @property
    def index(self) -> int:
        return self._endpoints.index

    @property
    def address(self) -> str:
        return address(self._endpoints.current)

    @property
    def count(self) -> int:
        return len(self._endpoints)

    def live(self) -> fedsec_pb2_grpc.FederationStub:
        """The stub for registration and heartbeats (a connection of its own: never behind a transfer)."""
        return self._stubs(self._endpoints.index)[1]

    def stub(self) -> fedsec_pb2_grpc.FederationStub:
        """The stub for transfers, events, reports and job relays."""
        return self._stubs(self._endpoints.index)[3]

    def renew_live(self) -> None:
        """Replace the endpoint in use's registration channel with a fresh one, which dials at the next call.

        Only the agent's registration and heartbeat thread uses the live stub, and it
        calls this between its calls: no call of another thread is on the closed channel.
        """
        with self._lock:
            found = self._open.get(self._endpoints.index)
            if found is None or self._closed:
                return
            live, _, bulk, bulk_stub = found
            end = self._endpoints.current
            fresh = channel(self._kit, end.host, end.port, end.name, own_connection=True)
            self._open[self._endpoints.index] = (fresh, fedsec_pb2_grpc.FederationStub(fresh), bulk, bulk_stub)
        live.close()

    def fail_over(self, seen: int) -> ServerEndpoint:
        """Move past endpoint index seen (found failing) to the next one; return the endpoint in use."""
        return self._endpoints.advance(seen)

    def _stubs(
        self, index: int
    ) -> tuple[grpc.Channel, fedsec_pb2_grpc.FederationStub, grpc.Channel, fedsec_pb2_grpc.FederationStub]:
        with self._lock:
            found = self._open.get(index)
            if found is None:
                if self._closed:
                    raise ValueError("the site's server connection is closed")
                end = self._endpoints.all[index]
                # two connections: heartbeats never queue behind the bytes of a transfer
                live = channel(self._kit, end.host, end.port, end.name, own_connection=True)
                bulk = channel(self._kit, end.host, end.port, end.name, own_connection=True)
                found = (live, fedsec_pb2_grpc.FederationStub(live), bulk, fedsec_pb2_grpc.FederationStub(bulk))
                self._open[index] = found
            return found

    def close(self) -> None:
        """Close every channel: calls in flight end at once (a held heartbeat, a transfer)."""
        with self._lock:
            self._closed = True
            opened = list(self._open.values())
        for live, _, bulk, _ in opened:
            live.close()
            bulk.close()
