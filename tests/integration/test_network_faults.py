"""A bad link costs retries, never the job: faults from a real TCP proxy between the sites and the server.

Every site connection passes tests.faultproxy (Federation(through_proxy=True)).
A reset while a job archive moves resumes the download; resets at random from
round 1 on are retried; a site whose link is throttled keeps its heartbeats
(they have a connection of their own and never wait behind a transfer); an
upload cut by a reset is sent again and accepted. Each job needs every site
in every round (min_clients = all, no restarts), so any site lost to a fault
fails it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from fedsec.api import Session
from fedsec.jobs import FedAvgRecipe
from tests.faultproxy import FaultProxy
from tests.integration.harness import Federation, set_workflow, wait_until

SCRIPT = Path(__file__).parent / "scripts" / "bulk_client.py"
SITES = ["site-1", "site-2"]
MiB = 1 << 20


def model(n_bytes: int) -> dict[str, NDArray[Any]]:
    """Random float32 weights of about n_bytes: they do not deflate, so the job archive is as large."""
    rng = np.random.default_rng(7)
    return {"w": rng.normal(size=n_bytes // 4).astype(np.float32), "b": np.zeros(3, np.float32)}


def job(tmp: Path, n_bytes: int, rounds: int, *args: str) -> Path:
    recipe = FedAvgRecipe(
        "netfaults", model(n_bytes), SCRIPT, rounds, len(SITES), script_args=list(args), start_timeout=120.0
    )
    folder = recipe.export(tmp / f"job-{len(list(tmp.glob('job-*')))}")
    return set_workflow(folder, max_site_restarts=0)  # a site lost to a fault would fail the job


def proxy_of(federation: Federation) -> FaultProxy:
    assert federation.proxy is not None
    return federation.proxy


def assert_every_round_had_every_site(info: Any, rounds: int) -> None:
    assert info.status == "finished:completed", info.reason
    assert not info.progress.get("sites_left"), info.progress.get("sites_left")
    done = info.progress["rounds"]
    assert len(done) == rounds
    assert all(sorted(r["sites"]) == SITES for r in done), done


def site_logs(federation: Federation) -> str:
    return "".join(federation.log(s) for s in SITES)


@pytest.mark.federation(n_clients=2, through_proxy=True)
def test_a_reset_while_the_job_archive_moves_resumes_the_download(federation: Federation, tmp_path: Path) -> None:
    proxy = proxy_of(federation)
    proxy.reset_after(5 * MiB // 2, "down", count=len(SITES))  # cut the 4 MiB archive once per site, 2.5 MiB in
    folder = job(tmp_path, 4 * MiB, rounds=2)
    federation.start_all()
    with Session(federation.admin_kit) as s:
        job_id = s.submit_job(folder)
        info = s.wait_for_job(job_id, timeout=240)
    assert_every_round_had_every_site(info, 2)
    assert proxy.resets == len(SITES)
    logs = site_logs(federation)
    assert f"fetch job {job_id} failed" in logs
    assert f"job {job_id} archive: resuming from byte" in logs  # tried again from where it broke
    assert "cannot start" not in logs


@pytest.mark.federation(n_clients=2, through_proxy=True)
def test_random_resets_from_round_one_on_are_retried(federation: Federation, tmp_path: Path) -> None:
    proxy = proxy_of(federation)
    folder = job(tmp_path, 256 * 1024, 4, "--slow-site", "site-2", "--sleep", "2")
    federation.start_all()
    with Session(federation.admin_kit) as s:
        job_id = s.submit_job(folder)
        fast, slow = (federation.kit(site) / "jobs" / job_id / "log.txt" for site in SITES)
        wait_until(
            lambda: fast.exists() and "round 0 sent accepted=True" in fast.read_text(), 120, "site-1's round 0 result"
        )
        assert "round 0 sent" not in slow.read_text()  # site-1 waits for round 1 while site-2 trains
        proxy.reset_all()  # every link breaks now, a held task request among them
        proxy.flaky(0.05, seed=15)  # and from now on 5% of the chunks the proxy forwards reset their connection
        info = s.wait_for_job(job_id, timeout=300)
        proxy.pass_through()
    assert_every_round_had_every_site(info, 4)
    assert proxy.resets > len(SITES)


@pytest.mark.federation(n_clients=2, through_proxy=True, heartbeat_timeout=3.0)
def test_a_throttled_site_is_not_declared_gone(federation: Federation, tmp_path: Path) -> None:
    proxy = proxy_of(federation)
    proxy.select(lambda port: federation.port_owner(port) == "site-1")  # only site-1's link is slow
    proxy.throttle(MiB)  # about 1 MB/s each way: the 6 MiB archive takes twice the heartbeat timeout
    folder = job(tmp_path, 6 * MiB, rounds=1)
    federation.start_all()
    with Session(federation.admin_kit) as s:
        job_id = s.submit_job(folder)
        info = s.wait_for_job(job_id, timeout=300)
    assert proxy.accepted_selected >= 1  # site-1's connections went through the throttle
    assert_every_round_had_every_site(info, 1)
    assert "is gone" not in federation.log("server1")


@pytest.mark.federation(n_clients=2, through_proxy=True)
def test_an_upload_cut_by_a_reset_is_sent_again_and_accepted(federation: Federation, tmp_path: Path) -> None:
    proxy = proxy_of(federation)
    # the first upload is cut just before its end: the site has sent it all and waits for the server's answer
    proxy.reset_after(4 * MiB - 64 * 1024, "up", count=1)
    folder = job(tmp_path, 4 * MiB, rounds=2)
    federation.start_all()
    with Session(federation.admin_kit) as s:
        job_id = s.submit_job(folder)
        info = s.wait_for_job(job_id, timeout=240)
    assert proxy.resets == 1
    assert_every_round_had_every_site(info, 2)
    assert f"upload of the result of job {job_id}" in site_logs(federation)  # cut, then sent again
    scripts = "".join((federation.kit(site) / "jobs" / job_id / "log.txt").read_text() for site in SITES)
    assert "sent accepted=False" not in scripts


@pytest.mark.federation(n_clients=2, through_proxy=True)
def test_a_task_download_cut_by_a_reset_is_fetched_again(federation: Federation, tmp_path: Path) -> None:
    proxy = proxy_of(federation)
    # a site's transfer link carries the 4 MiB archive (round 0's model is the archive's own), then round 1's
    # 4 MiB model: cut the first in that model
    proxy.reset_after(6 * MiB, "down", count=1)
    folder = job(tmp_path, 4 * MiB, rounds=2)
    federation.start_all()
    with Session(federation.admin_kit) as s:
        job_id = s.submit_job(folder)
        info = s.wait_for_job(job_id, timeout=240)
    assert proxy.resets == 1
    assert_every_round_had_every_site(info, 2)
    assert f"task of job {job_id} failed" in site_logs(federation)  # cut, then fetched again
