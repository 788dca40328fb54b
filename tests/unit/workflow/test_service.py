"""The workflow service's stream handling: a cancelled result stream is an interrupted upload, not a bad one."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc
import pytest

from fedsec.errors import TransferInterruptedError, WireError
from fedsec.wire import fedsec_pb2
from fedsec.workflow.service import _data


def _parts(*data: bytes, then: BaseException | None = None) -> Iterator[fedsec_pb2.ResultPart]:
    for chunk in data:
        yield fedsec_pb2.ResultPart(data=chunk)
    if then is not None:
        raise then


def test_a_cancelled_stream_is_an_interrupted_transfer() -> None:
    chunks = _data(_parts(b"ab", b"cd", then=grpc.RpcError()))
    assert next(chunks) == b"ab" and next(chunks) == b"cd"
    with pytest.raises(TransferInterruptedError, match="cancelled before its end"):
        next(chunks)


def test_a_second_header_is_a_protocol_error() -> None:
    parts = iter([fedsec_pb2.ResultPart(data=b"x"), fedsec_pb2.ResultPart(header=fedsec_pb2.ResultHeader())])
    with pytest.raises(WireError) as err:
        list(_data(parts))
    assert not isinstance(err.value, TransferInterruptedError)


def test_tracking_quota_per_site_and_per_job(caplog: pytest.LogCaptureFixture) -> None:
    from fedsec.workflow.service import TrackingQuota

    quota = TrackingQuota(per_site=100, per_job=250)
    with caplog.at_level(logging.WARNING, logger="fedsec.workflow.service"):
        assert quota.allows("site-1")
        quota.add("site-1", 100)
        assert not quota.allows("site-1") and not quota.allows("site-1")  # its share is used up
        assert quota.allows("site-2")  # another site's share is its own
        quota.add("site-2", 99)
        quota.add("site-3", 60)
        assert not quota.allows("site-4")  # the job's total is reached: nobody writes more
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2  # one line per site, however often it sends
    assert "site-1 wrote 0 MiB of tracking events, its quota for one job" in warnings[0]
    assert "the quota of one job; later events of site-4 are dropped" in warnings[1]
