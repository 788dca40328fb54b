"""Replicas of the server: the endpoints a site or an admin holds, and the answer of a standby replica.

A project may run its server as several replicas, one active at a time. Sites
and admins hold every replica's endpoint (their kit's `servers`, in order) and
stay with the one that answers. When it stops answering, they move to the next
one in the kit's order, wrapping around: Endpoints keeps that choice, in one
place, for everything a process sends to the server.

A standby replica answers every call with STANDBY: status UNAVAILABLE (so any
client treats it as "try again", never as a refusal), the trailing metadata
STANDBY_KEY=STANDBY_VALUE (what is_standby() reads: a detail text is not a
contract) and a public detail saying so. abort_standby() is the one way a
replica says it. fails_over() decides, for every client, which failures move
it to the next endpoint: nothing answers there, or a standby does.

This module never retries or sleeps itself: callers own their backoff.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import NoReturn

import grpc

from fedsec.errors import ConfigError, UnreachableError
from fedsec.kit import ServerEndpoint

STANDBY_KEY = "fedsec-replica-state"
STANDBY_VALUE = "standby"
STANDBY_DETAIL = "server replica {replica} is a standby, not the active replica: try the next endpoint"
UNREACHABLE_ALL = (
    "cannot reach the server at any of its endpoints: {tried} (is the active replica running? see its log.txt)"
)


def address(endpoint: ServerEndpoint) -> str:
    """host:port of an endpoint, as messages name it."""
    return f"{endpoint.host}:{endpoint.port}"


def abort_standby(context: grpc.ServicerContext, replica: str) -> NoReturn:
    """End a call as a standby replica: UNAVAILABLE, the standby mark in the trailing metadata. Raises."""
    context.set_trailing_metadata(((STANDBY_KEY, STANDBY_VALUE),))
    context.abort(grpc.StatusCode.UNAVAILABLE, STANDBY_DETAIL.format(replica=replica))
    raise AssertionError("context.abort returned")  # grpc's abort always raises


def is_standby(exc: BaseException) -> bool:
    """Whether a failed call was answered by a standby replica (abort_standby)."""
    if not isinstance(exc, grpc.Call) or exc.code() is not grpc.StatusCode.UNAVAILABLE:
        return False
    return any(k == STANDBY_KEY and v == STANDBY_VALUE for k, v in exc.trailing_metadata() or ())


def fails_over(exc: BaseException) -> bool:
    """Whether a failed call should move its caller to the next endpoint.

    UNAVAILABLE (nothing listens there, the link is down, or a standby answered)
    and DEADLINE_EXCEEDED (a host that no longer answers at all) do; every other
    status is the active server's answer and does not.
    """
    if not isinstance(exc, grpc.RpcError):
        return False
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNAVAILABLE
    return code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def unreachable(tried: Sequence[str]) -> UnreachableError:
    """The error for a call that no endpoint answered, naming every endpoint tried, in order."""
    return UnreachableError(UNREACHABLE_ALL.format(tried=", ".join(tried)))


class Endpoints:
    """The server's endpoints in the kit's order and the one in use now; thread-safe.

    Raises ConfigError when given no endpoint.
    """

    def __init__(self, endpoints: Sequence[ServerEndpoint]) -> None:
        if not endpoints:
            raise ConfigError("no server endpoint to connect to")
        self._all = tuple(endpoints)
        self._index = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._all)

    @property
    def all(self) -> tuple[ServerEndpoint, ...]:
        return self._all

    @property
    def index(self) -> int:
        with self._lock:
            return self._index

    @property
    def current(self) -> ServerEndpoint:
        with self._lock:
            return self._all[self._index]

    def advance(self, seen: int) -> ServerEndpoint:
        """Move to the endpoint after index seen (the one the caller found failing); return the one in use.

        Another thread that moved on already is not moved again: only the caller that
        saw the endpoint in use fail moves past it.
        """
        with self._lock:
            if self._index == seen:
                self._index = (seen + 1) % len(self._all)
            return self._all[self._index]
