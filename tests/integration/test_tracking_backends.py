"""Through a real federation: a job picks a tracking backend by name; the server refuses any other destination.

The server's operator names backends in local/tracking.yml. A job that names a
path, a database or a host (the old tracking.mlflow_uri), or a backend the
server does not have, is refused at submission: no record, no file, no
request. A poisoned embedded store (an interrupted migration) does not stop
the next job from tracking, an aborted job's runs end KILLED, and nothing an
admin reads names the server kit's path.
"""

from __future__ import annotations

import importlib.util
import socket
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedsec.api import Session
from fedsec.errors import FedsecError
from fedsec.jobs import FedAvgRecipe
from fedsec.tracking.receivers import embedded_mlflow_uri, prepare_embedded_store
from tests.integration.harness import Federation, wait_until

EVENTS_SCRIPT = Path(__file__).parent / "scripts" / "events_client.py"

pytestmark = pytest.mark.skipif(not importlib.util.find_spec("mlflow"), reason="needs mlflow")


def _job(tmp: Path, name: str, backend: str = "local", raw_tracking: dict[str, object] | None = None) -> Path:
    recipe = FedAvgRecipe(
        name, {"w": np.zeros(4, np.float32)}, EVENTS_SCRIPT, 1, 2, script_args=["--events", "5"],
        tracking_backend=backend, round_timeout=120,
    )  # fmt: skip
    folder = recipe.export(tmp / name)
    if raw_tracking is not None:  # what an older or a hostile admin client sends
        config = yaml.safe_load((folder / "app" / "config.yml").read_text())
        config["tracking"] = raw_tracking
        (folder / "app" / "config.yml").write_text(yaml.safe_dump(config))
    return folder


def _go(fed: Federation, job_id: str) -> None:
    work = [fed.kit(f"site-{i}") / "jobs" / job_id / "work" for i in (1, 2)]
    wait_until(lambda: all(w.is_dir() for w in work), 120, "both sites' scripts")
    for w in work:
        (w / "go").touch()


def _runs(tracking: Path, job_name: str, job_id: str) -> list[str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=embedded_mlflow_uri(tracking))
    experiment = client.get_experiment_by_name(job_name)
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], f"tags.`fedsec.job_id` = '{job_id}'")
    return sorted(r.info.status for r in runs)


@pytest.mark.federation(n_clients=2, heartbeat_timeout=30.0)
def test_backends_by_name_only_poisoned_store_recovers_aborted_runs_killed(
    federation: Federation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kit = federation.kit("server1")
    tracking = kit / "tracking"
    # An MLflow migration killed half-way by an older fedsec: every later job failed until mlflow.db was deleted.
    prepare_embedded_store(tracking)
    con = sqlite3.connect(tracking / "mlflow" / "mlflow.db")
    con.execute("CREATE TABLE _alembic_tmp_latest_metrics (key VARCHAR(250), value FLOAT)")
    con.commit()
    con.close()
    listener = socket.socket()  # a host nobody listed: it must never be contacted
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    backends = kit / "local" / "tracking.yml"
    backends.write_text(f"backends:\n  team: {{mlflow_uri: 'http://127.0.0.1:{port}'}}\n")
    backends.chmod(0o600)
    federation.start_all()

    monkeypatch.setattr("fedsec.api.session.load_job_folder", lambda folder: None)  # skip the client's own check
    evil_db = kit / "startup" / "evil.db"
    refused = {
        "sqlite": _job(tmp_path, "sqlite", raw_tracking={"mlflow_uri": f"sqlite:///{evil_db}"}),
        "jobs_db": _job(tmp_path, "jobsdb", raw_tracking={"mlflow_uri": f"sqlite:///{kit / 'store' / 'jobs.db'}"}),
        "url": _job(tmp_path, "url", raw_tracking={"mlflow_uri": f"http://127.0.0.1:{port}"}),
        "unknown": _job(tmp_path, "unknown", backend="nope"),
    }
    with Session(federation.admin_kit) as s:
        before = len(s.list_jobs())
        for what, folder in refused.items():
            with pytest.raises(FedsecError) as caught:
                s.submit_job(folder)
            text = str(caught.value)
            assert str(kit) not in text and str(tmp_path) not in text, text
            if what == "unknown":
                assert "'nope' is not a tracking backend of this server (it has: local, team)" in text
            else:
                assert "tracking.mlflow_uri" in text and "backend" in text, text
        assert len(s.list_jobs()) == before  # no record
        assert not evil_db.exists()
        assert not list((kit / "startup").glob("*.db*"))
        with pytest.raises(BlockingIOError):
            listener.accept()  # no request was made
        listener.close()

        # The next job on the default backend tracks, over the poisoned store (set aside).
        job_id = s.submit_job(_job(tmp_path, "good"))
        _go(federation, job_id)
        info = s.wait_for_job(job_id, timeout=240)
        assert info.status == "finished:completed", info.reason
        assert _runs(tracking, "good", job_id) == ["FINISHED"] * 3  # the job's run and one per site
        assert list((tracking / "mlflow").glob("mlflow.db.broken-*"))
        job_log = s.get_job_log(job_id)
        assert "tracking/mlflow/mlflow.db" in job_log
        assert str(kit) not in job_log and str(kit.resolve()) not in job_log

        # An aborted job's runs end KILLED, not RUNNING forever.
        job_id = s.submit_job(_job(tmp_path, "aborted"))
        wait_until(lambda: _runs(tracking, "aborted", job_id) == ["RUNNING"], 120, "the aborted job's run")
        info = s.abort_job(job_id)
        assert info.status == "finished:aborted"
        wait_until(lambda: _runs(tracking, "aborted", job_id) == ["KILLED"], 60, "the run to end KILLED")
        assert str(kit) not in s.get_job_log(job_id)
