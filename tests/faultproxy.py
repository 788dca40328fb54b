"""A TCP fault proxy for tests: between sites and the server's fl port, on 127.0.0.1 only.

The proxy forwards bytes both ways and, switchable at run time from the test,
adds latency, throttles, resets connections (SO_LINGER 0, so the peers see an
RST) or blackholes them (accepts and sends nothing). It never binds anything
but 127.0.0.1, holds at most max_connections connections (two threads each,
reading at most CHUNK bytes at a time, so it never buffers more than a chunk
per direction) and stops every thread in stop().

Directions: "up" is from the connecting side (a site) to the target (the
server), "down" the other way.

    with FaultProxy(server_port) as proxy:
        proxy.throttle(1_000_000)              # bytes per second, each direction of each connection
        proxy.reset_after(1 << 20, "down", 3)  # the next 3 connections to pass 1 MiB down are reset there
        proxy.reset_all()                      # every current connection, now
        proxy.flaky(0.05, seed=7)              # each forwarded chunk resets its connection with probability 0.05
        proxy.pass_through()                   # no faults
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

HOST = "127.0.0.1"
CHUNK = 64 * 1024
_POLL = 0.1  # how often a blocked thread looks at the stop flag and the rules


@dataclass
class _Rules:
    latency: float = 0.0  # seconds added before each chunk is forwarded
    rate: float = 0.0  # bytes per second per direction of a connection; 0: unlimited
    blackhole: bool = False  # forward nothing (new connections are accepted and get nothing)
    flaky: float = 0.0  # probability that a forwarded chunk resets its connection
    reset_bytes: int = 0  # reset a connection once it has carried this many bytes in reset_direction
    reset_direction: str = "down"
    reset_budget: int = 0  # how many connections reset_bytes may still reset
    select: Callable[[int], bool] | None = None  # which connections (by the connecting side's port) the rules hit


@dataclass
class _Conn:
    client: socket.socket
    upstream: socket.socket
    peer_port: int
    selected: bool
    carried: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})
    closed: bool = False


class FaultProxy:
    """A TCP proxy on 127.0.0.1 (a free port) to 127.0.0.1:target_port, with faults set at run time."""

    def __init__(self, target_port: int, max_connections: int = 64) -> None:
        self.target_port = target_port
        self.max_connections = max_connections
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((HOST, 0))
        self._listener.listen(64)
        self._listener.settimeout(_POLL)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._rules = _Rules()
        self._rng = random.Random(0)
        self._conns: list[_Conn] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self.accepted = 0  # connections accepted so far
        self.accepted_selected = 0  # of which the faults applied to (select)
        self.resets = 0  # connections reset so far
        self._acceptor = threading.Thread(target=self._accept_loop, name="faultproxy-accept", daemon=True)

    # ------------------------------------------------------------ control

    def start(self) -> FaultProxy:
        self._acceptor.start()
        return self

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Close the listener and every connection; join every thread."""
        self._stop.set()
        if self._acceptor.is_alive():
            self._acceptor.join(5)
        self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            self._close(conn, reset=False)
        for thread in list(self._threads):
            thread.join(5)

    def pass_through(self) -> None:
        """Forward everything at full speed from now on (every fault off)."""
        with self._lock:
            self._rules = _Rules()

    def select(self, which: Callable[[int], bool] | None) -> None:
        """Apply the faults only to connections whose connecting side's port satisfies which (None: all)."""
        with self._lock:
            self._rules.select = which
            for conn in self._conns:
                conn.selected = which is None or which(conn.peer_port)

    def delay(self, seconds: float) -> None:
        """Add seconds before each forwarded chunk."""
        with self._lock:
            self._rules.latency = seconds

    def throttle(self, bytes_per_second: float) -> None:
        """At most bytes_per_second each way on each connection (0: unlimited)."""
        with self._lock:
            self._rules.rate = bytes_per_second

    def blackhole(self, on: bool = True) -> None:
        """Forward nothing (and send nothing to new connections) while on; held bytes flow once it is off."""
        with self._lock:
            self._rules.blackhole = on

    def flaky(self, fraction: float, seed: int = 0) -> None:
        """From now on each forwarded chunk resets its connection with probability fraction."""
        with self._lock:
            self._rules.flaky = fraction
            self._rng = random.Random(seed)

    def reset_after(self, n_bytes: int, direction: str = "down", count: int = 1) -> None:
        """The next count connections to carry n_bytes in direction ("up" or "down") are reset there.

        Bytes count from each connection's start (including those already carried).
        """
        if direction not in ("up", "down"):
            raise ValueError(f"direction must be up or down, got {direction!r}")
        with self._lock:
            self._rules.reset_bytes = n_bytes
            self._rules.reset_direction = direction
            self._rules.reset_budget = count

    def reset_all(self) -> int:
        """Reset every current (selected) connection now; return how many."""
        with self._lock:
            conns = [c for c in self._conns if c.selected and not c.closed]
        for conn in conns:
            self._close(conn, reset=True)
        return len(conns)

    @property
    def active(self) -> int:
        with self._lock:
            return sum(not c.closed for c in self._conns)

    # ------------------------------------------------------------ forwarding

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, (_, peer_port) = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                full = sum(not c.closed for c in self._conns) >= self.max_connections
                self._conns = [c for c in self._conns if not c.closed]
                self._threads = [t for t in self._threads if t.is_alive()]
            if full:
                client.close()
                continue
            try:
                upstream = socket.create_connection((HOST, self.target_port), timeout=5)
            except OSError:
                _reset_socket(client)
                continue
            for s in (client, upstream):
                s.settimeout(_POLL)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                which = self._rules.select
                conn = _Conn(client, upstream, peer_port, which is None or which(peer_port))
                self._conns.append(conn)
                self.accepted += 1
                self.accepted_selected += conn.selected
                pumps = [
                    threading.Thread(target=self._pump, args=(conn, "up"), daemon=True, name="faultproxy-up"),
                    threading.Thread(target=self._pump, args=(conn, "down"), daemon=True, name="faultproxy-down"),
                ]
                self._threads += pumps
            for pump in pumps:
                pump.start()

    def _pump(self, conn: _Conn, direction: str) -> None:
        src, dst = (conn.client, conn.upstream) if direction == "up" else (conn.upstream, conn.client)
        sent_at = time.monotonic()  # when the throttle allows the next byte out
        while not self._stop.is_set() and not conn.closed:
            if self._rules_for(conn).blackhole:
                time.sleep(_POLL)
                continue
            try:
                data = src.recv(CHUNK)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            while self._rules_for(conn).blackhole and not self._stop.is_set():  # it came on during the recv
                time.sleep(_POLL)
            rules = self._rules_for(conn)
            if self._fault(conn, direction, len(data)):
                self._close(conn, reset=True)
                return
            if rules.latency:
                time.sleep(rules.latency)
            if rules.rate:
                sent_at = max(sent_at, time.monotonic()) + len(data) / rules.rate
                time.sleep(max(0.0, sent_at - time.monotonic()))
            try:
                dst.sendall(data)
            except OSError:
                break
        self._close(conn, reset=False)

    def _rules_for(self, conn: _Conn) -> _Rules:
        with self._lock:
            return self._rules if conn.selected else _Rules()

    def _fault(self, conn: _Conn, direction: str, size: int) -> bool:
        """Count size bytes on conn; whether a reset rule ends it here."""
        with self._lock:
            conn.carried[direction] += size
            if not conn.selected:
                return False
            rules = self._rules
            if (
                rules.reset_budget > 0
                and direction == rules.reset_direction
                and conn.carried[direction] >= rules.reset_bytes
            ):
                rules.reset_budget -= 1
                return True
            return rules.flaky > 0 and self._rng.random() < rules.flaky

    def _close(self, conn: _Conn, reset: bool) -> None:
        with self._lock:
            if conn.closed:
                return
            conn.closed = True
            if reset:
                self.resets += 1
        for s in (conn.client, conn.upstream):
            if reset:
                _reset_socket(s)
            else:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()


def _reset_socket(s: socket.socket) -> None:
    """Close s so that its peer gets an RST, not a FIN."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    s.close()
