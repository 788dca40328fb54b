"""fedsec.he.context: the client context holds the secret key, the server's never does."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tenseal as ts  # type: ignore[import-untyped]
from tenseal import sealapi

from fedsec.errors import HEError
from fedsec.he import codec, context, params

_NO_KEYS = {"save_public_key": False, "save_secret_key": False, "save_galois_keys": False, "save_relin_keys": False}


@pytest.fixture(scope="module")
def pair() -> tuple[bytes, bytes]:
    return context.make_contexts()


def _other_context(kind: str) -> Any:
    if kind == "ckks":
        ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40, 60])
        ctx.global_scale = 2**40
        return ctx
    if kind == "bfv-8192":
        plain = sealapi.PlainModulus.Batching(8192, params.PLAIN_MODULUS_BITS).value()
        return ts.context(ts.SCHEME_TYPE.BFV, 8192, plain, [60, 40, 60], encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC)
    if kind == "bfv-plain":
        return ts.context(ts.SCHEME_TYPE.BFV, 4096, 1032193, list(params.COEFF_MOD_BIT_SIZES))
    assert kind == "bfv-coeff"
    plain = sealapi.PlainModulus.Batching(4096, params.PLAIN_MODULUS_BITS).value()
    return ts.context(ts.SCHEME_TYPE.BFV, 4096, plain, [54, 55], encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC)


def test_client_context_has_the_secret_key_server_context_has_none(pair: tuple[bytes, bytes]) -> None:
    client, server = pair
    assert context.has_secret_key(context.load_client_context(client, "client"))
    assert not context.has_secret_key(context.load_server_context(server, "server"))
    assert len(server) < 1000 < len(client) < 100_000
    print(f"client context {len(client)} bytes, server context {len(server)} bytes")


def test_each_call_makes_a_new_key(pair: tuple[bytes, bytes]) -> None:
    assert context.make_contexts()[0] != pair[0]


def test_server_refuses_a_client_context(pair: tuple[bytes, bytes]) -> None:
    with pytest.raises(HEError, match="server: the HE context holds a secret key"):
        context.load_server_context(pair[0], "server")


def test_client_refuses_the_server_context(pair: tuple[bytes, bytes]) -> None:
    with pytest.raises(HEError, match="client: the HE context holds no secret key"):
        context.load_client_context(pair[1], "client")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b"",
        lambda b: b"garbage" * 10,
        lambda b: b[: len(b) // 2],
        lambda b: b[:-3],
        lambda b: bytes(200),
        lambda b: b"x" * (1 << 20) + b"x",
        lambda b: "not bytes",
    ],
    ids=["empty", "garbage", "truncated", "short-end", "zeros", "oversized", "str"],
)
@pytest.mark.parametrize("which", [0, 1], ids=["client", "server"])
def test_garbage_refused(pair: tuple[bytes, bytes], mangle: Any, which: int) -> None:
    data = mangle(pair[which])
    for load in (context.load_client_context, context.load_server_context):
        with pytest.raises(HEError, match="kit file"):
            load(data, "kit file")


@pytest.mark.parametrize("kind", ["ckks", "bfv-8192", "bfv-plain", "bfv-coeff"])
def test_wrong_parameters_refused(kind: str) -> None:
    ctx = _other_context(kind)
    with pytest.raises(HEError, match="does not have fedsec's parameters"):
        context.load_client_context(ctx.serialize(save_secret_key=True), "ctx")
    with pytest.raises(HEError, match="does not have fedsec's parameters"):
        context.load_server_context(ctx.serialize(**_NO_KEYS), "ctx")


def test_has_secret_key_wants_a_context() -> None:
    with pytest.raises(HEError, match="expected a TenSEAL context"):
        context.has_secret_key(b"bytes")


def test_server_cannot_decrypt(pair: tuple[bytes, bytes]) -> None:
    client = context.load_client_context(pair[0], "client")
    server = context.load_server_context(pair[1], "server")
    data = codec.encrypt_model(client, {"w": np.ones(10)}, 1.0, 4.0)
    with pytest.raises(HEError, match="holds no secret key"):
        codec.decrypt_model(server, data, "sum")
    with pytest.raises(HEError, match="holds no secret key"):
        codec.encrypt_model(server, {"w": np.ones(10)}, 1.0, 4.0)
    # Straight to TenSEAL: the server's copy of a ciphertext cannot be decrypted either.
    header_len = int.from_bytes(data[4:8], "little")
    record = data[8 + header_len + 4 :]
    vector = ts.bfv_vector_from(server, record)
    with pytest.raises(ValueError, match="secret_key"):
        vector.decrypt()
    assert ts.bfv_vector_from(client, record).decrypt()[:2] == [2**34, 2**34]  # 1.0 at 2**-34, a value a slot


def test_another_federations_key_is_detected(pair: tuple[bytes, bytes]) -> None:
    mine = context.load_client_context(pair[0], "mine")
    theirs = context.load_client_context(context.make_contexts()[0], "theirs")
    data = codec.encrypt_model(theirs, {"w": np.ones(10)}, 1.0, 4.0)
    with pytest.raises(HEError, match="a different federation's key"):
        codec.decrypt_model(mine, data, "sum")
