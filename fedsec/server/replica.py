"""Replicas of the server: who holds the server lease, renewing it, and the standby's answer.

Several server processes may share one PostgreSQL store (and one store folder).
The one holding the lease (fedsec.state: holder, fencing token, deadline) is
active and serves as a server of one always did; it renews the lease every
ttl/3 and steps down (stops serving, stops its job processes) when the store
refuses a renewal or has not answered one by ttl/3 before the lease would
lapse: that last third is the time it has to stop its job processes before
another replica may take the lease and start them again. The others are standby: they listen on
their ports but answer every call with the standby status
(fedsec.transport.failover.abort_standby: UNAVAILABLE, "try the next
endpoint"), and try the lease every ttl/3 until it lapses and they take it.

Replica owns the lease of this process; StandbyHandler is the standby's gRPC
handler. A replica's name (its lease holder) is "<server>@<host>:<admin port>":
the same replica started again takes its own lease back at once instead of
waiting for it to lapse.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable

import grpc

from fedsec.errors import LeaseLostError, StoreUnavailableError
from fedsec.state.interface import StateStore
from fedsec.state.records import Lease
from fedsec.transport.failover import abort_standby

log = logging.getLogger(__name__)

_RETRY_FLOOR_SECONDS = 0.2  # between tries of a renewal the store did not answer


def replica_name(server: str, admin_port: int) -> str:
    """This process's lease holder name: the server, this host and its admin port."""
    return f"{server}@{socket.gethostname()}:{admin_port}"


class Replica:
    """The server lease as held by this process; thread-safe.

    wait_active() blocks until the lease is ours; keep() then renews it in a thread
    and calls on_lost once when it is gone. clock: monotonic seconds, for the local
    deadline (the store's own clock stamps the lease's).
    """

    def __init__(
        self, state: StateStore, name: str, ttl: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.state = state
        self.name = name
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._lease: Lease | None = None
        # clock() time by which the lease must be renewed: a third of the ttl before it lapses (counted from
        # before the call that took or renewed it), which leaves that third to stop the job processes before
        # another replica may take the lease and start them again
        self._local_deadline = 0.0
        self._renewer: threading.Thread | None = None
        self._stop_renewing = threading.Event()

    @property
    def interval(self) -> float:
        """Seconds between renewals, and between a standby's tries."""
        return self.ttl / 3

    def lease(self) -> Lease | None:
        """The lease while this process holds it (the fence for its writes), else None."""
        with self._lock:
            return self._lease

    def try_acquire(self) -> Lease | None:
        """One try at the lease; None while another replica holds it or the store does not answer."""
        started = self._clock()
        try:
            lease = self.state.acquire_lease(self.name, self.ttl)
        except StoreUnavailableError as exc:
            log.warning("replica=%s cannot reach the store to try the lease: %s", self.name, exc)
            return None
        if lease is not None:
            with self._lock:
                self._lease = lease
                self._local_deadline = started + self.ttl - self.interval
        return lease

    def wait_active(self, stop: threading.Event) -> bool:
        """Try the lease every interval until this process holds it (True) or stop is set (False)."""
        announced = ""
        while not stop.is_set():
            if self.try_acquire() is not None:
                return True
            holder = self.active_holder()
            if holder != announced:
                log.info("replica=%s standby: the active replica is %s", self.name, holder or "(none)")
                announced = holder
            stop.wait(self.interval)
        return False

    def active_holder(self) -> str:
        """The lease holder as the store says now ("" when nobody holds it or the store does not answer)."""
        try:
            lease = self.state.get_lease()
        except StoreUnavailableError:
            return ""
        return lease.holder if lease is not None else ""

    def keep(self, on_lost: Callable[[str], None]) -> None:
        """Renew the lease every interval in a thread; on_lost(why) once when it cannot be kept."""
        self._stop_renewing.clear()
        self._renewer = threading.Thread(target=self._renew_loop, args=(on_lost,), name="lease", daemon=True)
        self._renewer.start()

    def _renew_loop(self, on_lost: Callable[[str], None]) -> None:
        next_at = self._clock() + self.interval
        while not self._stop_renewing.wait(max(0.0, next_at - self._clock())):
            with self._lock:
                lease, deadline = self._lease, self._local_deadline
            if lease is None:
                return
            started = self._clock()
            if started >= deadline:
                self._lost(f"the lease could not be renewed in time (token {lease.fencing_token})", on_lost)
                return
            try:
                renewed = self.state.renew_lease(lease, self.ttl)
            except LeaseLostError as exc:
                self._lost(str(exc), on_lost)
                return
            except StoreUnavailableError as exc:
                log.warning("replica=%s cannot renew the lease (%.1f s left): %s", self.name, deadline - started, exc)
                next_at = min(deadline, self._clock() + max(_RETRY_FLOOR_SECONDS, self.interval / 4))
                continue
            with self._lock:
                if self._lease is not None:
                    self._lease, self._local_deadline = renewed, started + self.ttl - self.interval
            next_at = started + self.interval

    def _lost(self, why: str, on_lost: Callable[[str], None]) -> None:
        with self._lock:
            self._lease = None
        log.error("replica=%s lost the server lease, stepping down: %s", self.name, why)
        on_lost(why)

    def step_down(self) -> None:
        """Stop renewing (the lease is already lost, or is being given up)."""
        self._stop_renewing.set()
        if self._renewer is not None and self._renewer is not threading.current_thread():
            self._renewer.join()
        self._renewer = None

    def release(self) -> None:
        """Stop renewing and free the lease, so a standby takes it at once (a clean stop)."""
        self.step_down()
        with self._lock:
            lease, self._lease = self._lease, None
        if lease is None:
            return
        try:
            self.state.release_lease(lease)
            log.info("replica=%s released the server lease", self.name)
        except StoreUnavailableError as exc:
            log.warning("replica=%s cannot release the lease (it lapses by itself): %s", self.name, exc)

    def status(self) -> dict[str, object]:
        """What check_status server shows: this replica, the lease holder and how long it has held it."""
        try:
            lease = self.state.get_lease()
            now = self.state.lease_clock()  # the clock that stamped it, not this replica's
        except StoreUnavailableError:
            lease, now = None, 0.0
        return {
            "replica": self.name,
            "active_replica": lease.holder if lease is not None else "",
            "lease_held_for": round(now - lease.acquired, 1) if lease is not None else None,
            "lease_expires_in": round(lease.deadline - now, 1) if lease is not None else None,
            "fencing_token": lease.fencing_token if lease is not None else None,
        }


class StandbyHandler(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Answers every method with the standby status (a standby's gRPC servers have only this handler)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        def refuse(request_iterator: object, context: grpc.ServicerContext) -> object:
            abort_standby(context, self._name)

        return grpc.stream_stream_rpc_method_handler(refuse)
