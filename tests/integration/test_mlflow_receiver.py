"""The MLflow receiver against a real `mlflow server`, and the runs as the MLflow UI shows them in headless Chromium.

The server runs from this venv on 127.0.0.1 (a port taken by binding port 0)
with a SQLite store and a local artifact root in tmp_path, in its own process
group, stopped by pid in a finally block. The UI check needs Debian's chromium
(`apt-get update && apt-get install -y chromium`); without it the test fails.
The screenshot (mlflow_ui.png) and the rendered DOM (mlflow_ui.html) are kept
in $FEDSEC_TEST_ARTIFACTS when it is set, else in tmp_path.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from fedsec import _proc
from fedsec.tracking.backends import Backend
from fedsec.tracking.events import Event, EventKind
from fedsec.tracking.receivers import open_receivers
from fedsec.tracking.receivers.mlflow_receiver import MlflowReceiver
from tests.integration.harness import free_port, wait_until

CHROMIUM = Path("/usr/bin/chromium")
JOB_ID = "9a8b7c6d5e4f30211a2b3c4d5e6f7081"
JOB_NAME = "digits-fedavg"
RUN_NAME = f"{JOB_NAME}-{JOB_ID[:8]}"
SITES = ("site-1", "site-2")
WRITER = "ab" * 16
T0 = 1_700_000_000.0


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """The URL of a running `mlflow server` with its store in tmp_path."""
    port = free_port()
    root = tmp_path / "mlflow-server"
    root.mkdir()
    argv = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root / 'm.db'}",
        "--default-artifact-root", str(root / "art"),
        "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    log_path = root / "server.log"
    proc = _proc.start(argv, cwd=root, env=dict(os.environ), log_path=log_path)
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"mlflow server exited {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            return healthy(url)

        wait_until(up, timeout=120, what=f"mlflow server on {url}/health", interval=0.5)
        yield url
    finally:
        _proc.stop(proc, grace=5)  # TERM its process group (uvicorn workers, job runner), KILL after 5 s
        _proc.stop(proc)  # the leader is gone: KILL whatever is left of the group


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


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get update && apt-get install -y chromium)")
    argv = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--virtual-time-budget=15000", *args,
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, f"chromium exited {done.returncode}:\n{done.stderr[-4000:]}"
    return done


def artifacts_dir(tmp_path: Path) -> Path:
    where = os.environ.get("FEDSEC_TEST_ARTIFACTS")
    path = Path(where) if where else tmp_path
    path.mkdir(parents=True, exist_ok=True)
    return path


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
    out = artifacts_dir(tmp_path)
    dom = chromium("--dump-dom", page, profile=tmp_path / "chromium-dom").stdout
    (out / "mlflow_ui.html").write_text(dom)
    assert JOB_NAME in dom
    for name in (RUN_NAME, *SITES):
        assert f">{name}<" in dom, f"the runs table does not show {name}; see {out / 'mlflow_ui.html'}"
    shown = re.search(r"<strong>(\d+)</strong>\s*matching runs", dom)
    assert shown is not None and int(shown.group(1)) == 1 + len(SITES), "the page does not count 3 runs"
    screenshot = out / "mlflow_ui.png"
    screenshot.unlink(missing_ok=True)
    chromium(f"--screenshot={screenshot}", "--window-size=1400,900", page, profile=tmp_path / "chromium-png")
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 10_000
