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
