"""The site's log shipper against the server's store of site logs, in-process: new lines, lost acks, restarts, ends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from fedsec import limits
from fedsec.server.site_logs import RESTART_MARKER, JobLogs
from fedsec.site.logship import LogShipper
from fedsec.wire import fedsec_pb2
from tests.unit.site.test_transfer import RpcFailure

JOB = "3f2a9c0e-1111-4a4a-9b9b-000000000001"


class FakeServer:
    """AppendJobLog into a JobLogs as the server does; it can fail calls, before or after storing."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir()  # the job's folder on the server
        self.logs = JobLogs(folder)
        self.calls = 0
        self.lose_ack_of: set[int] = set()  # call numbers whose piece is stored but whose answer is lost
        self.refuse = False

    def AppendJobLog(self, chunk: fedsec_pb2.JobLogChunk, timeout: float = 0) -> fedsec_pb2.JobLogAck:
        self.calls += 1
        if self.refuse:
            raise RpcFailure(grpc.StatusCode.FAILED_PRECONDITION, "site-1 never fetched this job")
        done = self.logs.append("site-1", chunk.run, chunk.offset, chunk.data, chunk.last)
        if self.calls in self.lose_ack_of:
            raise RpcFailure(grpc.StatusCode.UNAVAILABLE, "connection reset")
        return fedsec_pb2.JobLogAck(offset=done.offset, full=done.full)

    def text(self) -> str:
        return self.logs.read("site-1", 0, 1 << 20, from_start=True, whole_lines=False).text


@pytest.fixture
def server(tmp_path: Path) -> FakeServer:
    return FakeServer(tmp_path / "server")


def shipper(server: FakeServer) -> LogShipper:
    stub: Any = server
    return LogShipper("site-1", lambda: stub)


def test_new_lines_go_out_while_the_script_runs(tmp_path: Path, server: FakeServer) -> None:
    log = tmp_path / "log.txt"
    log.write_bytes(b"epoch 1\n")
    ship = shipper(server)
    ship.watch(JOB, log)
    ship.ship_once()
    assert server.text() == "epoch 1\n"
    with log.open("ab") as f:
        f.write(b"epoch 2\n")
    ship.ship_once()
    ship.ship_once()  # nothing new: nothing sent twice
    assert server.text() == "epoch 1\nepoch 2\n"


def test_a_lost_answer_never_duplicates_a_line(tmp_path: Path, server: FakeServer) -> None:
    log = tmp_path / "log.txt"
    log.write_bytes(b"one\ntwo\n")
    ship = shipper(server)
    ship.watch(JOB, log)
    server.lose_ack_of = {1}
    ship.ship_once()  # stored, but the site did not hear so
    with log.open("ab") as f:
        f.write(b"three\n")
    ship.ship_once()  # sends from where it knows the server was: the server keeps each byte once
    assert server.text() == "one\ntwo\nthree\n"


def test_the_end_of_the_log_goes_out_when_the_script_ends(tmp_path: Path, server: FakeServer) -> None:
    log = tmp_path / "log.txt"
    log.write_bytes(b"x" * (3 * limits.MAX_LOG_CHUNK_BYTES) + b"\nTraceback: boom")
    ship = shipper(server)
    ship.watch(JOB, log)
    ship.ended(JOB)  # no pass ran: it is all sent now, marked last
    assert server.text().endswith("\nTraceback: boom")
    assert server.logs.read("site-1", 0, 1, from_start=True, whole_lines=True).closed is False
    assert server.logs.read("site-1", len(server.text()), 10, from_start=True, whole_lines=True).closed
    calls = server.calls
    ship.ship_once()
    assert server.calls == calls  # the ended run is forgotten


def test_a_restarted_script_is_a_new_run(tmp_path: Path, server: FakeServer) -> None:
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_bytes(b"run 1\n")
    second.write_bytes(b"run 2\n")
    ship = shipper(server)
    ship.watch(JOB, first)
    ship.ended(JOB)
    ship.watch(JOB, second)
    ship.ship_once()
    assert server.text() == "run 1\n" + RESTART_MARKER.decode() + "run 2\n"


def test_a_refused_log_is_dropped(tmp_path: Path, server: FakeServer) -> None:
    log = tmp_path / "log.txt"
    log.write_bytes(b"line\n")
    ship = shipper(server)
    ship.watch(JOB, log)
    server.refuse = True
    ship.ship_once()
    calls = server.calls
    ship.ship_once()
    ship.ended(JOB)  # refused for good: not tried again and again
    assert server.calls == calls


def test_a_link_down_delays_the_log_only(tmp_path: Path, server: FakeServer) -> None:
    log = tmp_path / "log.txt"
    log.write_bytes(b"line\n")
    ship = shipper(server)
    ship.watch(JOB, log)
    server.lose_ack_of = {1, 2}
    ship.ship_once()
    ship.ship_once()
    ship.ship_once()
    assert server.text() == "line\n"
