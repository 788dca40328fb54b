"""What a data scientist sees of a job while it runs: refused updates in model terms, and the sites' logs, live."""

from __future__ import annotations

import io
from functools import partial
from pathlib import Path
from typing import TextIO

import numpy as np
import pytest

from fedsec.admin.commands import run_command
from fedsec.api import RoundPrinter, Session
from fedsec.api.session import SERVER_LOG
from fedsec.errors import JobError
from fedsec.jobs import FedAvgRecipe
from fedsec.server.site_logs import RESTART_MARKER
from fedsec.wire import fedsec_pb2
from tests.integration.harness import Federation, Follower, wait_until

SCRIPTS = Path(__file__).parent / "scripts"
INITIAL = {"w": np.zeros((8, 1), np.float32), "b": np.zeros(1, np.float32)}
SHAPE_REFUSAL = "site-1 round 0: update refused: tensor 'w' has shape (9, 1), the model has (8, 1)"


def job(tmp: Path, script: str, *args: str, rounds: int = 1, min_clients: int = 2) -> Path:
    recipe = FedAvgRecipe("logs", INITIAL, SCRIPTS / script, rounds, min_clients, script_args=list(args))
    return recipe.export(tmp / f"job-{len(list(tmp.glob('job-*')))}")


def test_a_refused_update_names_the_tensor_and_both_shapes(federation: Federation, tmp_path: Path) -> None:
    federation.start_all()
    status = io.StringIO()
    with Session(federation.admin_kit) as s:
        job_id = s.submit_job(job(tmp_path, "linear_client.py", "--bad-site", "site-1", "--bad", "shape"))
        info = s.monitor_job(job_id, RoundPrinter(io.StringIO(), status), timeout=120, poll=0.2)
        assert info.status == "finished:completed", info.reason
        assert info.refusals == [SHAPE_REFUSAL]
        assert s.get_job_meta(job_id).progress["refused"] == [
            {"round": 0, "site": "site-1", "reason": "tensor 'w' has shape (9, 1), the model has (8, 1)"}
        ]
        assert s.show_errors(job_id)["refused"] == [SHAPE_REFUSAL]
        shell = io.StringIO()
        assert run_command(s, f"show_errors {job_id}", shell, False) == 0
        site_log = s.get_job_log(job_id, "site-1")
    assert SHAPE_REFUSAL in status.getvalue().splitlines()  # job.py's printer said so as it happened
    assert SHAPE_REFUSAL in shell.getvalue().splitlines()
    assert f"fedsec: {SHAPE_REFUSAL}" in site_log  # the training script was told, in its own log
    assert "bytes" not in SHAPE_REFUSAL


def test_a_running_jobs_site_log_is_read_and_followed_live(federation: Federation, tmp_path: Path) -> None:
    federation.start_all()
    with Session(federation.admin_kit) as s:
        job_id = s.submit_job(job(tmp_path, "log_client.py", "--wait-site", "site-1", min_clients=3))

        text = wait_until(lambda: _log_or_empty(s, job_id, "site-1"), 60, "site-1's log while its script runs")
        assert "site-1: waiting for go" in text
        assert s.get_job_meta(job_id).status == "running"  # seen before the job ended

        def follow(out: TextIO) -> int:
            return run_command(s, f"tail_job_log {job_id} site-1 --follow", out, False)

        follower = Follower(follow)
        follower.wait_line("site-1: waiting for go", 30)
        assert not any("go seen" in line for line in follower.lines)
        (federation.job_work("site-1", job_id) / "go").touch()  # the script writes its next line only now
        follower.wait_line("site-1: go seen, written after the reader started", 60)
        assert follower.join(120) == 0  # following ends with the job
        info = s.get_job_meta(job_id)
        assert info.status == "finished:completed", info.reason
        assert "site-1: done" in follower.lines
        everyone = list(s.tail_job_log(job_id))
    assert {"site-1: site-1: done", "site-2: site-2: done", "site-3: site-3: done"} <= set(everyone)
    assert not any(RESTART_MARKER.decode().strip() in line for line in everyone)


def test_an_aborted_jobs_site_logs_are_kept(federation: Federation, tmp_path: Path) -> None:
    federation.start_all()
    with Session(federation.admin_kit) as s:
        job_id = s.submit_job(job(tmp_path, "linear_client.py", "--sleep", "600", rounds=2))
        wait_until(lambda: all(federation.job_pids(f"site-{i}") for i in (1, 2, 3)), 60, "training processes")
        wait_until(
            lambda: all("round 0 task train" in federation.job_log(f"site-{i}", job_id) for i in (1, 2, 3)),
            60,
            "each script's first line",
        )
        assert s.abort_job(job_id).status == "finished:aborted"
        for site in ("site-1", "site-2", "site-3"):  # the job ended, not normally: each site's log is there
            wait_until(partial(_log_has, s, job_id, site, "round 0 task train mse"), 30, f"{site}'s log")
        folder = s.download_job_log(job_id, tmp_path / "logs")
        with pytest.raises(JobError, match="exists already"):  # nothing is replaced
            s.download_job_log(job_id, tmp_path / "logs")
    assert folder == tmp_path / "logs" / f"{job_id}.logs"
    assert "round 0 task train mse" in (folder / "site-2.log").read_text()
    assert (folder / SERVER_LOG).is_file()


def _log_has(s: Session, job_id: str, site: str, needle: str) -> bool:
    return needle in _log_or_empty(s, job_id, site)


def _log_or_empty(s: Session, job_id: str, site: str) -> str:
    """site's log of the job as the server has it; '' while the site has sent none ("no log from site-N yet")."""
    try:
        return s.get_job_log(job_id, site)
    except JobError as exc:
        assert "no log from" in str(exc)
        return ""


def test_a_log_read_that_says_again_is_audited_unless_an_audited_read_began_it(
    federation: Federation, tmp_path: Path
) -> None:
    federation.start_all()
    with Session(federation.admin_kit) as s:
        job_id = s.submit_job(job(tmp_path, "linear_client.py"))
        info = s.monitor_job(job_id, RoundPrinter(io.StringIO(), io.StringIO()), timeout=120, poll=0.2)
        assert info.status == "finished:completed", info.reason

        def tail_reads() -> int:
            entries = s.show_audit(500)
            return sum(1 for e in entries if e["command"] == "tail_job_log" and e["outcome"] == "allowed")

        before = tail_reads()
        request = fedsec_pb2.LogTailRequest(job_id=job_id, site="site-1", again=True)
        s._call("tail_job_log", s._tail_call(request))  # a first read that claims to follow an earlier one
        s._call("tail_job_log", s._tail_call(request))  # this one does follow it
        assert tail_reads() == before + 1
