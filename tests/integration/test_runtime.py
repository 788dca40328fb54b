"""The federation runtime with real processes on 127.0.0.1: rounds, faults, abort, failures, bad updates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedsec.api import JobInfo, Session
from fedsec.jobs import FedAvgRecipe
from fedsec.wire import arrays
from tests.integration.harness import Federation, pid_alive, pids_running, set_workflow, wait_until

SCRIPT = Path(__file__).parent / "scripts" / "linear_client.py"
INITIAL = {"w": np.zeros((8, 1), np.float32), "b": np.zeros(1, np.float32)}


def linear_job(tmp: Path, *args: str, rounds: int = 3, min_clients: int = 2, start_timeout: float = 120.0) -> Path:
    recipe = FedAvgRecipe(
        "linear", INITIAL, SCRIPT, rounds, min_clients, script_args=list(args), start_timeout=start_timeout
    )
    return recipe.export(tmp / f"job-{len(list(tmp.glob('job-*')))}")


def round_mse(info: JobInfo) -> list[float]:
    return [r["metrics"]["mse"] for r in info.progress["rounds"]]


def test_three_clients_three_rounds(federation: Federation, tmp_path: Path) -> None:
    federation.start_all()
    with Session(federation.admin_kit) as s:
        job_id = s.submit_job(linear_job(tmp_path, rounds=3, min_clients=3))
        seen: list[int] = []
        info = s.monitor_job(job_id, lambda i: seen.append(i.current_round), timeout=90, poll=0.2)
        assert info.status == "finished:completed", info.reason
        mse = round_mse(info)
        assert len(mse) == 3 and mse[0] > mse[1] > mse[2]
        assert info.progress["final"]["metrics"]["mse"] < 0.01
        assert all(r["sites"] == ["site-1", "site-2", "site-3"] for r in info.progress["rounds"])
        assert seen == sorted(seen)
        assert [j.job_id for j in s.list_jobs()] == [job_id]
        result = s.download_job_result(job_id)
    assert result == federation.admin_kit / "transfer" / job_id
    final = arrays.read_file(result / "global_model.fsa")
    assert np.allclose(final["w"].ravel(), np.arange(1, 9), atol=0.05)
    # the job's processes are gone on every site
    wait_until(lambda: not any(federation.job_pids(f"site-{i}") for i in (1, 2, 3)), 10, "job processes to end")


def test_parent_processes_never_import_torch(federation: Federation, tmp_path: Path) -> None:
    federation.start_all()
    for name in ("server1", "site-1"):
        maps = Path(f"/proc/{federation.procs[name].pid}/maps").read_text()
        assert "libtorch" not in maps and "/torch/" not in maps


# Native libraries an idle parent must not have loaded (a parent's idle memory is what it imported): the ML
# framework, HE and MLflow's stack everywhere; numpy, SQLite, uuid, the X.509 code and libyaml in a site, which
# needs them only for a job (its kit is checked at start in a child of its own: fedsec.launch).
IDLE_NEVER = {
    "server1": ("/torch/", "/numpy/", "/tenseal/", "/pandas/", "/sqlalchemy/"),
    "site-1": (
        "/torch/", "/numpy/", "/tenseal/", "/pandas/", "/sqlalchemy/", "/_uuid.", "/_sqlite3.", "/cryptography/",
        "/_yaml.",
    ),
}  # fmt: skip


@pytest.mark.federation(n_clients=1)
def test_idle_parents_have_not_loaded_what_only_jobs_need(federation: Federation) -> None:
    federation.start_all()
    for name, never in IDLE_NEVER.items():
        maps = Path(f"/proc/{federation.procs[name].pid}/maps").read_text()
        assert [lib for lib in never if lib in maps] == [], name


@pytest.mark.federation(n_clients=3, heartbeat_timeout=3.0)
def test_killed_client_round_completes_and_client_rejoins(federation: Federation, tmp_path: Path) -> None:
    federation.start_all()
    with Session(federation.admin_kit) as s:
        job_id = s.submit_job(linear_job(tmp_path, "--sleep", "2", rounds=4, min_clients=2))
        wait_until(lambda: federation.job_pids("site-3"), 30, "site-3's training process")
        federation.kill("site-3")  # mid-round: every site sleeps 2 s before sending
        wait_until(lambda: not federation.job_pids("site-3"), 10, "site-3's orphaned job to die with its parent")
        wait_until(lambda: s.get_job_meta(job_id).current_round >= 1, 60, "round 0 to complete without site-3")
        mark = len(federation.log("server1"))
        federation.start("site-3")
        federation.wait_registered(["site-3"], since=mark)
        info = s.wait_for_job(job_id, timeout=120)
    assert info.status == "finished:completed", info.reason
    rounds = info.progress["rounds"]
    assert "site-3" not in rounds[0]["sites"] and len(rounds[0]["sites"]) == 2
    assert any("site-3" in r["sites"] for r in rounds[1:]), rounds


def test_server_killed_mid_job_resumes(federation: Federation, tmp_path: Path) -> None:
    federation.start_all()
    with Session(federation.admin_kit) as s:
        job_id = s.submit_job(linear_job(tmp_path, "--sleep", "1", rounds=5, min_clients=3))
        wait_until(lambda: s.get_job_meta(job_id).current_round >= 2, 60, "two rounds")
    federation.kill("server1")
    workflows = pids_running("fedsec.workflow", str(federation.root))  # this test's, not another run's
    wait_until(lambda: not any(pid_alive(p) for p in workflows), 10, "the workflow process to die with the server")
    federation.start("server1")
    with Session(federation.admin_kit) as s:
        info = s.wait_for_job(job_id, timeout=120)
    assert info.status == "finished:completed", info.reason
    assert [r["round"] for r in info.progress["rounds"]] == [0, 1, 2, 3, 4]
    assert "resuming after round" in (federation.kit("server1") / "store/jobs" / job_id / "workflow.log").read_text()


def test_abort_mid_round_leaves_no_process(federation: Federation, tmp_path: Path) -> None:
    federation.start_all()
    with Session(federation.admin_kit) as s:
        job_id = s.submit_job(linear_job(tmp_path, "--sleep", "30", rounds=3))
        wait_until(lambda: all(federation.job_pids(f"site-{i}") for i in (1, 2, 3)), 30, "training processes")
        pids = [p for i in (1, 2, 3) for p in federation.job_pids(f"site-{i}")]
        info = s.abort_job(job_id)
        assert info.status == "finished:aborted"
        wait_until(lambda: not any(pid_alive(p) for p in pids), 5, "job processes to end within 5 s")
        assert not pids_running(job_id)
        assert s.get_job_meta(job_id).status == "finished:aborted"


def test_a_failing_script_fails_the_job_only_below_min_clients(federation: Federation, tmp_path: Path) -> None:
    federation.start_all()
    job = linear_job(tmp_path, "--fail-site", "site-2", "--fail-round", "1", min_clients=3)
    with Session(federation.admin_kit) as s:
        job_id = s.submit_job(set_workflow(job, max_site_restarts=0))
        info = s.wait_for_job(job_id, timeout=60)
    assert info.status == "finished:failed"
    # the site's text is attributed to it, never presented as the job's own error
    assert info.reason.startswith("only 2 of min_clients=3 sites remain: site-2 left: "), info.reason
    assert "deliberate failure on site-2 in round 1" in info.reason
    assert [e["site"] for e in info.progress["sites_left"]] == ["site-2"]


@pytest.mark.parametrize("bad", ["nan", "shape", "extra", "oversize", "meta"])
def test_bad_update_is_rejected_round_goes_on(federation: Federation, tmp_path: Path, bad: str) -> None:
    federation.start_all()
    with Session(federation.admin_kit) as s:
        job_id = s.submit_job(linear_job(tmp_path, "--bad-site", "site-1", "--bad", bad, rounds=2, min_clients=2))
        info = s.wait_for_job(job_id, timeout=90)
    assert info.status == "finished:completed", info.reason
    assert all(r["sites"] == ["site-2", "site-3"] for r in info.progress["rounds"])
    assert all(r["rejected"] == ["site-1"] for r in info.progress["rounds"])
    assert (
        "rejected result of site-1" in (federation.kit("server1") / "store/jobs" / job_id / "workflow.log").read_text()
    )


@pytest.mark.federation(n_clients=1)
def test_min_clients_timeout_fails_with_reason(federation: Federation, tmp_path: Path) -> None:
    federation.start_all()
    with Session(federation.admin_kit) as s:
        job_id = s.submit_job(linear_job(tmp_path, min_clients=2, start_timeout=2.0))
        info = s.wait_for_job(job_id, timeout=300)  # a bound for a hung job, not a speed
    assert info.status == "finished:failed"
    assert "only 1 of min_clients=2 sites connected" in info.reason
