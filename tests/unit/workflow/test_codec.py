"""The update codec: one per job, from its signed he section; the round driver runs any strategy through it.

A strategy written here, outside fedsec, runs through the driver with the plain codec and with the
encrypted one, and both give the same global models: the driver never asks which codec it has.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from fedsec import limits
from fedsec.errors import JobError
from fedsec.jobs import FedAvgRecipe, load_job_folder
from fedsec.jobs.meta import HEConfig, ServerOptimizer
from fedsec.wire import arrays, fedsec_pb2, streams
from fedsec.workflow import codec, strategies
from fedsec.workflow.aggregate import Accumulator
from fedsec.workflow.fedavg import RoundDriver
from tests.unit.workflow.test_fedavg import JOB_ID, Running, submit, task

he_context = pytest.importorskip("fedsec.he.context")

INITIAL: dict[str, NDArray[Any]] = {"w": np.zeros((2, 3), np.float32), "n": np.zeros(2, np.int64)}
SITES = ["site-1", "site-2"]
MAX_EXAMPLES = 4  # an HE site's weight is num_examples / he.max_examples
HE_CLIP = 16.0  # the values sent stay within it: the encrypted sum is then the plain one, to its fixed point
ATOL = 2e-3  # a few steps of that fixed point (2**-11 at this clip)
SPECS = arrays.specs_of(INITIAL, "model")


class WeightedMean:
    """A strategy written outside fedsec: the weighted mean of the updates (which an encrypted sum can give)."""

    name = "weighted-mean"
    supports_he = True
    sites_step_under_he = False
    stateful = False

    def task_meta(self) -> dict[str, Any]:
        return {"name": self.name}

    def update_specs(self, model: tuple[arrays.TensorSpec, ...], encrypted: bool) -> tuple[arrays.TensorSpec, ...]:
        return model

    def task_model(self, model: Path, dest: Path) -> Path:
        return model

    def fold(self, specs: tuple[arrays.TensorSpec, ...]) -> Accumulator:
        return Accumulator(specs)

    def write_result(self, fold: Accumulator, model: Path, diff: bool, dest: Path) -> None:
        fold.write_average(dest, model if diff else None)

    def state(self) -> dict[str, NDArray[Any]]:
        return {}

    def restore(self, state: Mapping[str, NDArray[Any]], where: str) -> None:
        if state:
            raise JobError(f"{where}: {self.name} keeps no state")


class PlainOnly(WeightedMean):
    name = "plain-only"
    supports_he = False


class SitesStep(WeightedMean):
    """A strategy whose step the sites run under HE, as fedopt's (the codec keeps their sealed step)."""

    name = "sites-step"
    sites_step_under_he = True


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """These models travel in 64-byte chunks (test_fedavg.submit sends them so)."""
    monkeypatch.setattr(limits, "MIN_CHUNK_BYTES", 64)


@pytest.fixture(scope="module")
def keys() -> tuple[Any, Any]:
    """(the sites' context with the secret key, the server's without)."""
    client, server = he_context.make_contexts()
    return he_context.load_client_context(client, "client"), he_context.load_server_context(server, "server")


def _driver(tmp: Path, encrypted: bool, server_ctx: Any, **settings: Any) -> RoundDriver:
    script = tmp / "train.py"
    script.write_text("raise SystemExit('never run by the workflow')\n")
    recipe = FedAvgRecipe(
        "unit", INITIAL, script, 2, 2, round_timeout=10.0, start_timeout=10.0, he=encrypted,
        he_clip=HE_CLIP, he_max_examples=MAX_EXAMPLES, **settings,
    )  # fmt: skip
    folder = recipe.export(tmp / "job")
    meta, app = load_job_folder(folder)
    ctx = server_ctx if encrypted else None
    return RoundDriver(JOB_ID, folder, tmp / "workspace", meta, app, ctx, strategy=WeightedMean())


def _read(path: Path, client_ctx: Any) -> dict[str, NDArray[Any]]:
    """A global model the driver wrote, as the sites read it (decrypted, for an encrypted one)."""
    if path.suffix == codec.ENCRYPTED_SUFFIX:
        from fedsec.he.codec import decrypt_model

        return decrypt_model(client_ctx, path.read_bytes(), str(path))[0]
    return arrays.read_file(path)


def _send(driver: RoundDriver, site: str, number: int, w: float, n: int, examples: int, client_ctx: Any) -> None:
    """site's full weights as it sends them: plain with its num_examples, or encrypted with its weight inside."""
    params: dict[str, NDArray[Any]] = {"w": np.full((2, 3), w, np.float32), "n": np.full(2, n, np.int64)}
    if not driver.codec.encrypted:
        assert submit(driver, site, number, params, num_examples=examples, params_type="full") == (True, "")
        return
    from fedsec.he.codec import encrypt_model

    payload = encrypt_model(client_ctx, params, examples / MAX_EXAMPLES, HE_CLIP, np.random.default_rng(0), 16)
    header = fedsec_pb2.ResultHeader(
        job_id=JOB_ID,
        site=site,
        current_round=number,
        task="train",
        meta_json=json.dumps({"params_type": "full", "encrypted": True}),
        payload=streams.describe_bytes(payload),
    )
    assert driver.submit(site, header, streams.bytes_chunks(payload)) == (True, "")


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_a_strategy_from_outside_runs_through_either_codec_to_the_same_models(
    tmp_path: Path, keys: tuple[Any, Any], encrypted: bool
) -> None:
    client_ctx, server_ctx = keys
    driver = _driver(tmp_path, encrypted, server_ctx)
    driver.update_sites(SITES)
    run = Running(driver)
    # round 0: (1 * 2 + 3 * 6) / 4 = 5 for w, (1 * 4 + 3 * 8) / 4 = 7 for n
    for site, (w, n, examples) in zip(SITES, [(2.0, 4, 1), (6.0, 8, 3)], strict=True):
        assert _read(task(driver, site, 0), client_ctx)["w"][0, 0] == 0.0
        _send(driver, site, 0, w, n, examples, client_ctx)
    # round 1: every site got the same global model, and each sends it plus 1 (n plus 2)
    for site in SITES:
        model = _read(task(driver, site, 1), client_ctx)
        assert np.allclose(model["w"], 5.0, atol=ATOL) and np.array_equal(model["n"], [7, 7])
        _send(driver, site, 1, float(model["w"][0, 0]) + 1.0, 9, 2, client_ctx)
    for site in SITES:
        model = _read(task(driver, site, 2, "evaluate"), client_ctx)
        assert np.allclose(model["w"], 6.0, atol=ATOL) and np.array_equal(model["n"], [9, 9])
        meta = json.dumps({"encrypted": True} if encrypted else {})
        assert submit(driver, site, 2, None, kind="evaluate", meta_json=meta) == (True, "")
    assert run.join() is None
    checkpoints = sorted(p.name for p in (tmp_path / "workspace" / "checkpoints").iterdir())
    suffix = ".fsh" if encrypted else ".fsa"
    assert checkpoints == [f"round_00000{suffix}", f"round_00001{suffix}"]  # the codec's files, no state beside
    (result,) = (tmp_path / "workspace" / "result").glob("global_model.*")
    assert result.suffix == suffix
    final = _read(result, client_ctx)
    assert np.allclose(final["w"], 6.0, atol=ATOL) and np.array_equal(final["n"], [9, 9])


def test_an_encrypted_job_samples_no_more_sites_than_its_sum_holds(tmp_path: Path, keys: tuple[Any, Any]) -> None:
    driver = _driver(tmp_path, True, keys[1], he_max_clients=2)
    driver.update_sites([*SITES, "site-3"])
    run = Running(driver)
    asked = {site: driver.get_task(site, 1).status for site in [*SITES, "site-3"]}
    assert sorted(asked.values()) == sorted([fedsec_pb2.TASK_STATUS_TASK] * 2 + [fedsec_pb2.TASK_STATUS_WAIT])
    driver.update_sites([])
    driver.finish()
    run.join()


def test_the_codec_is_the_signed_jobs(keys: tuple[Any, Any], tmp_path: Path) -> None:
    plain = codec.make(JOB_ID, HEConfig(), None, tmp_path)
    he = HEConfig(enabled=True, clip=2.0, max_examples=10, max_clients=3)
    encrypted = codec.make(JOB_ID, he, keys[1], tmp_path)
    assert (plain.encrypted, plain.suffix, plain.task_he, plain.sized_by_header) == (False, ".fsa", None, True)
    assert (encrypted.encrypted, encrypted.suffix, encrypted.sized_by_header) == (True, ".fsh", False)
    assert encrypted.task_he == {"clip": 2.0, "max_examples": 10, "max_clients": 3}  # what each task says
    assert (plain.sample_cap(20), encrypted.sample_cap(20), encrypted.sample_cap(2)) == (20, 3, 2)
    with pytest.raises(JobError, match="the job uses homomorphic encryption, but the server kit has no HE context"):
        codec.make(JOB_ID, he, None, tmp_path)


def test_the_encrypted_codec_refuses_a_strategy_that_cannot_run_under_it(keys: tuple[Any, Any], tmp_path: Path) -> None:
    he = HEConfig(enabled=True)
    codec.make(JOB_ID, HEConfig(), None, tmp_path).check(PlainOnly())  # plain: any strategy
    with pytest.raises(JobError, match="strategy plain-only does not run with homomorphic encryption yet"):
        codec.make(JOB_ID, he, keys[1], tmp_path).check(PlainOnly())


@pytest.mark.parametrize(
    ("strategy", "final", "kind", "updates"),
    [
        (WeightedMean(), False, codec.EncryptedFold, True),
        (WeightedMean(), True, codec.EncryptedFold, False),  # the final evaluation brings metrics only
        (SitesStep(), False, codec.SiteStepFold, True),
        (SitesStep(), True, codec.SiteStepFold, True),  # ... but the sites' last step, for these
        (strategies.FedOpt(ServerOptimizer.ADAM, {}), True, codec.SiteStepFold, True),
    ],
)
def test_under_he_the_strategy_says_whether_the_sites_step(
    keys: tuple[Any, Any], tmp_path: Path, strategy: Any, final: bool, kind: type, updates: bool
) -> None:
    fold = codec.make(JOB_ID, HEConfig(enabled=True), keys[1], tmp_path).fold(strategy, SPECS, final=final)
    assert isinstance(fold, kind) and fold.updates is updates
    plain = codec.make(JOB_ID, HEConfig(), None, tmp_path).fold(strategy, SPECS, final=final)
    assert isinstance(plain, codec.StrategyFold) and plain.updates is not final  # plain: the strategy's own fold
    fold.close()


def test_only_the_plain_codec_restores_a_strategys_state(keys: tuple[Any, Any], tmp_path: Path) -> None:
    """A stateful strategy's state is kept beside a plain checkpoint; under HE it is in the sealed step."""
    fedopt = strategies.FedOpt(ServerOptimizer.AVGM, {"server_lr": 0.5, "momentum": 0.5})
    checkpoint = tmp_path / "round_00003.fsa"
    codec.make(JOB_ID, HEConfig(enabled=True), keys[1], tmp_path).restore(fedopt, checkpoint, 3)
    with pytest.raises(JobError, match="the fedopt state of round 3 is missing"):
        codec.make(JOB_ID, HEConfig(), None, tmp_path).restore(fedopt, checkpoint, 3)
