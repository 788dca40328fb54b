"""Site codecs: how one job's task model reaches its training script, and how the script's result goes up.

The relay (fedsec.site.local) picks one codec per job when it opens the job's endpoint, from the
signed job's he section, and never asks about HE again: the training script calls the same Client
API (fedsec.client) and sees plain arrays whichever codec the job has.

- PlainCodec: the task's model goes to the script as the server sent it; the script's upload is
  kept whole in a file beside (not in) the job's work folder, checked against the size and SHA-256
  it announced, sent (again from that file on each retry), and removed on every path.
- EncryptedCodec: the site's HE key stays here, in trusted code. It decrypts the global model
  before the script sees it (round 0's is the plain initial model), keeps it for updates sent as
  differences, and keeps the final one, decrypted, in the job's work folder; it encrypts the
  script's plain update with the signed job's HE parameters and sends each ciphertext as it is made
  (fedsec.site.upload, kept as it goes for a retry). For fedopt it runs the optimizer step the
  server cannot run (fedsec.site.fedopt_he): the script gets the stepped model, and the upload
  starts with the sealed new model and state and their digest; for scaffold it keeps the task's
  control variate and encodes the upload's sections (fedsec.site.scaffold).

A codec never decides whether a task may reach the script: the relay has checked it against the
signed job (fedsec.site.local.task_disagreement) before a codec sees it. A codec never retries: the
send it is given does. numpy, the job format and tenseal are imported only once a job needs them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from fedsec import limits
from fedsec.errors import WireError
from fedsec.site.upload import StreamedUpload
from fedsec.wire import fedsec_pb2, streams

if TYPE_CHECKING:  # numpy and the job format: only once a job needs them (an idle site never loads them)
    import numpy as np

    from fedsec.jobs.meta import HEConfig, StrategyConfig

log = logging.getLogger(__name__)

FINAL_MODEL = "global_model.fsa"  # the decrypted final model of an HE job, in the job's work folder

Parts = Callable[[], Iterator[fedsec_pb2.ResultPart]]  # makes one try's request stream
Send = Callable[[Parts], fedsec_pb2.ResultReply]  # sends a result, again after each transient failure


class SiteCodec(Protocol):
    """How one job's models and updates cross the site's relay: as they are, or decrypted and encrypted."""

    def task(
        self, header: fedsec_pb2.TaskHeader, meta: dict[str, Any], payload: bytes
    ) -> tuple[fedsec_pb2.TaskHeader, bytes]:
        """What the script is handed for a task the relay checked: its header and its model's bytes.

        payload: the task's whole model, already checked against the size and SHA-256 its header
        announced; meta: the header's meta, parsed. Raises WireError (or HEError) for a model that
        cannot be read.
        """
        ...

    def submit(
        self, header: fedsec_pb2.ResultHeader, data: Iterator[bytes], where: str, send: Send
    ) -> fedsec_pb2.ResultReply:
        """Take the script's result (header, then its bytes) and send it up through send; the reply for the script.

        A result that cannot be sent (a bad upload) is answered as refused, naming why, and never sent.
        """
        ...


class PlainCodec:
    """A job without HE: models and updates cross the relay as they are."""

    def __init__(self, job_id: str, work: Path) -> None:
        """work: the job's work folder (the upload is kept beside it, never in it)."""
        self._job_id = job_id
        self._work = work

    def task(
        self, header: fedsec_pb2.TaskHeader, meta: dict[str, Any], payload: bytes
    ) -> tuple[fedsec_pb2.TaskHeader, bytes]:
        return header, payload

    def submit(
        self, header: fedsec_pb2.ResultHeader, data: Iterator[bytes], where: str, send: Send
    ) -> fedsec_pb2.ResultReply:
        try:  # the whole upload first: a retry sends it again from here, never from the script
            kept = keep_upload(header, data, self._work.parent, where)
        except WireError as exc:
            log.warning("job=%s result not sent: %s", self._job_id, exc)
            return fedsec_pb2.ResultReply(accepted=False, reason=str(exc))
        try:
            return send(lambda: result_parts(header, streams.file_chunks(kept)))
        finally:
            kept.unlink(missing_ok=True)


class EncryptedCodec:
    """A job whose signed config enables HE: decrypts each task's model, encrypts each update as it streams."""

    def __init__(
        self,
        job_id: str,
        site: str,
        he: HEConfig,
        strategy: StrategyConfig,
        sites: int,
        work: Path,
        he_context: Callable[[], Any],
    ) -> None:
        """he, strategy, sites: the signed job's he section, strategy section and number of listed sites.

        he_context: the site's HE context with its secret key (loaded on first use; HEError without one).
        """
        self._job_id = job_id
        self._site = site
        self._he = he
        self._strategy = strategy
        self._sites = sites
        self._work = work
        self._he_context = he_context
        self._global: dict[str, np.ndarray] | None = None  # the last global model handed to the script
        self._control: dict[str, np.ndarray] | None = None  # scaffold: the last task's c
        self._fedopt_head = b""  # fedopt: the sealed step that heads the next upload

    @property
    def _scaffold(self) -> bool:
        from fedsec.jobs.meta import StrategyKind

        return self._strategy.name is StrategyKind.SCAFFOLD

    @property
    def _fedopt(self) -> bool:
        from fedsec.jobs.meta import StrategyKind

        return self._strategy.name is StrategyKind.FEDOPT

    # ------------------------------------------------------------ the task

    def task(
        self, header: fedsec_pb2.TaskHeader, meta: dict[str, Any], payload: bytes
    ) -> tuple[fedsec_pb2.TaskHeader, bytes]:
        """Decrypt (or decode) the global model, keep it for DIFF updates, hand the script plain arrays."""
        from fedsec.wire import arrays

        where = f"global model of job {self._job_id} round {header.current_round}"
        if self._fedopt:  # the sites step the optimizer (fedsec.site.fedopt_he)
            from fedsec.site import fedopt_he

            stepped = fedopt_he.step(
                self._he_context(),
                self._job_id,
                self._strategy,
                header.current_round,
                payload,
                bool(meta.get("encrypted")),
                where,
            )
            params, self._fedopt_head = stepped.model, stepped.prefix
            log.info("job=%s round=%d fedopt step digest=%s", self._job_id, header.current_round, stepped.digest)
            if header.task == "evaluate":
                self._keep_final(params)
        elif meta.get("encrypted"):
            from fedsec.he.codec import decrypt_model  # tenseal: only in HE jobs

            params, total = decrypt_model(self._he_context(), payload, where)
            params = self._scaffold_task(params, total, header.task, where)
            if header.task == "evaluate":  # the final model: this site keeps it, decrypted, in the job's folder
                self._keep_final(params)
        else:
            params = self._scaffold_task(arrays.decode(payload, where), None, header.task, where)
        self._global = params
        plain = arrays.encode(self._scaffold_script_task(params, header.task), where)
        out = fedsec_pb2.TaskHeader()
        out.CopyFrom(header)
        out.meta_json = json.dumps({**meta, "encrypted": False})
        out.payload.CopyFrom(streams.describe_bytes(plain))
        return out, plain

    def _scaffold_task(
        self, params: dict[str, np.ndarray], total: float | None, task: str, where: str
    ) -> dict[str, np.ndarray]:
        """The model of a scaffold task (its c kept for the upload: fedsec.site.scaffold); others as they are.

        total: the decrypted sum's total weight (None: a plain task, round 0's, whose c the server sent).
        """
        if not self._scaffold or (total is None and task != "train"):
            return params
        from fedsec.site import scaffold

        if total is None:
            model, self._control = scaffold.plain_task(params, where)
        else:
            model, self._control = scaffold.task_from_sum(params, total, self._sites, where)
        return model

    def _scaffold_script_task(self, params: dict[str, np.ndarray], task: str) -> dict[str, np.ndarray]:
        """What the script gets: a scaffold training task's model with c beside it (fedsec.jobs.control)."""
        if not self._scaffold or task != "train" or self._control is None:
            return params
        from fedsec.jobs import control

        return control.join(params, self._control)

    def _keep_final(self, params: dict[str, np.ndarray]) -> None:
        """Keep the final global model, decrypted, in the job's work folder."""
        from fedsec.wire import arrays

        try:
            arrays.write_file(self._work / FINAL_MODEL, params)
        except OSError as exc:
            log.warning("job=%s cannot keep the final model: %s", self._job_id, exc)

    # ------------------------------------------------------------ the result

    def submit(
        self, header: fedsec_pb2.ResultHeader, data: Iterator[bytes], where: str, send: Send
    ) -> fedsec_pb2.ResultReply:
        """Encrypt the script's update and send it as its ciphertexts are made (kept as they go, for a retry)."""
        try:
            header, pieces, bound = self._encrypt(header, data)
        except (WireError, ValueError) as exc:
            log.warning("job=%s result not sent: %s", self._job_id, exc)
            return fedsec_pb2.ResultReply(accepted=False, reason=str(exc))
        if pieces is None:  # no update: an evaluation's metrics
            return send(lambda: result_parts(header, iter(())))
        with StreamedUpload(header, pieces, bound, self._work.parent) as upload:
            reply = send(upload.parts)
            if upload.error is not None:  # the encryption failed midway: that, not the cut stream, is the news
                raise upload.error
            return reply

    def _encrypt(
        self, header: fedsec_pb2.ResultHeader, data: Iterator[bytes]
    ) -> tuple[fedsec_pb2.ResultHeader, Iterator[bytes] | None, int]:
        """The script's plain update -> the full weights, weighted and encrypted with the signed HE parameters.

        Returns the header to send, the encrypted update's pieces as they will be made (None: no
        update) and a bound of its size. The server sees neither the weights nor num_examples: the
        weight rides inside the ciphertexts, so the meta carries nothing but the params type.
        """
        from fedsec.wire import arrays

        where = f"result of job {self._job_id} round {header.current_round}"
        payload = streams.receive_bytes(data, header.payload, limits.MAX_MODEL_BYTES, where)
        meta = parse_meta(header.meta_json, where)
        if self._fedopt:
            return self._encrypt_fedopt(header, payload, meta, where)
        if not payload:
            header.meta_json = json.dumps({"encrypted": True})
            header.payload.CopyFrom(streams.describe_bytes(b""))
            return header, None, 0
        update = arrays.decode(payload, where)
        del payload
        delta: dict[str, np.ndarray] = {}
        if self._scaffold:
            from fedsec.jobs import control

            update, delta = control.split(update, control.CONTROL, where)
        params = _full_params(update, meta, self._global, where)
        if self._scaffold:
            params = self._scaffold_upload(params, delta, _weight(meta, self._he.max_examples, where), where)
        header.meta_json = json.dumps({"params_type": "full", "encrypted": True})
        return self._encrypt_params(header, params, meta, where)

    def _encrypt_params(
        self, header: fedsec_pb2.ResultHeader, params: dict[str, np.ndarray], meta: dict[str, Any], where: str
    ) -> tuple[fedsec_pb2.ResultHeader, Iterator[bytes], int]:
        """params weighted and encrypted with the signed HE parameters: (header, the pieces as made, a size bound)."""
        import numpy as np

        he = self._he
        weight = _weight(meta, he.max_examples, where)
        # stochastic rounding needs no secret randomness: seeding it by job, round and site makes runs repeatable
        seed_text = f"{self._job_id}:{header.current_round}:{self._site}".encode()
        seed = int.from_bytes(hashlib.sha256(seed_text).digest()[:8], "big")
        from fedsec.he.codec import ciphertexts_for, encrypt_chunks  # tenseal: only in HE jobs

        rng = np.random.default_rng(seed)
        pieces = encrypt_chunks(self._he_context(), params, weight, he.clip, rng, he.max_clients)
        records = ciphertexts_for(sum(int(v.size) for v in params.values()) + 1)
        bound = min(
            limits.MAX_MODEL_BYTES, limits.MAX_HE_HEADER_BYTES + 8 + records * (4 + limits.MAX_HE_CIPHERTEXT_BYTES)
        )
        return header, pieces, bound

    def _scaffold_upload(
        self, params: dict[str, np.ndarray], delta: dict[str, np.ndarray], weight: float, where: str
    ) -> dict[str, np.ndarray]:
        """The sections a scaffold upload encrypts (fedsec.site.scaffold.upload)."""
        from fedsec.he.params import quantised_weight
        from fedsec.site import scaffold

        if self._control is None or self._global is None:
            raise WireError(f"{where}: a scaffold update, but no training task was received")
        he = self._he
        server_lr = float(self._strategy.settings()["server_lr"])
        weight_q = quantised_weight(weight, he.clip, he.max_clients)
        return scaffold.upload(params, delta, self._global, self._control, server_lr, weight_q, he.clip, where)

    def _encrypt_fedopt(
        self, header: fedsec_pb2.ResultHeader, payload: bytes, meta: dict[str, Any], where: str
    ) -> tuple[fedsec_pb2.ResultHeader, Iterator[bytes] | None, int]:
        """_encrypt for fedopt: the sealed step of the task, then (training) the encrypted weight difference."""
        from fedsec.site.fedopt_he import update_difference
        from fedsec.wire import arrays

        head, self._fedopt_head = self._fedopt_head, b""
        if not head:
            raise WireError(f"{where}: no fedopt step to send: the task was not received through this site")
        header.meta_json = json.dumps({"params_type": "diff", "encrypted": True})
        if not payload:  # the final evaluation: the sealed final model and its digest alone
            return header, iter((head,)), len(head)
        diff = update_difference(arrays.decode(payload, where), meta, self._global, where)
        del payload
        _, pieces, bound = self._encrypt_params(header, diff, meta, where)
        return header, itertools.chain((head,), pieces), min(limits.MAX_MODEL_BYTES, bound + len(head))


def keep_upload(header: fedsec_pb2.ResultHeader, data: Iterator[bytes], folder: Path, where: str) -> Path:
    """The script's upload, checked against its announced size and digest, in a new file in folder (0600).

    Raises WireError when it is larger than announced or limits.MAX_MODEL_BYTES, or does not match;
    the file is then removed.
    """
    fd, name = tempfile.mkstemp(prefix=".upload-", suffix=".fsa", dir=folder)
    os.close(fd)
    kept = Path(name)
    try:
        with streams.PayloadWriter(kept, header.payload, limits.MAX_MODEL_BYTES, where) as writer:
            for chunk in data:
                writer.write(chunk)
            writer.finish()
    except BaseException:
        kept.unlink(missing_ok=True)
        raise
    return kept


def result_parts(header: fedsec_pb2.ResultHeader, chunks: Iterator[bytes]) -> Iterator[fedsec_pb2.ResultPart]:
    """A result's request stream: its header, then its bytes."""
    yield fedsec_pb2.ResultPart(header=header)
    for chunk in chunks:
        yield fedsec_pb2.ResultPart(data=chunk)


def parse_meta(text: str, where: str) -> dict[str, Any]:
    """A task's or result's meta_json as a dict; WireError when it is too large, not JSON or not an object."""
    from fedsec.wire import arrays

    if len(text) > limits.MAX_META_JSON_BYTES:
        raise WireError(f"{where}: meta larger than {limits.MAX_META_JSON_BYTES} bytes")
    try:
        value = arrays.strict_json(text) if text else {}
    except (ValueError, RecursionError) as exc:
        raise WireError(f"{where}: meta is not JSON") from exc
    if not isinstance(value, dict):
        raise WireError(f"{where}: meta is not a JSON object")
    return value


def _full_params(
    params: dict[str, np.ndarray], meta: dict[str, Any], base: dict[str, np.ndarray] | None, where: str
) -> dict[str, np.ndarray]:
    """params as full weights: a weight difference is added to the global model the script received."""
    params_type = meta.get("params_type", "full")
    if params_type == "full":
        return params
    if params_type != "diff":
        raise WireError(f"{where}: params_type must be full or diff, got {str(params_type)[:20]!r}")
    if base is None:
        raise WireError(f"{where}: a weight difference, but no global model was received")
    if set(params) != set(base) or any(params[k].shape != base[k].shape for k in base):
        raise WireError(f"{where}: the weight difference does not match the global model's tensors")
    return {k: (base[k] + params[k]).astype(base[k].dtype) for k in base}


def _weight(meta: dict[str, Any], max_examples: int, where: str) -> float:
    examples = meta.get("num_examples", max_examples)
    if isinstance(examples, bool) or not isinstance(examples, int | float) or not examples > 0:
        raise WireError(f"{where}: num_examples must be a positive number, got {str(examples)[:20]!r}")
    return min(float(examples), max_examples) / max_examples
