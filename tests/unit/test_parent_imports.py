"""What the server and site parents load before any job: no ML or tracking library, and no job-time code on a site.

Each parent's start (fedsec.cli's server / client commands) imports its entry module; what that
pulls in stays in the parent's memory for good and costs every start its CPU. Checked in a fresh
interpreter, from sys.modules.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("mlflow", "tenseal", "torch", "numpy", "prompt_toolkit", "pandas")
# Only a job needs these on a site: the job folder format, archives, replay records, the training-script API.
SITE_JOB_TIME = (
    "fedsec.jobs",
    "fedsec.jobs.meta",
    "fedsec.jobs.archive",
    "fedsec.site.replay",
    "fedsec.client",
    "zipfile",
)

ENTRIES = {
    "server": "fedsec.server.app",
    "site": "fedsec.site.agent",
}


def _loaded(entry: str) -> set[str]:
    code = f"import sys, fedsec.cli, fedsec.logs, fedsec.kit, {entry}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("parent", sorted(ENTRIES))
def test_a_parent_loads_no_ml_or_tracking_library(parent: str) -> None:
    loaded = _loaded(ENTRIES[parent])
    assert ENTRIES[parent] in loaded
    assert sorted(m for m in loaded if m.split(".")[0] in HEAVY) == []


def test_an_idle_site_loads_no_job_time_code() -> None:
    loaded = _loaded(ENTRIES["site"])
    assert sorted(m for m in SITE_JOB_TIME if m in loaded) == []
