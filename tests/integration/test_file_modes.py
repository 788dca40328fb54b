"""Everything the server and the sites write about a job is for the kit's owner only: 0600 files in 0700 folders."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from fedsec.api import Session
from tests.integration.harness import Federation
from tests.integration.test_runtime import linear_job


def _loose(root: Path) -> list[str]:
    """Files and folders under root that a group or others may read, write or enter."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode) or stat.S_ISSOCK(mode):
            continue
        if mode & 0o077:
            found.append(f"{path.relative_to(root.parent)} {stat.filemode(mode)}")
    return found


@pytest.mark.federation(n_clients=2)
def test_job_records_results_and_tracking_are_private(federation: Federation, tmp_path: Path) -> None:
    federation.start_all()
    with Session(federation.admin_kit) as s:
        job_id = s.submit_job(linear_job(tmp_path, rounds=1, min_clients=2))
        assert s.wait_for_job(job_id, timeout=240).status == "finished:completed"
    server = federation.kit("server1")
    written = [server / "store", server / "tracking", server / "audit", server / "run"]
    written += [federation.kit(f"site-{i}") / part for i in (1, 2) for part in ("jobs", "tracking", "run")]
    assert any((server / "tracking").rglob("*")), "the job's metrics were tracked"
    assert [bad for root in written if root.exists() for bad in _loose(root)] == []
