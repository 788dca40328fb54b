"""A real digits job through the whole federation into a real MLflow server, as a user reads it in the MLflow UI.

The job (jobs/digits_fedavg/job.py: 2 sites, 2 rounds and the final evaluation)
runs on a federation from the harness whose server names a real `mlflow
server` as its tracking backend. What must hold is asserted through MLflow's
REST API: the job's run and one run per site, ended FINISHED, owned by the
submitter; the job's settings as params; `accuracy` in every run (the global
average in the job's run, each site's own value in its run) at steps 0, 1, 2,
the last being the final model, also logged as `final_accuracy`. Headless
Chromium then opens the experiment's page: the runs table lists the three
runs, and screenshots of the table and of its charts are kept as test
artifacts (tmp_path and $FEDSEC_TEST_ARTIFACTS, default test-artifacts/).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import ADMIN, Federation, chromium, keep_artifact, mlflow_api, screenshot

JOB_PY = Path(__file__).resolve().parents[2] / "jobs" / "digits_fedavg" / "job.py"
SITES = ["site-1", "site-2"]
ROUNDS = 2

pytestmark = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("torch", "sklearn", "mlflow")), reason="needs the ml extra and mlflow"
)


def run_digits(fed: Federation, cwd: Path) -> str:
    """Run the digits job on the team backend; its job id."""
    argv = [sys.executable, str(JOB_PY), "--startup_kit", str(fed.admin_kit), "--n_clients", str(len(SITES))]
    argv += ["--num_rounds", str(ROUNDS), "--epochs", "2", "--tracking_backend", "team"]
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=400, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.search(r"^submitted job (\S+)$", done.stdout, re.M)
    assert found, done.stdout
    return found.group(1)


def history(url: str, run_id: str, key: str) -> list[tuple[int, float]]:
    answer = mlflow_api(url, "metrics/get-history", run_id=run_id, metric_key=key, max_results="1000")
    return sorted((int(m["step"]), float(m["value"])) for m in answer.get("metrics", []))


def runs_of(url: str, experiment_id: str, job_id: str) -> list[dict[str, Any]]:
    search = {"experiment_ids": [experiment_id], "filter": f"tags.`fedsec.job_id` = '{job_id}'", "max_results": 100}
    answer = mlflow_api(url, "runs/search", search)
    return list(answer.get("runs", []))


def pairs(items: list[dict[str, str]] | None) -> dict[str, str]:
    return {item["key"]: item["value"] for item in items or []}


@pytest.mark.federation(n_clients=2, heartbeat_timeout=30.0)
def test_a_digits_job_in_mlflow_as_users_read_it(federation: Federation, tmp_path: Path, mlflow_server: str) -> None:
    backends = federation.kit("server1") / "local" / "tracking.yml"  # the server's operator names the MLflow server
    backends.write_text(f"backends:\n  team: {{mlflow_uri: '{mlflow_server}'}}\n")
    backends.chmod(0o600)
    federation.start_all()
    job_id = run_digits(federation, tmp_path)

    experiment = mlflow_api(mlflow_server, "experiments/get-by-name", experiment_name="digits_fedavg")["experiment"]
    runs = runs_of(mlflow_server, experiment["experiment_id"], job_id)
    by_site = {pairs(r["data"].get("tags")).get("fedsec.site", "job"): r for r in runs}
    assert sorted(by_site) == ["job", *SITES], [r["info"]["run_name"] for r in runs]
    parent = by_site["job"]
    parent_id = parent["info"]["run_id"]
    run_name = f"digits_fedavg-{job_id[:8]}"
    assert parent["info"]["run_name"] == run_name

    # every run ended as the job did, belongs to its submitter, and the site runs hang under the job's
    for name, run in by_site.items():
        tags = pairs(run["data"].get("tags"))
        assert run["info"]["status"] == "FINISHED", name
        assert tags["mlflow.user"] == ADMIN, name
        if name != "job":
            assert tags["mlflow.parentRunId"] == parent_id
            assert run["info"]["run_name"] == name

    # the job's settings are the parent run's params
    params = pairs(parent["data"].get("params"))
    expected = {
        "job_id": job_id,
        "job_name": "digits_fedavg",
        "submitter": ADMIN,
        "strategy": "fedavg",
        "min_clients": "2",
        "sites": "all",
        "num_sites": "2",  # a job open to every site: the sites that took part
        "workflow.num_rounds": str(ROUNDS),
        "workflow.evaluate_final": "true",
        "he.enabled": "false",
        "tracking.backend": "team",
        "script.path": "client.py",
        "script.args.epochs": "2",
        "script.args.n_clients": "2",
    }
    assert {k: params.get(k) for k in expected} == expected

    # one name, every run: the global average beside each site's own value, step = round, the final model last
    steps = list(range(ROUNDS + 1))
    curves = {name: history(mlflow_server, run["info"]["run_id"], "accuracy") for name, run in by_site.items()}
    for name, curve in curves.items():
        assert [s for s, _ in curve] == steps, (name, curve)
    for step in steps:  # a weighted average lies between the sites' values
        site_values = [dict(curves[site])[step] for site in SITES]
        assert min(site_values) - 1e-9 <= dict(curves["job"])[step] <= max(site_values) + 1e-9, (step, curves)
    assert curves["job"][-1][1] >= 0.8, curves["job"]  # the trained model is far above chance
    for name, run in by_site.items():
        final = history(mlflow_server, run["info"]["run_id"], "final_accuracy")
        assert final == [curves[name][-1]], (name, final)

    # the MLflow UI lists the job's run and the sites' runs (sorted by name: flat, not folded under the parent)
    query = urllib.parse.urlencode(
        {"workflowType": "machine_learning", "orderByKey": "attributes.run_name", "orderByAsc": "true"}
    )
    page = f"{mlflow_server}/#/experiments/{experiment['experiment_id']}/runs?{query}"
    dom = chromium("--dump-dom", page, profile=tmp_path / "chromium-dom").stdout
    (tmp_path / "mlflow_job_runs.html").write_text(dom)
    kept = keep_artifact(tmp_path / "mlflow_job_runs.html")
    for name in (run_name, *SITES):
        assert f">{name}<" in dom, f"the runs table does not show {name}; see {kept}"
    screenshot(page, tmp_path / "mlflow_job_runs.png", profile=tmp_path / "chromium-table")
    # the charts view: one chart per metric name, `accuracy` with the job's curve and each site's (plotly needs
    # more than the table's virtual time to draw)
    charts = f"{page}&{urllib.parse.urlencode({'compareRunsMode': 'CHART'})}"
    shot = tmp_path / "mlflow_job_charts.png"
    screenshot(charts, shot, profile=tmp_path / "chromium-charts", size="1600,1200", budget_ms=60000)
