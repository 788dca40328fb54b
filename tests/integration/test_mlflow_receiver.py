"""The MLflow receiver against a real `mlflow server`, and the runs as the MLflow UI shows them in headless Chromium.

The server runs from this venv on 127.0.0.1 (a port taken by binding port 0)
with a SQLite store and a local artifact root in tmp_path, in its own process
group, stopped by pid in a finally block. The UI check needs Debian's chromium
(`apt-get update && apt-get install -y chromium`); without it the test fails.
The screenshot (mlflow_ui.png) and the rendered DOM (mlflow_ui.html) are written
in tmp_path and kept in $FEDSEC_TEST_ARTIFACTS (default test-artifacts/).
"""

from __future__ import annotations

import json
import logging
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from fedsec.tracking.backends import Backend
from fedsec.tracking.events import Event, EventKind
from fedsec.tracking.receivers import open_receivers
from fedsec.tracking.receivers.mlflow_receiver import MlflowReceiver
from tests.integration.harness import chromium, keep_artifact, screenshot

JOB_ID = "9a8b7c6d5e4f30211a2b3c4d5e6f7081"
JOB_NAME = "digits-fedavg"
RUN_NAME = f"{JOB_NAME}-{JOB_ID[:8]}"
SITES = ("site-1", "site-2")
WRITER = "ab" * 16
T0 = 1_700_000_000.0


def site_events(index: int) -> list[Event]:
    items = {"lr": "0.05", "local_epochs": "2"}
    events = [Event(WRITER, 0, EventKind.PARAMS, "", 0, T0, text=json.dumps(items))]
    for step in range(6):
        loss = 1.0 / (1 + step + index)
        events.append(Event(WRITER, 1 + step, EventKind.SCALAR, "train/loss", step, T0 + step, value=loss))
    events.append(Event(WRITER, 10, EventKind.TEXT, "summary", 5, T0 + 5, text=f"site {index} done"))
    return events


def write_job(url: str, workspace: Path, model: Path, rounds: range) -> MlflowReceiver:
    receivers = open_receivers(JOB_ID, JOB_NAME, workspace, Backend("team", url), tensorboard=False)
    assert len(receivers) == 1
    receiver = receivers[0]
    assert isinstance(receiver, MlflowReceiver)
    for index, site in enumerate(SITES):
        receiver.site_events(site, site_events(index))
    for rnd in rounds:
        receiver.global_metrics(rnd, {"accuracy": 0.6 + 0.1 * rnd})
    receiver.final_model(model)
    receiver.close()
    return receiver


def test_mlflow_server_and_ui(mlflow_server: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="fedsec.tracking.receivers")
    model = tmp_path / "FL_global_model.npz"
    model.write_bytes(b"PK\x05\x06" + bytes(18))
    receiver = write_job(mlflow_server, tmp_path / "ws", model, range(1, 4))
    # A restarted job process writes to the same runs; the sites send their events again.
    again = write_job(mlflow_server, tmp_path / "ws", model, range(4, 5))
    assert (again.experiment_id, again.run_id) == (receiver.experiment_id, receiver.run_id)
    hint = f"{mlflow_server}/#/experiments/{receiver.experiment_id}/runs/{receiver.run_id}"
    assert any(hint in r.getMessage() for r in caplog.records)

    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name(JOB_NAME)
    assert experiment is not None
    assert experiment.experiment_id == receiver.experiment_id
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted([RUN_NAME, *SITES])
    parent = client.get_run(receiver.run_id)
    assert parent.info.status == "FINISHED"
    history = client.get_metric_history(receiver.run_id, "accuracy")
    assert [(m.step, round(m.value, 6)) for m in history] == [(1, 0.7), (2, 0.8), (3, 0.9), (4, 1.0)]
    assert [f.path for f in client.list_artifacts(receiver.run_id, "model")] == ["model/FL_global_model.npz"]
    for index, site in enumerate(SITES):
        (child,) = [r for r in runs if r.info.run_name == site]
        assert child.data.tags["mlflow.parentRunId"] == receiver.run_id
        assert child.data.tags["fedsec.site"] == site
        assert child.data.params == {"lr": "0.05", "local_epochs": "2"}
        losses = client.get_metric_history(child.info.run_id, "train/loss")
        assert [m.step for m in losses] == list(range(6))  # written twice, kept once
        assert losses[0].timestamp == int(T0 * 1000)
        text = client.download_artifacts(child.info.run_id, "text/summary/step_5.txt", str(tmp_path))
        assert Path(text).read_text() == f"site {index} done"

    # The MLflow UI lists the job's runs. MLflow 3 opens an experiment on its GenAI overview unless told
    # workflowType=machine_learning; sorting by name (not by date) lists the site runs flat, not folded.
    query = urllib.parse.urlencode(
        {"workflowType": "machine_learning", "orderByKey": "attributes.run_name", "orderByAsc": "true"}
    )
    page = f"{mlflow_server}/#/experiments/{experiment.experiment_id}/runs?{query}"
    dom = chromium("--dump-dom", page, profile=tmp_path / "chromium-dom").stdout
    (tmp_path / "mlflow_ui.html").write_text(dom)
    kept = keep_artifact(tmp_path / "mlflow_ui.html")
    assert JOB_NAME in dom
    for name in (RUN_NAME, *SITES):
        assert f">{name}<" in dom, f"the runs table does not show {name}; see {kept}"
    shown = re.search(r"<strong>(\d+)</strong>\s*matching runs", dom)
    assert shown is not None and int(shown.group(1)) == 1 + len(SITES), "the page does not count 3 runs"
    screenshot(page, tmp_path / "mlflow_ui.png", profile=tmp_path / "chromium-png")
