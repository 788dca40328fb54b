"""Job code is untrusted: a site's job sees nothing of the kit, no network, and no other job's endpoint.

The probe script (scripts/probe_client.py) tries each forbidden thing and logs
the outcome; the tests read its log. Each must be refused, and the job and
the site go on working.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from fedsec.api import Session
from fedsec.jobs import FedAvgRecipe
from tests.integration.harness import Federation, wait_until

SCRIPTS = Path(__file__).parent / "scripts"
INITIAL = {"w": np.zeros((8, 1), np.float32), "b": np.zeros(1, np.float32)}
KIT_PROBES = ("site key", "he context", "spool", "server port", "internet")


def _job(tmp: Path, script: str, *args: str, rounds: int = 1) -> Path:
    recipe = FedAvgRecipe(script, INITIAL, SCRIPTS / f"{script}.py", rounds, 1, script_args=list(args))
    return recipe.export(tmp / f"job-{len(list(tmp.glob('job-*')))}")


def _probes(fed: Federation, job_id: str) -> dict[str, str]:
    text = (fed.kit("site-1") / "jobs" / job_id / "log.txt").read_text()
    return dict(re.findall(r"^probe (.+?): (.+)$", text, re.MULTILINE))


def _server_port(fed: Federation) -> int:
    import json

    return int(json.loads((fed.kit("site-1") / "startup" / "fed_client.json").read_text())["server"]["port"])


@pytest.mark.federation(n_clients=1, he=True)
def test_job_cannot_read_the_kit_or_reach_the_network(federation: Federation, tmp_path: Path) -> None:
    federation.start_all()
    kit = federation.kit("site-1")
    assert (kit / "startup" / "site-1.key").exists() and (kit / "startup" / "client_context.tenseal").exists()
    with Session(federation.admin_kit) as s:
        job_id = s.submit_job(
            _job(tmp_path, "probe_client", "--kit", str(kit), "--port", str(_server_port(federation)))
        )
        info = s.wait_for_job(job_id, timeout=120)
        assert info.status == "finished:completed", info.reason
        probes = _probes(federation, job_id)
        assert set(KIT_PROBES) <= set(probes), probes
        for name in KIT_PROBES:
            assert probes[name].startswith("refused"), (name, probes[name])
        # the kit's folder holds nothing but the path down to this job's own folder
        assert probes["kit listing"] == '''ALLOWED "['jobs']"''', probes
        assert probes["jobs folder"] == f'''ALLOWED "['{job_id}']"''', probes
        # the site parent keeps working: the next job runs
        again = s.submit_job(_job(tmp_path, "linear_client"))
        assert s.wait_for_job(again, timeout=120).status == "finished:completed"


@pytest.mark.federation(n_clients=1)
def test_job_cannot_call_another_jobs_endpoint(federation: Federation, tmp_path: Path) -> None:
    federation.start_all()
    kit = federation.kit("site-1")
    with Session(federation.admin_kit) as s:
        first = s.submit_job(_job(tmp_path, "linear_client", "--sleep", "20", rounds=2))
        started = re.compile(rf"job={first} started .* socket=(\S+)")
        found = wait_until(lambda: started.search(federation.log("site-1")), 60, "the first job to start")
        other_socket = found.group(1)
        args = ["--kit", str(kit), "--port", str(_server_port(federation))]
        second = s.submit_job(
            _job(tmp_path, "probe_client", *args, "--other-job", first, "--other-socket", other_socket)
        )
        info = s.wait_for_job(second, timeout=120)
        assert info.status == "finished:completed", info.reason
        probes = _probes(federation, second)
        assert probes["other job by name"] == "refused PERMISSION_DENIED", probes
        assert probes["other job socket"].startswith("refused"), probes
        assert probes["other job folder"].startswith("refused"), probes
        assert s.wait_for_job(first, timeout=120).status == "finished:completed"
