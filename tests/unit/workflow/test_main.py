"""python -m fedsec.workflow: a workflow that cannot start ends failed with a reason that names no server path."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from fedsec.workflow.__main__ import main


def test_failed_start_reason_has_no_kit_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kit = tmp_path / "server1"
    job_dir = kit / "store" / "jobs" / "0123456789abcdef"
    (job_dir / "job").mkdir(parents=True)
    (job_dir / "job" / "meta.yml").write_text("format: fedsec-job/1\nname: x\nmin_clients: 1\n")  # no app/config.yml
    monkeypatch.setattr(logging.getLogger(), "handlers", list(logging.getLogger().handlers))
    argv = ["--job-dir", str(job_dir), "--job-id", "0123456789abcdef", "--socket", str(tmp_path / "wf.sock")]
    assert main([*argv, "--tracking-dir", str(kit / "tracking")]) == 0
    result = json.loads((job_dir / "workspace" / "result.json").read_text())
    assert result["status"] == "failed"
    assert "app/config.yml" in result["reason"]
    assert str(kit) not in result["reason"] and str(tmp_path) not in result["reason"], result["reason"]
