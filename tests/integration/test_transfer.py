"""What crosses the link: the initial model reaches each site once, in the signed job archive."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fedsec.api import Session
from tests.integration.harness import Federation
from tests.integration.test_runtime import linear_job

_SENT = re.compile(r"round=(\d+) site=(site-\d+) (train|evaluate) task model_bytes=(\d+) sent=(\d+)")


@pytest.mark.federation(n_clients=2)
def test_the_initial_model_crosses_to_each_site_once(federation: Federation, tmp_path: Path) -> None:
    federation.start_all()
    job = linear_job(tmp_path, rounds=2, min_clients=2)
    initial_size = (job / "app" / "initial_model.fsa").stat().st_size
    with Session(federation.admin_kit) as s:
        job_id = s.submit_job(job)
        info = s.wait_for_job(job_id, timeout=120, poll=0.2)
    assert info.status == "finished:completed", info.reason

    # the server's accounting: round 0's model (the initial one) went out with no bytes, later ones whole
    flow_log = (federation.kit("server1") / "store" / "jobs" / job_id / "workflow.log").read_text()
    sent: dict[tuple[str, str], tuple[int, int]] = {}
    for number, site, kind, size, count in _SENT.findall(flow_log):
        sent[(site, f"{kind} {number}")] = (int(size), int(count))
    for site in ("site-1", "site-2"):
        assert sent[(site, "train 0")] == (initial_size, 0)
        assert sent[(site, "train 1")][1] == sent[(site, "train 1")][0] > 0  # a new global model: sent whole
        assert sent[(site, "evaluate 2")][1] == sent[(site, "evaluate 2")][0] > 0
        # the site's own count: the archive once, round 0's model from it
        site_log = federation.log(site)
        assert re.search(rf"job={job_id} archive of \d+ bytes fetched with \d+ bytes down", site_log), site_log
        assert f"job={job_id} round=0 train task model_bytes={initial_size} downloaded=0" in site_log
    assert len(sent) == 6, sent  # one task per site per round: nothing was sent twice
