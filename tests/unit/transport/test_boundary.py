"""rpc_boundary: a fedsec error's own message and code; anything else INTERNAL with an error id found in the log."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from fedsec.errors import AuthError, ConfigError, JobError, StoreUnavailableError, WireError
from fedsec.transport import tls


class Aborted(Exception):
    pass


class Context:
    """The little of grpc.ServicerContext the boundary uses."""

    def __init__(self, peer: str = "site-1") -> None:
        self.name = peer
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"x509_common_name": [self.name.encode()]}

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise Aborted


class Service:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    @tls.rpc_boundary
    def Unary(self, request: Any, context: Any) -> Any:
        raise self.exc

    @tls.rpc_boundary
    def Stream(self, request: Any, context: Any) -> Iterator[int]:
        yield 1
        raise self.exc


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (AuthError("role member may not operate"), grpc.StatusCode.PERMISSION_DENIED),
        (WireError("chunk of 1 bytes"), grpc.StatusCode.INVALID_ARGUMENT),
        (ConfigError("meta.yml: nested deeper"), grpc.StatusCode.INVALID_ARGUMENT),
        (JobError("job x: still running"), grpc.StatusCode.FAILED_PRECONDITION),
        (StoreUnavailableError("job store (postgres): cannot connect"), grpc.StatusCode.ABORTED),
    ],
)
def test_a_fedsec_error_keeps_its_message(exc: Exception, code: grpc.StatusCode) -> None:
    context = Context()
    with pytest.raises(Aborted):
        Service(exc).Unary(None, context)
    assert context.aborted == (code, str(exc))


@pytest.mark.parametrize("method", ["Unary", "Stream"])
def test_anything_else_is_internal_with_an_error_id_in_one_log_line(
    method: str, caplog: pytest.LogCaptureFixture
) -> None:
    context = Context(peer=f"peer-{method}")
    secret = "/srv/fedsec/kit/startup/server.key is missing"
    with caplog.at_level(logging.INFO, logger="fedsec.transport.tls"), pytest.raises(Aborted):
        result = getattr(Service(KeyError(secret)), method)(None, context)
        list(result)
    assert context.aborted is not None
    code, details = context.aborted
    assert code is grpc.StatusCode.INTERNAL and secret not in details
    ident = re.search(r"error id ([0-9a-f]{12})", details)
    assert ident is not None, details
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert f"rpc={method} peer=peer-{method} failed: KeyError" in record.getMessage()
    assert record.getMessage().endswith(f"id={ident.group(1)}")


def test_a_flood_of_failures_logs_one_line_and_one_traceback(caplog: pytest.LogCaptureFixture) -> None:
    service = Service(ValueError("undecodable"))
    details = set()
    with caplog.at_level(logging.INFO, logger="fedsec.transport.tls"):
        for _ in range(500):
            context = Context(peer="flooder")
            with pytest.raises(Aborted):
                service.Unary(None, context)
            assert context.aborted is not None
            details.add(context.aborted[1])
        for _ in range(500):
            with pytest.raises(Aborted):
                Service(WireError("bad chunk")).Unary(None, Context(peer="flooder"))
    lines = [r for r in caplog.records if "flooder" in r.getMessage()]
    assert len(lines) == 2  # one failure line, one refusal line
    assert sum(1 for r in lines if r.exc_info) <= 1
    assert len(details) == 1  # every answer names the error id of the one logged line
