"""The warm launcher's slot: only sandboxed, used once, replaced when the site settings change, stopped on close."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsec.site import sandbox
from fedsec.site.launcher import SLOT_PREFIX, WarmLauncher
from fedsec.site.settings import Isolation, SiteSettings

needs_bwrap = pytest.mark.skipif(not sandbox.BWRAP.is_file(), reason="bubblewrap is not installed")


def _slots(kit: Path) -> list[Path]:
    return sorted((kit / "jobs").glob(SLOT_PREFIX + "*"))


def test_without_a_sandbox_no_process_is_kept(tmp_path: Path) -> None:
    warm = WarmLauncher(tmp_path, tmp_path / "jobs")
    warm.fill(SiteSettings(isolation=Isolation.NONE), isolated=False)
    assert warm.take(SiteSettings(isolation=Isolation.NONE), isolated=False) is None
    assert _slots(tmp_path) == []


@needs_bwrap
def test_a_slot_is_taken_once(tmp_path: Path) -> None:
    warm = WarmLauncher(tmp_path, tmp_path / "jobs")
    try:
        warm.fill(SiteSettings(), isolated=True)
        [folder] = _slots(tmp_path)
        assert (folder / "work").is_dir() and (folder / "log.txt").exists()
        slot = warm.take(SiteSettings(), isolated=True)
        assert slot is not None and slot.folder == folder and slot.proc.poll() is None
        assert warm.take(SiteSettings(), isolated=True) is None  # used once: the next job's is started anew
        slot.discard()
        assert slot.proc.poll() is not None and not folder.exists() and not slot.sockets.exists()
    finally:
        warm.close()


@needs_bwrap
def test_a_slot_that_no_longer_fits_the_settings_is_not_used(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    warm = WarmLauncher(tmp_path / "kit", tmp_path / "kit" / "jobs")
    try:
        warm.fill(SiteSettings(), isolated=True)
        [folder] = _slots(tmp_path / "kit")
        # the operator listed a data set since: the ready sandbox does not bind it
        assert warm.take(SiteSettings(datasets={"d": str(data)}), isolated=True) is None
        assert not folder.exists()
        warm.fill(SiteSettings(), isolated=True)
        assert warm.take(SiteSettings(isolation=Isolation.NONE), isolated=False) is None  # a job not sandboxed
    finally:
        warm.close()
    assert _slots(tmp_path / "kit") == []


@needs_bwrap
def test_close_stops_the_ready_process(tmp_path: Path) -> None:
    warm = WarmLauncher(tmp_path, tmp_path / "jobs")
    warm.fill(SiteSettings(), isolated=True)
    slot = warm._slot
    assert slot is not None
    warm.close()
    assert slot.proc.poll() is not None and _slots(tmp_path) == []
    warm.fill(SiteSettings(), isolated=True)  # closed: the site stops, nothing new starts
    assert _slots(tmp_path) == []
