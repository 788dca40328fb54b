"""A site's warm launcher (warm_launcher: true): each job runs in a ready process, isolated like a cold one.

The ready process imported the ML framework before its job existed; the job
still sees nothing of the kit, no network, and no folder but its own (not the
next job's ready folder either); each job gets a process of its own, and the
site stops its ready process when it stops.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from fedsec.api import Session
from fedsec.jobs import FedAvgRecipe
from tests.integration.harness import Federation, pid_alive, wait_until

SCRIPTS = Path(__file__).parent / "scripts"
INITIAL = {"w": np.zeros((8, 1), np.float32), "b": np.zeros(1, np.float32)}
REFUSED = ("site key", "he context", "spool", "server port", "internet")
READY = "warm launcher: started the next job's process pid="


def _probe_job(tmp: Path, fed: Federation, n: int) -> Path:
    kit = fed.kit("site-1")
    port = json.loads((kit / "startup" / "fed_client.json").read_text())["server"]["port"]
    args = ["--kit", str(kit), "--port", str(port)]
    return FedAvgRecipe("probe", INITIAL, SCRIPTS / "probe_client.py", 1, 1, script_args=args).export(tmp / f"j{n}")


def _probes(fed: Federation, job_id: str) -> dict[str, str]:
    text = (fed.kit("site-1") / "jobs" / job_id / "log.txt").read_text()
    return dict(re.findall(r"^probe (.+?): (.+)$", text, re.MULTILINE))


def _ready_pids(fed: Federation) -> list[int]:
    return [int(p) for p in re.findall(READY + r"(\d+)", fed.log("site-1"))]


def _wait_ready(fed: Federation, count: int) -> None:
    wait_until(lambda: len(_ready_pids(fed)) == count, 120, f"ready job process number {count}")


@pytest.mark.federation(n_clients=1, he=True)
def test_jobs_run_in_ready_processes_isolated_like_cold_ones(federation: Federation, tmp_path: Path) -> None:
    settings = federation.kit("site-1") / "local" / "site_settings.yml"
    settings.write_text("warm_launcher: true\n")
    settings.chmod(0o600)
    federation.start_all()
    wait_until(lambda: _ready_pids(federation), 120, "site-1's first ready job process")
    pids = []
    with Session(federation.admin_kit) as s:
        for n in range(2):
            ready = _ready_pids(federation)[-1]
            job_id = s.submit_job(_probe_job(tmp_path, federation, n))
            info = s.wait_for_job(job_id, timeout=180)
            assert info.status == "finished:completed", info.reason
            assert f"job={job_id} started pid={ready} isolated=True warm=True" in federation.log("site-1")
            probes = _probes(federation, job_id)
            assert probes["preloaded"] == "['numpy', 'torch']", probes  # imported before the script ran
            for name in REFUSED:
                assert probes[name].startswith("refused"), (name, probes[name])
            assert probes["kit listing"] == '''ALLOWED "['jobs']"''', probes
            # its own folder only: neither the next job's ready folder nor an earlier job's
            assert re.fullmatch(r"""ALLOWED "\['\.warm-\w+'\]\"""", probes["jobs folder"]), probes
            pids.append(ready)
            _wait_ready(federation, n + 2)
    assert len(set(pids)) == 2  # a process of its own for each job
    jobs = federation.kit("site-1") / "jobs"
    assert len(list(jobs.glob(".warm-*"))) == 1  # the next job's, ready
    last = _ready_pids(federation)[-1]
    assert pid_alive(last)
    federation.stop()
    assert not pid_alive(last)
