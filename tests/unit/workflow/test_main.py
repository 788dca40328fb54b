"""python -m fedsec.workflow: a workflow that cannot start reports its failure to the parent over its socket,
with a reason that names no server path, and writes no result file."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from fedsec.transport.local import unix_channel
from fedsec.wire import fedsec_pb2, fedsec_pb2_grpc
from fedsec.workflow.__main__ import main
from tests.integration.harness import wait_until


def test_failed_start_is_reported_over_the_socket_without_a_kit_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kit = tmp_path / "server1"
    job_dir = kit / "store" / "jobs" / "0123456789abcdef"
    (job_dir / "job").mkdir(parents=True)
    (job_dir / "job" / "meta.yml").write_text("format: fedsec-job/1\nname: x\nmin_clients: 1\n")  # no app/config.yml
    monkeypatch.setattr(logging.getLogger(), "handlers", list(logging.getLogger().handlers))
    sock = tmp_path / "wf.sock"
    argv = ["--job-dir", str(job_dir), "--job-id", "0123456789abcdef", "--socket", str(sock)]
    reports: list[fedsec_pb2.StateReport] = []

    def parent() -> None:  # start it, pull its reports, acknowledge them
        wait_until(sock.exists, 60, "the workflow's socket")
        with unix_channel(sock) as channel:
            stub = fedsec_pb2_grpc.WorkflowStub(channel)
            stub.StartState(fedsec_pb2.JobStart(), timeout=10)
            reports.extend(stub.PullState(fedsec_pb2.StatePull(acked=0, wait_seconds=10), timeout=30).reports)
            stub.PullState(fedsec_pb2.StatePull(acked=reports[-1].seq, wait_seconds=0), timeout=30)

    thread = threading.Thread(target=parent, daemon=True)
    thread.start()
    assert main([*argv, "--tracking-dir", str(kit / "tracking")]) == 0  # it ends once the parent recorded it
    thread.join(60)
    (report,) = reports
    assert report.seq == 1 and report.WhichOneof("what") == "outcome"
    outcome = report.outcome
    assert not outcome.completed and not outcome.HasField("kept")
    assert "app/config.yml" in outcome.reason
    assert str(kit) not in outcome.reason and str(tmp_path) not in outcome.reason, outcome.reason
    assert not (job_dir / "workspace" / "result.json").exists()
