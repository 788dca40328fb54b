"""The test suite's fault proxy: forwards, throttles, delays, resets and blackholes, on 127.0.0.1 only."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.faultproxy import CHUNK, FaultProxy


@pytest.fixture
def echo_port() -> Iterator[int]:
    """An echo server on 127.0.0.1 (one thread per connection), stopped after the test."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(0.1)
            while not stop.is_set():
                try:
                    data = conn.recv(CHUNK)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                try:
                    conn.sendall(data)
                except OSError:  # the proxy reset this connection
                    return

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            t = threading.Thread(target=serve, args=(conn,), daemon=True)
            threads.append(t)
            t.start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    yield listener.getsockname()[1]
    stop.set()
    acceptor.join(5)
    for t in threads:
        t.join(5)
    listener.close()


@pytest.fixture
def proxy(echo_port: int) -> Iterator[FaultProxy]:
    with FaultProxy(echo_port) as p:
        yield p


def _connect(proxy: FaultProxy) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    return s


def _echo(s: socket.socket, data: bytes) -> bytes:
    s.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = s.recv(CHUNK)
        if not chunk:
            break
        got += chunk
    return got


def test_binds_loopback_only(proxy: FaultProxy) -> None:
    assert proxy._listener.getsockname()[0] == "127.0.0.1"


def test_passes_bytes_through(proxy: FaultProxy) -> None:
    data = bytes(range(256)) * 1000
    with _connect(proxy) as s:
        assert _echo(s, data) == data
    assert proxy.accepted == 1


def test_throttle_holds_bytes_back(proxy: FaultProxy) -> None:
    proxy.throttle(100_000)
    data = b"x" * 200_000  # up, then down again: at least 2 s at 100 kB/s each way, on any machine
    with _connect(proxy) as s:
        start = time.monotonic()
        assert _echo(s, data) == data
        assert time.monotonic() - start >= 1.5


def test_delay_adds_latency(proxy: FaultProxy) -> None:
    proxy.delay(0.3)
    with _connect(proxy) as s:
        start = time.monotonic()
        assert _echo(s, b"ping") == b"ping"
        assert time.monotonic() - start >= 0.6  # once each way


def test_reset_all_sends_rst(proxy: FaultProxy) -> None:
    with _connect(proxy) as s:
        assert _echo(s, b"a") == b"a"
        assert proxy.reset_all() == 1
        with pytest.raises(ConnectionResetError):
            for _ in range(100):  # the RST arrives; a send or a recv then fails with it
                s.sendall(b"b")
                if not s.recv(CHUNK):
                    break
                time.sleep(0.05)
    assert proxy.resets == 1


def test_reset_after_bytes_hits_the_next_connections_only(proxy: FaultProxy) -> None:
    proxy.reset_after(100_000, "up", count=1)
    with _connect(proxy) as s, pytest.raises((ConnectionResetError, BrokenPipeError)):
        _echo(s, b"y" * 300_000)
        s.sendall(b"z")
    assert proxy.resets == 1
    with _connect(proxy) as s:  # the budget is spent: the next connection passes
        assert _echo(s, b"y" * 300_000) == b"y" * 300_000
    assert proxy.resets == 1


def test_flaky_resets_some_chunks(proxy: FaultProxy) -> None:
    proxy.flaky(1.0)
    with _connect(proxy) as s, pytest.raises(ConnectionResetError):
        _echo(s, b"q")
        s.recv(1)
    proxy.pass_through()
    with _connect(proxy) as s:
        assert _echo(s, b"q") == b"q"


def test_blackhole_holds_everything_until_lifted(proxy: FaultProxy) -> None:
    proxy.blackhole()
    with _connect(proxy) as s:
        s.sendall(b"hello")
        s.settimeout(0.5)
        with pytest.raises(TimeoutError):
            s.recv(CHUNK)
        proxy.blackhole(False)
        s.settimeout(10)
        assert s.recv(CHUNK) == b"hello"


def test_select_limits_faults_to_chosen_connections(proxy: FaultProxy) -> None:
    with _connect(proxy) as a, _connect(proxy) as b:
        chosen = a.getsockname()[1]
        proxy.select(lambda port: port == chosen)
        proxy.blackhole()
        assert _echo(b, b"free") == b"free"
        a.sendall(b"held")
        a.settimeout(0.5)
        with pytest.raises(TimeoutError):
            a.recv(CHUNK)


def test_stop_closes_every_connection(echo_port: int) -> None:
    proxy = FaultProxy(echo_port).start()
    s = _connect(proxy)
    assert _echo(s, b"a") == b"a"
    proxy.stop()
    s.settimeout(10)
    try:
        assert s.recv(CHUNK) == b""
    except ConnectionResetError:
        pass
    s.close()
    assert proxy.active == 0
