"""The main job end to end: jobs/digits_fedavg/job.py trains the PyTorch CNN on a real federation of 3 sites."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedsec.api import Session
from fedsec.wire import arrays
from tests.integration.harness import Federation

JOB_PY = Path(__file__).resolve().parents[2] / "jobs" / "digits_fedavg" / "job.py"

# Only looked up, not imported: torch belongs in the job's processes, not in this one.
pytestmark = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("torch", "sklearn")), reason="the digits job needs the ml extra"
)


@pytest.mark.federation(n_clients=3, heartbeat_timeout=30.0)
def test_digits_fedavg_job_learns(federation: Federation, tmp_path: Path) -> None:
    federation.start_all()
    argv = [sys.executable, str(JOB_PY), "--startup_kit", str(federation.admin_kit)]
    argv += ["--n_clients", "3", "--num_rounds", "3"]
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=240, check=False)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    found = re.search(r"^submitted job (\S+)$", done.stdout, re.M)
    assert found, out
    job_id = found.group(1)
    assert f"job {job_id}: finished:completed" in done.stdout, out
    # one line per round as it completes, then the final model's
    printed = re.findall(r"^(round \d/3|final global model): accuracy ([0-9.]+)", done.stdout, re.M)
    assert [label for label, _ in printed] == ["round 1/3", "round 2/3", "round 3/3", "final global model"], out

    with Session(federation.admin_kit) as s:
        info = s.get_job_meta(job_id)
    assert info.status == "finished:completed", info.reason
    rounds = info.progress["rounds"]
    assert [r["sites"] for r in rounds] == [["site-1", "site-2", "site-3"]] * 3
    # a round's accuracy is that of the global model it started from. What holds on every CPU: the untrained
    # model is near chance, the trained one is far above it (floating point differs across CPUs, so no exact digits
    # and no strict rise from one round to the next)
    accuracy = [r["metrics"]["accuracy"] for r in rounds] + [info.progress["final"]["metrics"]["accuracy"]]
    assert all(0.0 <= a <= 1.0 for a in accuracy), accuracy
    assert accuracy[0] < 0.5 and accuracy[-1] >= 0.9, accuracy
    assert [float(value) for _, value in printed] == pytest.approx(accuracy, abs=5e-5)

    result = federation.admin_kit / "transfer" / job_id
    assert f"result downloaded to {result}" in done.stdout, out
    model = arrays.read_file(result / "global_model.fsa")
    assert set(model) == {
        "features.0.weight",
        "features.0.bias",
        "features.2.weight",
        "features.2.bias",
        "classifier.1.weight",
        "classifier.1.bias",
        "classifier.3.weight",
        "classifier.3.bias",
    }
    assert all(t.dtype == np.float32 and np.all(np.isfinite(t)) for t in model.values())
    assert model["classifier.3.weight"].shape == (10, 64)


@pytest.mark.federation(n_clients=3, heartbeat_timeout=30.0)
def test_digits_fedprox_job_learns_with_the_proximal_term_in_each_sites_loss(
    federation: Federation, tmp_path: Path
) -> None:
    federation.start_all()
    argv = [sys.executable, str(JOB_PY), "--startup_kit", str(federation.admin_kit)]
    argv += ["--n_clients", "3", "--num_rounds", "3", "--strategy", "fedprox", "--mu", "0.01"]
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=240, check=False)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    found = re.search(r"^submitted job (\S+)$", done.stdout, re.M)
    assert found, out
    with Session(federation.admin_kit) as s:
        info = s.get_job_meta(found.group(1))
    assert info.status == "finished:completed", info.reason
    assert info.progress["final"]["metrics"]["accuracy"] >= 0.9
    for site in ("site-1", "site-2", "site-3"):  # every site added the term in every round
        log = federation.job_log(site, found.group(1))
        assert log.count(f"{site}: proximal term mu=0.01") == 3, log[-2000:]
