"""Fixtures for integration tests: a running federation whose logs are printed when a test fails."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.integration import harness
from tests.integration.harness import Federation


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call" and report.failed:
        fed = getattr(item, "_federation", None)
        if fed is not None:
            report.sections.append(("fedsec logs", fed.dump_logs()))
    return report


@pytest.fixture
def federation(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Federation]:
    """A provisioned, not yet started federation (3 clients, 3 s heartbeat timeout by default)."""
    marker = request.node.get_closest_marker("federation")
    kwargs = dict(marker.kwargs) if marker else {}
    kwargs.setdefault("heartbeat_timeout", 3.0)
    fed = Federation(tmp_path, **kwargs)
    request.node._federation = fed
    try:
        yield fed
    finally:
        fed.stop()


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """The URL of a real `mlflow server` on 127.0.0.1 with its store in tmp_path/mlflow-server."""
    with harness.mlflow_server(tmp_path / "mlflow-server") as url:
        yield url
