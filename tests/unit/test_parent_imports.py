"""What the server and site parents load before any job: no ML or tracking library, and no job-time code on a site.

Each parent's start (fedsec.cli's server / client commands) imports its entry module; what that
pulls in stays in the parent's memory for good and costs every start its CPU. Checked in a fresh
interpreter, from sys.modules; and for a site, in a running `fedsec client` process, from the
native libraries it has mapped (/proc/PID/maps).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fedsec.provision import load_project, provision
from tests.conftest import BASE_PROJECT, project_doc, write_project
from tests.integration.harness import wait_until

HEAVY = ("mlflow", "tenseal", "torch", "numpy", "prompt_toolkit", "pandas")
# Only a job needs these on a site: the job folder format, archives, replay records, the training-script API,
# and the X.509, signature and YAML code (a site's kit is checked at start in a child: fedsec.launch).
SITE_JOB_TIME = (
    "fedsec.jobs",
    "fedsec.jobs.meta",
    "fedsec.jobs.archive",
    "fedsec.site.replay",
    "fedsec.client",
    "zipfile",
    "cryptography",
    "cryptography.x509",
    "fedsec.pki.certs",
    "fedsec.pki.signing",
    "yaml",
    "_yaml",
)
# The native libraries of the above, as an idle site parent would map them.
SITE_JOB_TIME_LIBRARIES = ("/cryptography/", "/_yaml.", "/yaml/")

ENTRIES = {
    "server": "fedsec.server.app",
    "site": "fedsec.site.agent",
}


def _loaded(entry: str) -> set[str]:
    modules = f"fedsec.cli, fedsec.logs, fedsec.kit, fedsec.launch, {entry}"
    code = f"import sys, {modules}; print('\\n'.join(sorted(sys.modules)))"
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


def _site_kit(tmp_path: Path) -> Path:
    """site-1 of the base project, whose server is a free port of 127.0.0.1 where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    parts = [dict(p) for p in BASE_PROJECT["participants"]]
    parts[0].update(host_names=["127.0.0.1"], fl_port=port)
    yml = write_project(tmp_path / "p.yml", project_doc(participants=parts))
    return provision(load_project(yml), tmp_path / "ws").prod_dir / "site-1"


def test_a_site_built_from_its_checked_kit_loads_no_job_time_code(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from fedsec.launch import check_kit; "
        "from fedsec.pki.identity import Kind; from fedsec.site.agent import SiteAgent; "
        "kit = check_kit(Path(sys.argv[1]), Kind.CLIENT); SiteAgent(kit); print('\\n'.join(sorted(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(_site_kit(tmp_path))], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    loaded = set(out.stdout.split())
    assert "fedsec.site.agent" in loaded
    assert sorted(m for m in SITE_JOB_TIME if m in loaded) == []


def test_a_running_site_parent_maps_no_x509_or_yaml_library(tmp_path: Path) -> None:
    kit = _site_kit(tmp_path)
    log_path = tmp_path / "site.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedsec", "client", "--kit", str(kit)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:

        def dialed() -> bool:  # it dialed: its channel and TLS are set up
            assert proc.poll() is None, log_path.read_text()
            return b"cannot register yet" in log_path.read_bytes()

        wait_until(dialed, 120, "the site parent to dial its server")  # a bound for a hang, not a speed
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    assert "cygrpc" in maps  # the right process: a site parent with its gRPC channel
    assert sorted({lib for lib in SITE_JOB_TIME_LIBRARIES for line in maps.splitlines() if lib in line}) == []
