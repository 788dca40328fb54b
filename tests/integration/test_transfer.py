"""What crosses the link: the initial model reaches each site once, in the signed job archive; an HE job
sends each site every encrypted global model once, the final one with the evaluation that reports on it."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

from fedsec.api import Session
from fedsec.jobs import FedAvgRecipe
from fedsec.wire import arrays
from tests.integration.harness import Federation
from tests.integration.test_runtime import INITIAL, SCRIPT, linear_job

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
        assert (site, f"{kind} {number}") not in sent, f"{site} was sent round {number}'s model twice"
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


@pytest.mark.skipif(not importlib.util.find_spec("tenseal"), reason="needs tenseal")
@pytest.mark.federation(n_clients=2, he=True)
def test_an_he_job_sends_each_encrypted_model_once_and_reports_on_the_final_one(
    federation: Federation, tmp_path: Path
) -> None:
    federation.start_all()
    recipe = FedAvgRecipe("linear-he", INITIAL, SCRIPT, 2, 2, he=True, he_clip=16.0, he_max_clients=2)
    job = recipe.export(tmp_path / "job")
    with Session(federation.admin_kit) as s:
        job_id = s.submit_job(job)
        info = s.wait_for_job(job_id, timeout=180, poll=0.2)
    assert info.status == "finished:completed", info.reason
    assert info.progress["final"]["sites"] == ["site-1", "site-2"]
    assert info.progress["final"]["metrics"]["mse"] < info.progress["rounds"][0]["metrics"]["mse"]

    flow_log = (federation.kit("server1") / "store" / "jobs" / job_id / "workflow.log").read_text()
    sent: dict[tuple[str, str], tuple[int, int]] = {}
    for number, site, kind, size, count in _SENT.findall(flow_log):
        assert (site, f"{kind} {number}") not in sent, f"{site} was sent round {number}'s model twice"
        sent[(site, f"{kind} {number}")] = (int(size), int(count))
    initial_size = (job / "app" / "initial_model.fsa").stat().st_size
    checkpoints = federation.kit("server1") / "store" / "jobs" / job_id / "workspace" / "checkpoints"
    final_size = (checkpoints / "round_00001.fsh").stat().st_size
    for site in ("site-1", "site-2"):
        assert sent[(site, "train 0")] == (initial_size, 0)  # the plain initial model: the archive's own
        assert sent[(site, "train 1")][1] == sent[(site, "train 1")][0] > initial_size  # encrypted, sent whole
        assert sent[(site, "evaluate 2")] == (final_size, final_size)  # the final model, once, for the evaluation
        # the site keeps the final model it evaluated, decrypted
        kept = arrays.read_file(federation.kit(site) / "jobs" / job_id / "work" / "global_model.fsa")
        assert set(kept) == set(INITIAL) and not np.array_equal(kept["w"], INITIAL["w"])
    assert len(sent) == 6, sent
