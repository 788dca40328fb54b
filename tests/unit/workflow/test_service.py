"""The workflow service's stream handling: a cancelled result stream is an interrupted upload, not a bad one."""

from __future__ import annotations

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
