"""What a job leaves behind when it does not complete: its last completed global model, and its late events."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
from mlflow.tracking import MlflowClient

from fedsec.api import JobInfo, Session
from fedsec.jobs import FedAvgRecipe
from fedsec.site.spool import EventSpool
from fedsec.tracking.events import Event, EventKind
from fedsec.tracking.receivers import embedded_mlflow_uri
from fedsec.wire import arrays
from tests.integration.harness import Federation, wait_until

LINEAR = Path(__file__).parent / "scripts" / "linear_client.py"
REPLAY = Path(__file__).parent / "scripts" / "replay_client.py"
INITIAL = {"w": np.zeros((8, 1), np.float32), "b": np.zeros(1, np.float32)}


def slow_job(tmp: Path, rounds: int = 20) -> Path:
    """A job whose rounds take a few seconds each (every site waits before it sends)."""
    recipe = FedAvgRecipe("linear", INITIAL, LINEAR, rounds, 3, script_args=["--sleep", "2"])
    return recipe.export(tmp / "job")


def workflow_pids(job_id: str) -> list[int]:
    """Pids of the workflow process of job_id (from /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0") if entry.name.isdigit() else []
        except OSError:
            continue
        if b"fedsec.workflow" in argv and job_id.encode() in argv:
            pids.append(int(entry.name))
    return pids


def assert_result_is_last_checkpoint(federation: Federation, info: JobInfo, result: Path) -> int:
    """The downloaded model is the checkpoint of the last completed round, and the job says which; that count."""
    completed = len(info.progress["rounds"])
    assert completed >= 2
    entry = {"model": "global_model.fsa", "round": completed - 1, "completed_rounds": completed}
    assert info.progress["result"] == entry
    assert json.loads((result / "job.json").read_text())["result"] == entry
    assert json.loads((result / "progress.json").read_text()) == info.progress  # the same progress, from the state
    checkpoint = federation.kit("server1") / "store/jobs" / info.job_id / "workspace/checkpoints"
    model = (result / "global_model.fsa").read_bytes()
    assert model == (checkpoint / f"round_{completed - 1:05d}.fsa").read_bytes()
    assert not np.allclose(arrays.read_file(result / "global_model.fsa")["w"], 0)  # trained, not the initial
    return completed


def test_an_aborted_job_keeps_its_last_completed_round_as_its_result(federation: Federation, tmp_path: Path) -> None:
    federation.start_all()
    with Session(federation.admin_kit) as s:
        job_id = s.submit_job(slow_job(tmp_path))
        wait_until(lambda: s.get_job_meta(job_id).current_round >= 2, 120, "two completed rounds")
        assert s.abort_job(job_id).status == "finished:aborted"
        info = s.get_job_meta(job_id)
        result = s.download_job_result(job_id, tmp_path / "download")
    assert info.status == "finished:aborted"
    assert assert_result_is_last_checkpoint(federation, info, result) < 20
    assert (
        "keeps the global model of round"
        in (federation.kit("server1") / "store/jobs" / job_id / "workflow.log").read_text()
    )


def test_a_killed_workflow_leaves_its_newest_checkpoint_as_the_result(federation: Federation, tmp_path: Path) -> None:
    federation.start_all()
    with Session(federation.admin_kit) as s:
        job_id = s.submit_job(slow_job(tmp_path))
        wait_until(lambda: s.get_job_meta(job_id).current_round >= 2, 120, "two completed rounds")
        for pid in workflow_pids(job_id):
            os.kill(pid, signal.SIGKILL)  # no chance to keep anything itself
        info = s.wait_for_job(job_id, timeout=60)
        result = s.download_job_result(job_id, tmp_path / "download")
    assert info.status == "finished:failed"
    assert "killed by SIGKILL" in info.reason
    assert_result_is_last_checkpoint(federation, info, result)
    assert "keeps the global model of round" in federation.log("server1")


def test_events_left_in_a_site_spool_reach_mlflow_when_it_returns_after_the_job(
    federation: Federation, tmp_path: Path
) -> None:
    federation.start_all()
    with Session(federation.admin_kit) as s:
        recipe = FedAvgRecipe("linear", INITIAL, LINEAR, 1, 3)
        job_id = s.submit_job(recipe.export(tmp_path / "job"))
        assert s.wait_for_job(job_id, timeout=120).status == "finished:completed"
    federation.kill("site-1")  # killed before it forwarded these: they are safe in its spool
    writer = "d" * 32
    late = [Event(writer, i, EventKind.SCALAR, "late/loss", i, time.time(), 0.5 * i) for i in range(3)]
    EventSpool(federation.kit("site-1") / "tracking").append(job_id, late)
    federation.start("site-1")
    workflow_log = federation.kit("server1") / "store/jobs" / job_id / "workflow.log"
    wait_until(lambda: "late events of site=site-1 written" in workflow_log.read_text(), 180, "the late events written")
    client = MlflowClient(tracking_uri=embedded_mlflow_uri(federation.kit("server1") / "tracking"))
    experiment = client.get_experiment_by_name("linear")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], "tags.`fedsec.site` = 'site-1'")
    assert len(runs) == 1
    history = client.get_metric_history(runs[0].info.run_id, "late/loss")
    assert sorted((m.step, m.value) for m in history) == [(0, 0.0), (1, 0.5), (2, 1.0)]
    assert "dropping them" not in federation.log("site-1")


def spool_forwarded(kit: Path, job_id: str, *, gone_too: bool = False) -> bool:
    """Whether the server acknowledged all of a site's spool of job_id (gone_too: or the site removed it)."""
    folder = kit / "tracking" / job_id
    if gone_too and not folder.exists():
        return True
    try:
        return int((folder / "cursor").read_text() or 0) == (folder / "events.jsonl").stat().st_size
    except (OSError, ValueError):
        return False


def test_a_round_replayed_after_a_server_kill_logs_each_step_once(federation: Federation, tmp_path: Path) -> None:
    federation.start_all()
    federation.wait_log("server1", "the embedded MLflow store is ready", 120)  # points reach it from round 0 on
    sites = [f"site-{i}" for i in (1, 2, 3)]
    recipe = FedAvgRecipe("replay", INITIAL, REPLAY, 4, 3, script_args=["--sleep", "10", "--slow-site", "site-3"])
    with Session(federation.admin_kit) as s:
        job_id = s.submit_job(recipe.export(tmp_path / "job"))
        workflow_log = federation.kit("server1") / "store/jobs" / job_id / "workflow.log"
        opened = "backend local: MLflow"
        wait_until(lambda: workflow_log.exists() and opened in workflow_log.read_text(), 120, "the job's tracking open")
        wait_until(lambda: s.get_job_meta(job_id).current_round >= 2, 120, "two completed rounds")

    def round_two_with_server() -> bool:
        logs = {site: federation.kit(site) / "jobs" / job_id / "log.txt" for site in sites}
        if not all(p.exists() and "logged round 2" in p.read_text() for p in logs.values()):
            return False
        answered = all("sent round 2" in logs[site].read_text() for site in ("site-1", "site-2"))
        return answered and all(spool_forwarded(federation.kit(site), job_id) for site in sites)

    # site-1 and site-2 answered round 2, site-3 still works on it: the resumed round 2 asks them again
    wait_until(round_two_with_server, 60, "round 2's points at the server, the round still open")
    federation.kill("server1")
    federation.start("server1")
    with Session(federation.admin_kit) as s:
        info = s.wait_for_job(job_id, timeout=180)
    assert info.status == "finished:completed", info.reason
    assert "resuming after round 1" in workflow_log.read_text()  # round 2 was replayed
    kits = [federation.kit(site) for site in sites]
    wait_until(lambda: all(spool_forwarded(kit, job_id, gone_too=True) for kit in kits), 60, "the last points")
    client = MlflowClient(tracking_uri=embedded_mlflow_uri(federation.kit("server1") / "tracking"))
    experiment = client.get_experiment_by_name("replay")
    assert experiment is not None
    for site in sites:
        runs = client.search_runs([experiment.experiment_id], f"tags.`fedsec.site` = '{site}'")
        assert len(runs) == 1
        steps = sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "round_point"))
        assert steps == [0, 1, 2, 3, 4], f"{site}: {steps}"
