"""Update codecs: how a job's updates and global models are held on the server, as plain arrays or HE ciphertexts.

The round driver (fedsec.workflow.fedavg.RoundDriver) picks one codec when it is made, from the
signed job's he section (make()), and never asks about HE again. The codec owns what differs:

- the suffix of the global model's files (".fsa" plain, ".fsh" encrypted) and the he entry of each task;
- how many sites a training round may sample (an encrypted sum holds at most he.max_clients);
- a round's fold (RoundFold): plain, the strategy's own fold and result (strategy.fold,
  strategy.write_result), its state written beside the checkpoint; encrypted, the sum of the
  ciphertexts (EncryptedAccumulator), or, for a strategy whose step the sites run under HE
  (Strategy.sites_step_under_he: fedopt), the sum and the sealed step the sites agree on
  (SiteStepAccumulator);
- whether an update's size is known before it is received (plain: the task model's; an encrypted
  upload announces only a bound), so a misfit is refused from its header alone;
- whether the strategy's server-side state is restored from the file beside a checkpoint (under HE
  it lives in the encrypted checkpoint, where only the sites read it).

The encrypted codec holds the server's HE context, which has no secret key: it never decrypts.
This module never reads a site's identity, and never imports tenseal itself (fedsec.he does, lazily).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

from fedsec.errors import JobError, WireError
from fedsec.jobs.meta import HEConfig
from fedsec.wire import arrays
from fedsec.workflow.aggregate import Accumulator, EncryptedAccumulator, SiteStepAccumulator
from fedsec.workflow.strategies import Strategy

log = logging.getLogger(__name__)

PLAIN_SUFFIX = ".fsa"  # a plain model (fedsec.wire.arrays)
ENCRYPTED_SUFFIX = ".fsh"  # an encrypted model (fedsec.he.codec)


class RoundFold(Protocol):
    """One round's fold of accepted updates, made by the job's codec for its strategy."""

    updates: bool  # whether each answer carries an update: training rounds (and HE fedopt's final evaluation)

    @property
    def count(self) -> int:
        """How many answers were folded in."""
        ...

    def check(self, path: Path, where: str) -> None:
        """Raise WireError (or HEError) unless the received update at path may be added (before the lock is taken)."""
        ...

    def add(self, site: str, path: Path, weight: float, params_type: str, where: str) -> None:
        """Fold in site's checked update at path; WireError (or HEError) naming where when it does not fit."""
        ...

    def write(self, model: Path, dest: Path, number: int) -> None:
        """Write round number's result to dest (the next global model, from the global model at model).

        Raises JobError when the round cannot give one, OSError when it cannot be written.
        """
        ...

    def close(self) -> None:
        """Remove what the fold keeps on disk (called on every path, once the round's result is written or not)."""
        ...


class UpdateCodec(Protocol):
    """How one job's updates and global models travel and are folded on the server: plain or encrypted."""

    encrypted: bool  # the updates (and every global model after round 0's) are ciphertexts
    suffix: str  # the suffix of the job's global model files (checkpoints, the result)
    task_he: dict[str, Any] | None  # the he entry of each task's meta (None: HE off); the sites check it
    sized_by_header: bool  # an update has the task model's size: one that does not is refused before it is received

    def check(self, strategy: Strategy) -> None:
        """Raise JobError when strategy cannot run with this codec."""
        ...

    def sample_cap(self, k: int) -> int:
        """How many sites a training round samples when the driver would sample k."""
        ...

    def update_specs(self, strategy: Strategy, model: tuple[arrays.TensorSpec, ...]) -> tuple[arrays.TensorSpec, ...]:
        """The tensors of an update for a model of these tensors (the strategy's, plain or encrypted)."""
        ...

    def fold(self, strategy: Strategy, specs: tuple[arrays.TensorSpec, ...], *, final: bool) -> RoundFold:
        """A new round's fold; final: the final evaluation."""
        ...

    def restore(self, strategy: Strategy, checkpoint: Path, number: int) -> None:
        """Continue strategy from the state kept with round number's checkpoint; JobError if it is missing."""
        ...


def make(job_id: str, he: HEConfig, he_context: Any, incoming: Path) -> UpdateCodec:
    """The codec of a job whose signed he section is he.

    he_context: the server's HE context (no key), required when the job enables HE; incoming: the
    folder where the encrypted codec's folds keep what waits for the round's end. Raises JobError
    when the job enables HE and there is no context.
    """
    if not he.enabled:
        return PlainCodec()
    if he_context is None:
        raise JobError("the job uses homomorphic encryption, but the server kit has no HE context")
    return EncryptedCodec(job_id, he, he_context, incoming)


def state_path(checkpoint: Path) -> Path:
    """Where the strategy's state of the round whose global model is at checkpoint lives."""
    return checkpoint.with_name(checkpoint.name.split(".")[0] + ".state.fsa")


def _one_params_type(held: str | None, params_type: str, where: str) -> str:
    """The round's params_type once params_type joined it: every update of a round has the same one."""
    if held not in (None, params_type):
        raise WireError(f"{where}: params_type {params_type} differs from this round's {held}")
    return params_type


class PlainCodec:
    """Plain arrays: the strategy folds each update and writes the round's result, its state beside it."""

    encrypted = False
    suffix = PLAIN_SUFFIX
    task_he: dict[str, Any] | None = None
    sized_by_header = True

    def check(self, strategy: Strategy) -> None:
        """Every strategy runs on plain updates."""

    def sample_cap(self, k: int) -> int:
        return k

    def update_specs(self, strategy: Strategy, model: tuple[arrays.TensorSpec, ...]) -> tuple[arrays.TensorSpec, ...]:
        return strategy.update_specs(model, False)

    def fold(self, strategy: Strategy, specs: tuple[arrays.TensorSpec, ...], *, final: bool) -> RoundFold:
        return StrategyFold(strategy, strategy.fold(specs), updates=not final)

    def restore(self, strategy: Strategy, checkpoint: Path, number: int) -> None:
        path = state_path(checkpoint)
        where = f"the {strategy.name} state of round {number}"
        if path.exists():
            strategy.restore(arrays.read_file(path, where), where)
        elif strategy.stateful:
            raise JobError(f"{where} is missing: the job cannot resume its server optimizer")


class _SummedFold:
    """A round whose accepted updates are added into one accumulator (plain or encrypted), one params_type a round."""

    def __init__(self, acc: Accumulator | EncryptedAccumulator, *, updates: bool) -> None:
        self.updates = updates
        self._acc = acc
        self._params_type: str | None = None

    @property
    def count(self) -> int:
        return self._acc.count

    def check(self, path: Path, where: str) -> None:
        self._acc.check(path, where)

    def add(self, site: str, path: Path, weight: float, params_type: str, where: str) -> None:
        held = _one_params_type(self._params_type, params_type, where)
        self._acc.add(path, weight, where)
        self._params_type = held

    def close(self) -> None:
        """Nothing kept on disk."""


class StrategyFold(_SummedFold):
    """A plain round: the strategy's fold of the updates (one params_type per round) and its result."""

    def __init__(self, strategy: Strategy, acc: Accumulator, *, updates: bool) -> None:
        super().__init__(acc, updates=updates)
        self._strategy = strategy
        self._plain = acc

    def write(self, model: Path, dest: Path, number: int) -> None:
        self._strategy.write_result(self._plain, model, self._params_type == "diff", dest)
        state = self._strategy.state()
        if state:
            arrays.write_file(state_path(dest), state, f"the {self._strategy.name} state of round {number}")


class EncryptedCodec:
    """HE ciphertexts: the driver adds the sites' encrypted updates and never decrypts; sampling is capped."""

    encrypted = True
    suffix = ENCRYPTED_SUFFIX
    sized_by_header = False  # an upload streamed as it is encrypted announces only a bound of its size

    def __init__(self, job_id: str, he: HEConfig, he_context: Any, incoming: Path) -> None:
        """he: the signed job's he section (enabled); he_context: the server's (no key); incoming: see make()."""
        self._job_id = job_id
        self._he = he
        self._ctx = he_context
        self._incoming = incoming
        self.task_he: dict[str, Any] | None = {
            "clip": he.clip,
            "max_examples": he.max_examples,
            "max_clients": he.max_clients,
        }

    def check(self, strategy: Strategy) -> None:
        if not strategy.supports_he:
            raise JobError(f"strategy {strategy.name} does not run with homomorphic encryption yet")

    def sample_cap(self, k: int) -> int:
        return min(k, self._he.max_clients)  # an encrypted sum holds at most max_clients contributions

    def update_specs(self, strategy: Strategy, model: tuple[arrays.TensorSpec, ...]) -> tuple[arrays.TensorSpec, ...]:
        return strategy.update_specs(model, True)

    def fold(self, strategy: Strategy, specs: tuple[arrays.TensorSpec, ...], *, final: bool) -> RoundFold:
        he = self._he
        if strategy.sites_step_under_he:  # the sites step and seal the result (fedsec.site.fedopt_he)
            acc = SiteStepAccumulator(self._ctx, specs, he.clip, he.max_clients, self._incoming, final=final)
            return SiteStepFold(self._job_id, acc)
        return EncryptedFold(EncryptedAccumulator(self._ctx, specs, he.clip, he.max_clients), updates=not final)

    def restore(self, strategy: Strategy, checkpoint: Path, number: int) -> None:
        """Nothing to restore here: a stateful strategy's state is in the sites' sealed step, in the checkpoint."""


class EncryptedFold(_SummedFold):
    """The encrypted sum of a round's updates: the weighted average only the sites can read."""

    def __init__(self, acc: EncryptedAccumulator, *, updates: bool) -> None:
        super().__init__(acc, updates=updates)
        self._encrypted = acc

    def write(self, model: Path, dest: Path, number: int) -> None:
        self._encrypted.write_average(dest, model if self._params_type == "diff" else None)


class SiteStepFold:
    """A round whose step the sites run under HE (fedopt): their sealed step, kept unread, and the encrypted sum.

    Every answer carries one, the final evaluation's too: its step is the job's final model.
    """

    updates = True

    def __init__(self, job_id: str, acc: SiteStepAccumulator) -> None:
        self._job_id = job_id
        self._acc = acc

    @property
    def count(self) -> int:
        return self._acc.count

    def check(self, path: Path, where: str) -> None:
        self._acc.check(path, where)

    def add(self, site: str, path: Path, weight: float, params_type: str, where: str) -> None:
        self._acc.add_result(site, path, where)  # the weight rides in the ciphertexts; the update is a difference

    def write(self, model: Path, dest: Path, number: int) -> None:
        """Write the sites' agreed step (and the sum) to dest; JobError naming the sites that disagree."""
        digest = self._acc.write(dest, number)
        log.info(
            "job=%s round=%d the sites agree on the fedopt step digest=%s kept_from=%s",
            self._job_id,
            number,
            digest,
            self._acc.kept_from,
        )

    def close(self) -> None:
        self._acc.close()
