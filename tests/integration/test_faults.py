"""Faults that belong to one site or to the workflow process, with real processes on 127.0.0.1.

A site's failure is that site's: the job goes on while min_clients sites
remain, and says which site left and why. A site cannot report on a job it
never fetched. A workflow process that dies or misses its start deadline
tells the admin why, without server paths.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedsec.api import Session
from fedsec.jobs import FedAvgRecipe
from fedsec.kit import load_kit
from fedsec.transport.tls import channel
from fedsec.wire import fedsec_pb2, fedsec_pb2_grpc
from tests.integration.harness import Federation, pids_running, set_workflow, wait_until

SCRIPT = Path(__file__).parent / "scripts" / "linear_client.py"
INITIAL = {"w": np.zeros((8, 1), np.float32), "b": np.zeros(1, np.float32)}


def linear_job(tmp: Path, *args: str, rounds: int = 3, min_clients: int = 2, start_timeout: float = 120.0) -> Path:
    recipe = FedAvgRecipe(
        "faults", INITIAL, SCRIPT, rounds, min_clients, script_args=list(args), start_timeout=start_timeout
    )
    return recipe.export(tmp / f"job-{len(list(tmp.glob('job-*')))}")


def test_a_killed_training_process_leaves_its_site_out_and_the_job_completes(
    federation: Federation, tmp_path: Path
) -> None:
    federation.start_all()
    job = set_workflow(linear_job(tmp_path, "--sleep", "2", rounds=4, min_clients=2), max_site_restarts=0)
    with Session(federation.admin_kit) as s:
        job_id = s.submit_job(job)
        pids = wait_until(lambda: federation.job_pids("site-3"), 30, "site-3's training process")
        out = federation.kit("site-3") / "jobs" / job_id / "log.txt"
        wait_until(lambda: "round 0 task train" in out.read_text(), 30, "site-3 to be in round 0")
        for pid in pids:
            os.kill(pid, signal.SIGKILL)  # the script only: site-3's parent stays up
        info = s.wait_for_job(job_id, timeout=120)
    assert info.status == "finished:completed", info.reason
    left = info.progress["sites_left"]
    assert [e["site"] for e in left] == ["site-3"]
    assert "round 0 task train" in left[0]["reason"]  # its own text: the end of its script's output
    rounds = info.progress["rounds"]
    assert len(rounds) == 4
    assert rounds[-1]["sites"] == ["site-1", "site-2"]
    assert federation.procs["site-3"].poll() is None  # the site itself is fine
    wait_until(lambda: not federation.job_pids("site-3"), 10, "site-3 to stop the job it left")


@pytest.mark.federation(n_clients=3)
def test_a_site_cannot_fail_a_job_it_never_fetched(federation: Federation, tmp_path: Path) -> None:
    federation.start("server1")
    for site in ("site-1", "site-2"):  # site-3 is assigned the job (every site is) but never connects
        federation.start(site)
    federation.wait_registered(["site-1", "site-2"])
    with Session(federation.admin_kit) as s:
        job_id = s.submit_job(linear_job(tmp_path, "--sleep", "1", rounds=2, min_clients=2))
        wait_until(lambda: federation.job_pids("site-1") and federation.job_pids("site-2"), 30, "the scripts")
        port = load_kit(federation.kit("server1")).config.fl_port  # type: ignore[union-attr]
        with channel(load_kit(federation.kit("site-3")), "localhost", port, "server1") as ch:
            report = fedsec_pb2.JobReport(
                job_id=job_id, outcome=fedsec_pb2.JOB_OUTCOME_FAILED, error="forged: the job is broken"
            )
            with pytest.raises(grpc.RpcError) as err:
                fedsec_pb2_grpc.FederationStub(ch).ReportJob(report, timeout=10)
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert err.value.details() == f"job {job_id}: site-3 never fetched this job, so it cannot report on it"
        info = s.wait_for_job(job_id, timeout=90)
    assert info.status == "finished:completed", info.reason
    assert "forged" not in info.reason and "sites_left" not in info.progress
    assert federation.log("server1").count("site=site-3 reported on a job it never fetched") == 1


@pytest.mark.federation(n_clients=2)
def test_a_workflow_that_misses_its_start_deadline_says_so(federation: Federation, tmp_path: Path) -> None:
    federation.start_all()
    with Session(federation.admin_kit) as s:
        # no process opens its socket within a millisecond of its start
        job_id = s.submit_job(set_workflow(linear_job(tmp_path), ready_timeout=0.001))
        info = s.wait_for_job(job_id, timeout=60)
    assert info.status == "finished:failed"
    assert info.reason.startswith(
        "the workflow process was not ready within 0.001 s (workflow.ready_timeout) and was stopped"
    ), info.reason
    assert str(federation.root) not in info.reason


@pytest.mark.federation(n_clients=2)
def test_a_workflow_killed_mid_job_gives_the_admin_its_cause_without_paths(
    federation: Federation, tmp_path: Path
) -> None:
    federation.start_all()
    with Session(federation.admin_kit) as s:
        job_id = s.submit_job(linear_job(tmp_path, "--sleep", "1", rounds=20))
        wait_until(lambda: s.get_job_meta(job_id).current_round >= 1, 60, "a round")
        workflows = pids_running(f"--job-id {job_id}")
        assert len(workflows) == 1
        os.kill(workflows[0], signal.SIGKILL)
        info = s.wait_for_job(job_id, timeout=60)
    assert info.status == "finished:failed"
    assert info.reason.startswith("the workflow process was killed by SIGKILL before it wrote its result; its last")
    assert str(federation.root) not in info.reason and "/tmp/" not in info.reason, info.reason
