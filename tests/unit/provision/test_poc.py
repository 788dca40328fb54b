"""fedsec poc's checks that need no running process: the number of sites, the folder, stop with nothing started."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsec import cli
from fedsec.provision import poc


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["0"], "poc: the number of sites must be between 1 and 64, got 0"),
        (["65"], "poc: the number of sites must be between 1 and 64, got 65"),
        (["two"], "poc: expected the number of sites or 'stop', got 'two'"),
        (["stop", "--he"], "poc stop: --he is for starting a poc"),
    ],
)
def test_bad_arguments_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert cli.main(["poc", *args, "--dir", str(tmp_path / "p")]) == 2
    assert capsys.readouterr().err == f"fedsec: error: {message}\n"
    assert not (tmp_path / "p").exists()


def test_stop_with_nothing_started_says_so(tmp_path: Path) -> None:
    assert poc.stop(tmp_path) == [f"nothing to stop: no poc started from {tmp_path}"]
    assert poc.running(tmp_path) == []


def test_a_recorded_kit_whose_process_is_gone_is_not_running(tmp_path: Path) -> None:
    kit = tmp_path / "workspace" / "poc" / "prod_00" / "site-1"
    kit.mkdir(parents=True)
    (kit / "daemon.pid").write_text("1\n")  # pid 1 runs, but not from this kit
    (tmp_path / poc.RECORD).write_text(f"{kit}\n")
    assert poc.running(tmp_path) == []
