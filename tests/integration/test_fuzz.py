"""A bounded, seeded fuzz of every RPC of the Federation and Admin services against a real server.

Each RPC gets a few hundred mutated requests, sent as raw bytes through a generic stub (no
client-side serializer): random bytes, valid messages cut short or extended, bytes flipped,
huge repeated fields, oneofs in the wrong place, streams of several such messages. Sites call as
a site (site-1's certificate), admins as a lead with a live session, so the requests reach the
parsing past authentication. Whatever comes, the server answers with a status that names the
caller's problem: never INTERNAL or UNKNOWN, and its log holds no traceback.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message_factory
from google.protobuf.message import Message

from fedsec.api import Session
from fedsec.kit import ServerConfig, load_kit
from fedsec.transport.tls import channel
from fedsec.wire import fedsec_pb2
from tests.integration.harness import Federation
from tests.integration.test_authz_matrix import ADMINS

SEED = 20261202
PER_RPC = 200
LEAD = "lead@acme.org"
FD = pb_descriptor.FieldDescriptor
WORDS = ["", "server", "client", "*", "site-1", "..", "../../etc/passwd", "\0", "é" * 50, "x" * 5000]
JOB_IDS = ["", "0", "abcd", "9b2f3c4e-1d2a-4b5c-8d9e-0f1a2b3c4d5e", "../x", "Z" * 36]


def _value(field: FD, rng: random.Random, depth: int) -> Any:
    if field.type == FD.TYPE_MESSAGE:
        assert field.message_type is not None
        return _message(field.message_type, rng, depth + 1)
    if field.type == FD.TYPE_STRING:
        return rng.choice(JOB_IDS if "job" in field.name else WORDS)
    if field.type == FD.TYPE_BYTES:
        return rng.randbytes(rng.choice([0, 1, 31, 32, 33, 300, 20_000]))
    if field.type == FD.TYPE_BOOL:
        return rng.random() < 0.5
    if field.type in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return rng.choice([0.0, -1.0, 1e308, float("inf"), float("nan"), 3.5])
    if field.type == FD.TYPE_ENUM:
        assert field.enum_type is not None
        return rng.choice([v.number for v in field.enum_type.values] + [99])
    bits = 32 if field.type in (FD.TYPE_INT32, FD.TYPE_UINT32, FD.TYPE_SINT32, FD.TYPE_FIXED32) else 64
    unsigned = field.type in (FD.TYPE_UINT32, FD.TYPE_UINT64, FD.TYPE_FIXED32, FD.TYPE_FIXED64)
    low, high = (0, 2**bits - 1) if unsigned else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return rng.choice([0, 1, -1 if not unsigned else 2, low, high, rng.randint(low, high)])


def _message(desc: pb_descriptor.Descriptor, rng: random.Random, depth: int = 0, huge: bool = False) -> Message:
    """A message of type desc with random fields; huge: repeated fields get thousands of entries."""
    msg = message_factory.GetMessageClass(desc)()
    if depth > 3:
        return msg
    for field in desc.fields:
        if field.containing_oneof is not None and rng.random() < 0.5:
            continue  # leave some oneofs unset, set others (the last set wins)
        if rng.random() < 0.2:
            continue
        repeated = field.is_repeated
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            count = rng.choice([1, 3, 5000 if huge else 10])
            target = getattr(msg, field.name)
            key_field, value_field = (
                field.message_type.fields_by_name["key"],
                field.message_type.fields_by_name["value"],
            )
            for i in range(count):
                key = f"k{i}" if key_field.type == FD.TYPE_STRING else i
                value = _value(value_field, rng, depth)
                if value_field.type == FD.TYPE_MESSAGE:
                    target[key].CopyFrom(value)
                else:
                    target[key] = value
        elif repeated:
            count = rng.choice([0, 1, 2, 20_000 if huge else 5])
            target = getattr(msg, field.name)
            values = [_value(field, rng, depth) for _ in range(min(count, 50))] * max(1, count // 50)
            if field.type == FD.TYPE_MESSAGE:
                target.extend(values[:count] if count < 200 else values[:200])
            else:
                target.extend(values[:count])
        elif field.type == FD.TYPE_MESSAGE:
            getattr(msg, field.name).CopyFrom(_value(field, rng, depth))
        else:
            setattr(msg, field.name, _value(field, rng, depth))
    return msg


def _mutations(desc: pb_descriptor.Descriptor, rng: random.Random) -> Iterator[bytes]:
    """Endless mutated encodings of desc."""
    while True:
        valid = _message(desc, rng, huge=rng.random() < 0.1).SerializeToString()
        kind = rng.randrange(7)
        if kind == 0:
            yield rng.randbytes(rng.choice([0, 1, 7, 100, 2000]))
        elif kind == 1:
            yield valid[: rng.randint(0, len(valid))] if valid else b"\x0a"
        elif kind == 2:
            yield valid + rng.randbytes(rng.randint(1, 64))
        elif kind == 3 and valid:
            flipped = bytearray(valid)
            for _ in range(rng.randint(1, 4)):
                flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            yield bytes(flipped)
        elif kind == 4:  # a field number of the message with the wrong wire type, or a deep nest of length prefixes
            field = rng.choice(desc.fields) if desc.fields else None
            number = field.number if field is not None else 1
            yield bytes([(number << 3) | rng.choice([0, 1, 2, 5]) & 0x7F]) + rng.randbytes(9)
        elif kind == 5:
            nest = b""
            for _ in range(rng.choice([10, 200])):
                nest = b"\x0a" + _varint(len(nest)) + nest
            yield nest
        else:
            yield valid


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _call(ch: grpc.Channel, method: pb_descriptor.MethodDescriptor, payloads: list[bytes], md: Any) -> grpc.StatusCode:
    path = f"/{method.containing_service.full_name}/{method.name}"
    kinds = {
        (False, False): ch.unary_unary,
        (False, True): ch.unary_stream,
        (True, False): ch.stream_unary,
        (True, True): ch.stream_stream,
    }
    make: Callable[..., Any] = kinds[(method.client_streaming, method.server_streaming)]
    stub = make(path, request_serializer=None, response_deserializer=None)
    request: Any = iter(payloads) if method.client_streaming else payloads[0]
    try:
        reply = stub(request, timeout=4, metadata=md)
        if method.server_streaming:
            for _ in reply:
                pass
    except grpc.RpcError as exc:
        return exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    return grpc.StatusCode.OK


SERVICES = ("Federation", "Admin")
TRANSFERS = {"SubmitJob", "DownloadJob"}
METHODS = [(s, m.name) for s in SERVICES for m in fedsec_pb2.DESCRIPTOR.services_by_name[s].methods]


@pytest.mark.federation(n_clients=1, extra_admins=ADMINS)
def test_mutated_messages_never_cause_an_internal_error(federation: Federation) -> None:
    federation.start("server1")
    server = load_kit(federation.kit("server1")).config
    assert isinstance(server, ServerConfig)
    site_channel = channel(load_kit(federation.kit("site-1")), "localhost", int(server.fl_port), "server1")
    admin = Session(federation.kit(LEAD))
    try:
        admin.login(wait_for_server=True)
        admin_channel = channel(load_kit(federation.kit(LEAD)), "localhost", int(server.admin_port), "server1")
        rng = random.Random(SEED)
        codes: dict[tuple[str, str], dict[str, int]] = {}
        with futures.ThreadPoolExecutor(max_workers=4) as pool, futures.ThreadPoolExecutor(max_workers=1) as one:
            for service, name in METHODS:
                method = fedsec_pb2.DESCRIPTOR.services_by_name[service].methods_by_name[name]
                ch, md = (
                    (site_channel, None)
                    if service == "Federation"
                    else (admin_channel, [("fedsec-session", admin._token)])
                )
                source = _mutations(method.input_type, random.Random(rng.random()))
                batches = [[next(source) for _ in range(rng.choice([1, 1, 2, 5]))] for _ in range(PER_RPC)]
                tally = codes.setdefault((service, name), {})
                # an admin holds two transfers at once (limits.ADMIN_TRANSFER_PER_PEER): those go one by one
                runner = one if service == "Admin" and name in TRANSFERS else pool
                for code in runner.map(functools.partial(_call, ch, method, md=md), batches):
                    tally[code.name] = tally.get(code.name, 0) + 1
        admin_channel.close()
    finally:
        admin.close()
        site_channel.close()
    print("\n" + "\n".join(f"{s}.{n}: {t}" for (s, n), t in codes.items()))
    bad = {k: t for k, t in codes.items() if "INTERNAL" in t or "UNKNOWN" in t}
    assert bad == {}
    log = federation.log("server1")
    assert "Traceback" not in log, log[log.index("Traceback") - 500 :][:3000]
    assert federation.procs["server1"].poll() is None
    assert len(log.splitlines()) < 50 * len(METHODS)  # refusals are rate-limited, not one line each
