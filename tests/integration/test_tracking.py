"""SummaryWriter events stream from the sites through the server into MLflow: nothing lost, nothing twice."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedsec.api import Session
from fedsec.jobs import FedAvgRecipe
from tests.integration.harness import Federation, pids_running, wait_until

JOB_PY = Path(__file__).resolve().parents[2] / "jobs" / "digits_fedavg" / "job.py"
EVENTS_SCRIPT = Path(__file__).parent / "scripts" / "events_client.py"

pytestmark = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("torch", "sklearn", "mlflow")), reason="needs the ml extra and mlflow"
)


def _check_digits_runs(uri: str, job_id: str, rounds: int) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("digits_fedavg")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`fedsec.job_id` = '{job_id}'")
    parents = [r for r in runs if "fedsec.site" not in r.data.tags]
    children = {r.data.tags["fedsec.site"]: r for r in runs if "fedsec.site" in r.data.tags}
    assert len(parents) == 1 and sorted(children) == ["site-1", "site-2", "site-3"]
    history = client.get_metric_history(parents[0].info.run_id, "accuracy")
    assert sorted(m.step for m in history) == list(range(rounds + 1))  # one value per round, and the final model's
    for site, run in children.items():
        assert run.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id
        val = client.get_metric_history(run.info.run_id, "accuracy")  # the site's own, under the global's name
        assert sorted(m.step for m in val) == list(range(rounds + 1)), site  # every round and the final model
        for key in ("train/loss", "train/lr", "train/update_norm"):
            assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == list(range(rounds))
        assert run.data.params["epochs"] == "3"


def _run_digits(fed: Federation, cwd: Path, *extra: str) -> str:
    argv = [sys.executable, str(JOB_PY), "--startup_kit", str(fed.admin_kit), "--n_clients", "3", "--num_rounds", "2"]
    done = subprocess.run([*argv, *extra], cwd=cwd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.search(r"^submitted job (\S+)$", done.stdout, re.M)
    assert found
    return found.group(1)


@pytest.mark.federation(n_clients=3, heartbeat_timeout=30.0)
def test_digits_events_reach_the_embedded_store_and_a_real_mlflow_server(
    federation: Federation, tmp_path: Path, mlflow_server: str
) -> None:
    backends = federation.kit("server1") / "local" / "tracking.yml"  # the server's operator names the MLflow server
    backends.write_text(f"backends:\n  team: {{mlflow_uri: '{mlflow_server}'}}\n")
    backends.chmod(0o600)
    federation.start_all()
    job_id = _run_digits(federation, tmp_path)
    embedded = f"sqlite:///{federation.kit('server1') / 'tracking' / 'mlflow' / 'mlflow.db'}"
    _check_digits_runs(embedded, job_id, rounds=2)
    job_id = _run_digits(federation, tmp_path, "--tracking_backend", "team")
    _check_digits_runs(mlflow_server, job_id, rounds=2)


@pytest.mark.federation(n_clients=2, heartbeat_timeout=30.0)
def test_events_of_a_killed_site_arrive_once(federation: Federation, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    federation.start_all()
    initial = {"w": np.zeros(4, np.float32)}
    recipe = FedAvgRecipe("events", initial, EVENTS_SCRIPT, 2, 2, script_args=["--events", "50"], round_timeout=120)
    with Session(federation.admin_kit) as s:
        job_id = s.submit_job(recipe.export(tmp_path / "job"))
        work = [federation.kit(f"site-{i}") / "jobs" / job_id / "work" for i in (1, 2)]
        wait_until(lambda: all(w.is_dir() for w in work), 60, "both sites' scripts")
        (workflow,) = pids_running(f"fedsec.workflow --job-dir {federation.kit('server1')}")
        os.kill(workflow, signal.SIGSTOP)  # the server can take no event: none is acknowledged
        try:
            for w in work:
                (w / "go").touch()
            marker = work[0] / "logged"
            wait_until(marker.exists, 60, "site-1's script to log its events")
            killed_tag = marker.read_text()
            time.sleep(0.5)  # let the site's forwarder try (and hang) on the stopped workflow
            federation.kill("site-1")
        finally:
            os.kill(workflow, signal.SIGCONT)
        federation.start("site-1")
        wait_until(lambda: work[0].is_dir() and not marker.exists(), 60, "site-1's restarted script")
        (work[0] / "go").touch()
        info = s.wait_for_job(job_id, timeout=180)
    assert info.status == "finished:completed", info.reason
    client = MlflowClient(tracking_uri=f"sqlite:///{federation.kit('server1') / 'tracking' / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("events")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`fedsec.site` = 'site-1'")
    assert len(runs) == 1
    history = client.get_metric_history(runs[0].info.run_id, killed_tag)
    assert sorted(m.step for m in history) == list(range(50))  # every event of the killed writer, once


@pytest.mark.federation(n_clients=2, heartbeat_timeout=30.0)
def test_runs_of_a_job_whose_workflow_died_end_failed(federation: Federation, tmp_path: Path) -> None:
    """A workflow process killed (OOM, kill -9) ends no run itself: the server has them ended as the job ended."""
    from mlflow.tracking import MlflowClient

    from fedsec.tracking.receivers import prepare_embedded_store

    federation.start_all()
    store = prepare_embedded_store(federation.kit("server1") / "tracking")  # waits for the server's set-up of it
    client = MlflowClient(tracking_uri=store.uri)
    initial = {"w": np.zeros(4, np.float32)}
    recipe = FedAvgRecipe("crash", initial, EVENTS_SCRIPT, 2, 2, script_args=["--events", "5"], round_timeout=120)
    with Session(federation.admin_kit) as s:
        job_id = s.submit_job(recipe.export(tmp_path / "job"))

        def parent_run() -> Any:
            experiment = client.get_experiment_by_name("crash")
            runs = client.search_runs([experiment.experiment_id]) if experiment is not None else []
            return runs[0] if len(runs) == 1 and runs[0].data.tags.get("fedsec.job_id") == job_id else None

        running = wait_until(parent_run, 120, "the job's run in the embedded store")
        assert running.info.status == "RUNNING"
        (workflow,) = pids_running(f"fedsec.workflow --job-dir {federation.kit('server1')}")
        os.kill(workflow, signal.SIGKILL)  # before any site was let go: the job cannot have ended otherwise
        info = s.wait_for_job(job_id, timeout=120)
    assert info.status == "finished:failed", info.reason
    wait_until(lambda: client.get_run(running.info.run_id).info.status == "FAILED", 180, "the job's run to end FAILED")
