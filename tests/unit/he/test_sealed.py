"""Exact sealing (FSX1) and the FedOpt bundle (FSO1): bytes come back unchanged, only with the federation's key."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tenseal")

from fedsec.errors import HEError, WireError
from fedsec.he import context, sealed

DIGEST = "ab" * 32


@pytest.fixture(scope="module")
def keys() -> tuple[Any, Any]:
    client, server = context.make_contexts()
    return context.load_client_context(client, "client"), context.load_server_context(server, "server")


@pytest.mark.parametrize("size", [0, 1, 5 * 4096, 5 * 4096 + 1])  # none, one, and just over one ciphertext
def test_sealed_bytes_come_back_exactly(keys: tuple[Any, Any], size: int) -> None:
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    if size:
        data = b"\xff" + data[1:]  # the top of a slot's range
    blob = sealed.seal(keys[0], data)
    assert sealed.unseal(keys[0], blob, "sealed") == data
    assert sealed.ciphertexts_for(size) == (0 if size == 0 else 1 if size <= 5 * 4096 else 2)
    sealed.check_sealed(keys[1], io.BytesIO(blob).read, len(blob), "sealed")  # the server checks, keyless


def test_two_seals_of_the_same_bytes_differ_as_ciphertexts_only(keys: tuple[Any, Any]) -> None:
    data = bytes(range(256)) * 10
    first, second = sealed.seal(keys[0], data), sealed.seal(keys[0], data)
    assert first != second  # encryption is randomised
    assert sealed.unseal(keys[0], first, "a") == sealed.unseal(keys[0], second, "b") == data


def test_only_the_federations_key_unseals(keys: tuple[Any, Any]) -> None:
    blob = sealed.seal(keys[0], b"the optimizer state" * 100)
    with pytest.raises(HEError, match="holds no secret key"):
        sealed.unseal(keys[1], blob, "sealed")
    with pytest.raises(HEError, match="holds no secret key"):
        sealed.seal(keys[1], b"x")
    other = context.load_client_context(context.make_contexts()[0], "other")
    with pytest.raises(HEError, match="does not decrypt to sealed bytes|padding is not zero"):
        sealed.unseal(other, blob, "sealed")


def test_a_malformed_seal_is_refused(keys: tuple[Any, Any]) -> None:
    blob = sealed.seal(keys[0], b"x" * 100)
    cases = [
        (b"FSA1" + blob[4:], "not a sealed container"),
        (blob[:-10], "truncated in sealed record 0|cannot hold"),
        (blob + b"\0", "trailing data"),
    ]
    for bad, message in cases:
        with pytest.raises(WireError, match=message):
            sealed.check_sealed(keys[1], io.BytesIO(bad).read, len(bad), "sealed")
        with pytest.raises(WireError, match=message):
            sealed.unseal(keys[0], bad, "sealed")


def test_a_bundle_splits_into_its_digest_state_and_rest() -> None:
    state, rest = b"S" * 10, b"FSH1 and the rest"
    data = sealed.bundle_header(DIGEST, len(state)) + state + rest
    digest, got_state, got_rest = sealed.split_bundle(data, "bundle")
    assert (digest, bytes(got_state), bytes(got_rest)) == (DIGEST, state, rest)
    with pytest.raises(WireError, match="digest must be 64 lower-case hex digits"):
        sealed.bundle_header("AB" * 32, 1)
    with pytest.raises(WireError, match="state_bytes must be a count within the"):
        sealed.split_bundle(sealed.bundle_header(DIGEST, 100) + state, "bundle")
    with pytest.raises(WireError, match="not a FedOpt bundle"):
        sealed.split_bundle(b"FSX1" + data[4:], "bundle")
