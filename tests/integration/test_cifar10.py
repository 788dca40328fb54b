"""The CIFAR-10 jobs end to end on 8 sites: jobs/cifar10_fedavg and jobs/cifar10_fedavg_he on tiny data.

The data set is made here in the real binary format (8 sites x 20 training images,
40 test images): the point is that both jobs run to completion on a real
federation, not what they learn.
"""

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
from tests.unit.cifar10 import write_dataset

JOBS = Path(__file__).resolve().parents[2] / "jobs"
N_SITES = 8
TENSORS = {
    "features.0.weight": (32, 3, 3, 3),
    "features.2.weight": (64, 32, 3, 3),
    "features.5.weight": (128, 64, 3, 3),
    "features.7.weight": (128, 128, 3, 3),
    "features.11.weight": (256, 128, 3, 3),
    "features.13.weight": (256, 256, 3, 3),
    "classifier.2.weight": (512, 4096),
    "classifier.4.weight": (512, 512),
    "classifier.7.weight": (10, 512),
}

pytestmark = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("torch", "tenseal")), reason="needs the ml extra and tenseal"
)


def _run_job(fed: Federation, job: str, data_dir: Path, cwd: Path) -> str:
    """Run jobs/<job>/job.py for 2 rounds of 1 epoch; returns the id of the job, which must complete."""
    argv = [sys.executable, str(JOBS / job / "job.py"), "--startup_kit", str(fed.admin_kit)]
    argv += ["--n_clients", str(N_SITES), "--num_rounds", "2", "--aggregation_epochs", "1", "--batch_size", "8"]
    argv += ["--data_dir", str(data_dir)]
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=240, check=False)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    found = re.search(r"^submitted job (\S+)$", done.stdout, re.M)
    assert found, out
    job_id = found.group(1)
    assert f"job {job_id}: finished:completed" in done.stdout, out
    printed = re.findall(r"^(round \d/2|final global model): accuracy [0-9.]+", done.stdout, re.M)
    assert printed == ["round 1/2", "round 2/2", "final global model"], out
    assert f"result downloaded to {fed.admin_kit / 'transfer' / job_id}" in done.stdout, out
    return job_id


@pytest.mark.federation(n_clients=N_SITES, heartbeat_timeout=30.0, he=True)
def test_cifar10_plain_and_he_jobs_complete_on_8_sites(federation: Federation, tmp_path: Path) -> None:
    data_dir = write_dataset(tmp_path / "cifar10", n_train=N_SITES * 20, n_test=40)
    federation.set_datasets(cifar10=data_dir)  # each site's operator says where its copy is
    federation.start_all()

    plain_id = _run_job(federation, "cifar10_fedavg", data_dir, tmp_path)
    plain = arrays.read_file(federation.admin_kit / "transfer" / plain_id / "global_model.fsa")
    assert {k: plain[k].shape for k in TENSORS} == TENSORS
    assert all(t.dtype == np.float32 and np.all(np.isfinite(t)) for t in plain.values())

    he_id = _run_job(federation, "cifar10_fedavg_he", data_dir, tmp_path)
    with Session(federation.admin_kit) as s:
        info = s.get_job_meta(he_id)
    assert info.status == "finished:completed", info.reason
    assert [sorted(r["sites"]) for r in info.progress["rounds"]] == [
        sorted(f"site-{i}" for i in range(1, N_SITES + 1))
    ] * 2

    result = federation.admin_kit / "transfer" / he_id
    assert not (result / "global_model.fsa").exists()  # the server only ever held it encrypted
    out = tmp_path / "he_final.fsa"
    context = federation.kit("site-1") / "startup" / "client_context.tenseal"
    cmd = [sys.executable, "-m", "fedsec", "he", "decrypt", "--context", str(context), str(result), "-o", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    decrypted = arrays.read_file(out)
    assert {k: v.shape for k, v in decrypted.items()} == {k: v.shape for k, v in plain.items()}
    assert all(np.all(np.isfinite(t)) for t in decrypted.values())
    # same seed and data: the HE model is the plain one up to the fixed-point steps (2**-16 here) and what
    # the second round's training makes of them
    gap = max(float(np.max(np.abs(decrypted[k] - plain[k]))) for k in plain)
    print(f"largest |HE - plain| weight difference: {gap:.2e}")
    assert gap < 1e-3, gap
