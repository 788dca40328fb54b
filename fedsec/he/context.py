"""TenSEAL contexts: make the federation's pair, load them back with their checks.

make_contexts() builds one BFV context with the parameters of fedsec.he.params and returns
two serializations of it: the clients' (with the secret key, ~62 KB) and the server's (the
parameters alone, ~90 bytes: no secret, public, relinearisation or Galois key). Encryption
is symmetric, so encrypting needs the secret key too: only clients can encrypt or decrypt,
the server can only add ciphertexts.

Loading refuses anything that is not a BFV context with exactly these parameters, and
refuses to give the server a context that holds a secret key. This module never writes
files and never logs key material; errors from TenSEAL become HEError.
"""

from __future__ import annotations

import functools
from typing import Any

from fedsec import _deps, limits
from fedsec.errors import HEError
from fedsec.he import params

try:
    import tenseal as ts  # type: ignore[import-untyped]
    from tenseal import sealapi
except ImportError as exc:  # the he extra is not installed
    raise _deps.missing("tenseal", exc) from exc

# What a TenSEAL (pybind11) call raises on bad input; translated into fedsec errors.
TENSEAL_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    RuntimeError,
    TypeError,
    IndexError,
    OverflowError,
    MemoryError,
)


@functools.cache
def _plain_modulus() -> int:
    value: int = sealapi.PlainModulus.Batching(params.POLY_MODULUS_DEGREE, params.PLAIN_MODULUS_BITS).value()
    return value


@functools.cache
def _coeff_moduli() -> tuple[int, ...]:
    moduli = sealapi.CoeffModulus.Create(params.POLY_MODULUS_DEGREE, list(params.COEFF_MOD_BIT_SIZES))
    return tuple(int(m.value()) for m in moduli)


def make_contexts() -> tuple[bytes, bytes]:
    """A fresh key: (client context with the secret key, server context with no keys).

    Raises HEError if TenSEAL cannot build the context.
    """
    try:
        ctx = ts.context(
            ts.SCHEME_TYPE.BFV,
            params.POLY_MODULUS_DEGREE,
            _plain_modulus(),
            list(params.COEFF_MOD_BIT_SIZES),
            encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
            n_threads=1,
        )
        client: bytes = ctx.serialize(save_secret_key=True)
        server: bytes = ctx.serialize(
            save_public_key=False, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
        )
    except TENSEAL_ERRORS as exc:
        raise HEError(f"cannot create the HE context: {exc}") from exc
    return client, server


def load_client_context(data: bytes, where: str) -> Any:
    """The client context in data: BFV with fedsec's parameters, holding the secret key.

    Raises HEError if data does not parse, has other parameters, or holds no secret key.
    """
    ctx = _load(data, where)
    if not has_secret_key(ctx):
        raise HEError(f"{where}: the HE context holds no secret key (is it the server's context?)")
    return ctx


def load_server_context(data: bytes, where: str) -> Any:
    """The server context in data: BFV with fedsec's parameters and no secret key.

    The server must never hold the secret key: a context that has one is refused.
    Raises HEError if data does not parse, has other parameters, or holds a secret key.
    """
    ctx = _load(data, where)
    if has_secret_key(ctx):
        raise HEError(f"{where}: the HE context holds a secret key; the server must never have one")
    return ctx


def has_secret_key(ctx: Any) -> bool:
    """Whether the TenSEAL context ctx holds the secret key; HEError if ctx is not a context."""
    if not isinstance(ctx, ts.Context):
        raise HEError(f"expected a TenSEAL context, got a {type(ctx).__name__}")
    return bool(ctx.is_private())


def first_parms_id(ctx: Any) -> list[int]:
    """The parms id of fresh ciphertexts under ctx (the only level fedsec's ciphertexts have)."""
    parms_id: list[int] = ctx.seal_context().data.first_parms_id()
    return parms_id


def _load(data: bytes, where: str) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise HEError(f"{where}: an HE context must be bytes, got a {type(data).__name__}")
    if len(data) > limits.MAX_HE_CONTEXT_BYTES:
        raise HEError(f"{where}: HE context of {len(data)} bytes is over the limit of {limits.MAX_HE_CONTEXT_BYTES}")
    try:
        ctx = ts.context_from(bytes(data), n_threads=1)
    except TENSEAL_ERRORS as exc:
        raise HEError(f"{where}: not a valid HE context: {exc}") from exc
    _check_parameters(ctx, where)
    return ctx


def _check_parameters(ctx: Any, where: str) -> None:
    try:
        seal = ctx.seal_context().data
        parms = seal.key_context_data().parms()
        found = (
            parms.scheme() == ts.SCHEME_TYPE.BFV.value,
            int(parms.poly_modulus_degree()),
            tuple(int(m.value()) for m in parms.coeff_modulus()),
            int(parms.plain_modulus().value()),
            bool(seal.parameters_set()),
        )
    except TENSEAL_ERRORS as exc:
        raise HEError(f"{where}: cannot read the HE context's parameters: {exc}") from exc
    expected = (True, params.POLY_MODULUS_DEGREE, _coeff_moduli(), _plain_modulus(), True)
    if found != expected:
        raise HEError(
            f"{where}: the HE context does not have fedsec's parameters (BFV, N={params.POLY_MODULUS_DEGREE}, "
            f"coefficient moduli of {'+'.join(map(str, params.COEFF_MOD_BIT_SIZES))} bits, "
            f"a {params.PLAIN_MODULUS_BITS}-bit plain modulus); it has N={found[1]}, "
            f"{len(found[2])} coefficient moduli, plain modulus {found[3]}" + ("" if found[0] else ", and is not BFV")
        )
