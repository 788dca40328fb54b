"""The server parent tells a job's workflow process which sites are alive, with no registration lost.

A site that registers while the workflow becomes ready (as every site does when a standby replica
takes over and resumes a job) must reach the workflow: a push that read the alive sites before it
registered may never be the last one the workflow hears."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from fedsec.server.jobs import JobManager, _Workflow
from fedsec.server.store import JobStore
from fedsec.wire import fedsec_pb2


class RecordingStub:
    """A workflow stub that keeps every site list pushed to it."""

    def __init__(self) -> None:
        self.pushed: list[list[str]] = []
        self._lock = threading.Lock()

    def UpdateSites(self, request: fedsec_pb2.SiteList, timeout: float) -> fedsec_pb2.Empty:
        with self._lock:
            self.pushed.append(list(request.sites))
        return fedsec_pb2.Empty()


class RunningProcess:
    """A workflow process that keeps running (the reaper leaves it alone)."""

    pid = 0

    def poll(self) -> int | None:
        return None


class Registry:
    """The alive sites; the first read is overtaken by a site registering from another thread."""

    def __init__(self) -> None:
        self.alive = frozenset({"site-1", "site-2"})
        self.manager: JobManager | None = None
        self.registration: threading.Thread | None = None

    def __call__(self) -> frozenset[str]:
        before = self.alive
        if self.registration is None:
            self.registration = threading.Thread(target=self._register)
            self.registration.start()
            self.registration.join(2.0)  # the old code pushed nothing for it (the workflow was not ready yet)
        return before

    def _register(self) -> None:
        self.alive = frozenset({"site-1", "site-2", "site-3"})
        assert self.manager is not None
        self.manager.sites_changed(self.alive)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    with JobStore(tmp_path / "store") as s:
        yield s


def test_a_site_registering_as_the_workflow_becomes_ready_reaches_it(store: JobStore, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    registry = Registry()
    manager = JobManager(store, tmp_path / "run", registry, cast(Any, None), None)
    registry.manager = manager
    stub = RecordingStub()
    record = store.add(
        name="j", submitter="admin@acme.org", submitter_org="acme", submitter_role="project_admin",
        meta_json="{}", num_rounds=1,
    )  # fmt: skip
    store.set_running(record.job_id)
    proc = cast(Any, RunningProcess())
    flow = _Workflow(
        record.job_id, frozenset(), proc, cast(Any, None), cast(Any, stub), 60.0, 1, time.monotonic(), set()
    )
    try:
        with manager._lock:
            manager._workflows[record.job_id] = flow
        manager._mark_ready(flow)
        assert registry.registration is not None
        registry.registration.join(30)
        assert stub.pushed, "the workflow heard of no site"
        assert stub.pushed[-1] == ["site-1", "site-2", "site-3"], stub.pushed
    finally:
        with manager._lock:  # nothing to stop: the flow has no process
            manager._workflows.clear()
        manager.close()
