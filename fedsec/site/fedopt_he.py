"""FedOpt under HE, on the site: the optimizer step the server cannot run, done in the site parent.

The server never sees the aggregate of an HE job, so each site sampled for a round (and every site in
the final evaluation) steps the server optimizer itself, with the one implementation the server uses
in plain jobs (fedsec.fedopt):

1. The task brings an FSO1 bundle (fedsec.he.sealed): the global model and optimizer state of the
   round before, sealed exactly, with the digest the sites of that round agreed on; and the round's
   encrypted sum of weighted differences. Round 0 brings the plain initial model and no state.
2. The site unseals the model and state and checks their digest (a wrong or replayed state is
   refused here), decrypts the sum into the float64 average difference, and steps: the new global
   model, which the training script gets, and the new state.
3. It seals the new model and state again, with their digest, and that bundle heads the site's
   upload; the server compares the sampled sites' digests, keeps one sealed copy and forwards it.

Updates under FedOpt are differences to the global model (full weights from the script are turned
into them here), so he.clip bounds one round's change, not the weights. Everything is deterministic
(float64, elementwise, the model's order): sites with the same inputs seal the same bytes, though as
ciphertexts (randomised) they differ. This module holds no key of its own: callers pass the context.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedsec import fedopt
from fedsec.errors import HEError, WireError
from fedsec.jobs.meta import StrategyConfig
from fedsec.wire import arrays


@dataclass(frozen=True)
class SiteStep:
    """One task's step on this site: the global model the script trains from, and the head of its upload."""

    model: dict[str, NDArray[Any]] = field(repr=False)
    prefix: bytes = field(repr=False)  # FSO1 header + the sealed model and state: what every upload starts with
    digest: str = ""


def step(
    ctx: Any,
    job_id: str,
    strategy: StrategyConfig,
    current_round: int,
    payload: bytes,
    encrypted: bool,
    where: str,
) -> SiteStep:
    """The global model of current_round and the sealed bundle head to send back, from a task's payload.

    strategy: the signed job's (fedopt with its optimizer). encrypted: the payload is a bundle (else the
    plain initial model, round 0). Raises HEError for a state whose digest is not the one the sites
    agreed on, or that does not decrypt; WireError for a malformed payload; JobError for a state that
    does not fit the model.
    """
    from fedsec.he.codec import decrypt_model  # tenseal: only in HE jobs
    from fedsec.he.sealed import split_bundle, unseal

    if strategy.optimizer is None:
        raise WireError(f"{where}: a fedopt job without an optimizer")
    if not encrypted:
        model, state = arrays.decode(payload, where), {}
    else:
        agreed, sealed, rest = split_bundle(payload, where)
        plain = unseal(ctx, sealed, f"{where}: the sealed global model and state")
        if fedopt.digest(job_id, current_round - 1, plain) != agreed:
            raise HEError(
                f"{where}: the global model and optimizer state of round {current_round - 1} do not have the "
                f"digest {agreed[:16]}... its sites agreed on (the server sent another state, or it was corrupted)"
            )
        base, kept = fedopt.split_plaintext(plain, where)
        mean, _ = decrypt_model(ctx, rest, f"{where}: the encrypted sum", float64=True)
        if [(k, v.shape) for k, v in mean.items()] != [(k, v.shape) for k, v in base.items()]:
            raise WireError(f"{where}: the encrypted sum's tensors are not the global model's")
        optimizer = fedopt.FedOptStep(strategy.optimizer, _settings(strategy))
        optimizer.restore(kept, f"{where}: the optimizer state")
        model = optimizer.step(arrays.specs_of(base, where), base, lambda name, _x: mean[name])
        state = optimizer.state()
    plain = fedopt.sealed_plaintext(model, state)
    return SiteStep(model, *_sealed_head(ctx, job_id, current_round, plain))


def _sealed_head(ctx: Any, job_id: str, current_round: int, plain: bytes) -> tuple[bytes, str]:
    from fedsec.he.sealed import bundle_header, seal

    digest = fedopt.digest(job_id, current_round, plain)
    sealed = seal(ctx, plain)
    return bundle_header(digest, len(sealed)) + sealed, digest


def _settings(strategy: StrategyConfig) -> dict[str, float]:
    return {k: float(v) for k, v in strategy.settings().items() if k != "optimizer"}


def update_difference(
    params: dict[str, NDArray[Any]], meta: dict[str, Any], base: dict[str, NDArray[Any]] | None, where: str
) -> dict[str, NDArray[Any]]:
    """The script's update as the difference to the global model it trained from, in the model's dtypes."""
    if base is None:
        raise WireError(f"{where}: an update, but no global model was received")
    if set(params) != set(base) or any(np.shape(params[k]) != base[k].shape for k in base):
        raise WireError(f"{where}: the update does not match the global model's tensors")
    params_type = meta.get("params_type", "full")
    if params_type == "diff":
        return {k: np.asarray(params[k]).astype(base[k].dtype) for k in base}
    if params_type != "full":
        raise WireError(f"{where}: params_type must be full or diff, got {str(params_type)[:20]!r}")
    return {k: (np.asarray(params[k], dtype=np.float64) - base[k]).astype(base[k].dtype) for k in base}
