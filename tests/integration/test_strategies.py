"""Strategies end to end on the linear job (tests/integration/scripts/linear_client.py), 3 sites.

Each site's 20 local steps all but reach the least-squares optimum w = [1..8] from any start, so
FedAvg's round 1 already has an mse below 0.1 (test_runtime). What each strategy changes shows in
round 1's mse:

- fedprox, mu = 1: a site's steps stop where 2 (w - w_opt) + mu (w - w_global) = 0, a third of the way
  back to the global model, so each round keeps about a third of the error: round 1's mse is about
  196 / 9 = 22 (round 0's, from w = 0, is about 1 + 4 + ... + 64 = 204 less the noise, 196).
- fedopt adam, server_lr 0.5, beta1 0, beta2 0.99: round 0's step is 0.5 * d / sqrt(0.01 d^2) = 5
  for every weight, so round 1's mse is about (1-5)^2 + ... + (8-5)^2 = 44; later steps shrink as
  v grows, and the mse falls every round.

scaffold runs on the digits job (jobs/digits_fedavg, a PyTorch loop using fedsec.client.scaffold), plain
and under HE, on one federation.
"""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedsec.api import Session
from fedsec.jobs import FedAvgRecipe, FedOptRecipe, FedProxRecipe
from fedsec.wire import arrays
from tests.integration.harness import Federation
from tests.integration.test_he import run_digits
from tests.integration.test_runtime import INITIAL, SCRIPT, round_mse


def run_job(federation: Federation, tmp: Path, recipe: type[FedAvgRecipe], **settings: Any) -> tuple[Any, Any]:
    """Run a linear job of 6 rounds on the 3 sites to its end; its JobInfo and final model (None under HE)."""
    job = recipe("linear", INITIAL, SCRIPT, 6, 3, **settings).export(tmp / "job")
    federation.start_all()
    with Session(federation.admin_kit) as s:
        job_id = s.submit_job(job)
        info = s.wait_for_job(job_id, timeout=180)
        assert info.status == "finished:completed", info.reason
        result = s.download_job_result(job_id)
    final = arrays.read_file(result / "global_model.fsa") if not settings.get("he") else None
    return info, final


def test_fedprox_sends_mu_to_the_sites_and_converges(federation: Federation, tmp_path: Path) -> None:
    info, final = run_job(federation, tmp_path, FedProxRecipe, mu=1.0)
    rounds = info.progress["rounds"]
    assert all(r["metrics"]["mu"] == 1.0 for r in rounds)  # every site read mu from its tasks
    mse = round_mse(info)
    assert all(a > b for a, b in itertools.pairwise(mse)), mse
    assert 10 < mse[1] < 40, mse  # a third of the error kept (FedAvg: below 0.1)
    assert info.progress["final"]["metrics"]["mse"] < 0.01
    assert np.allclose(final["w"].ravel(), np.arange(1, 9), atol=0.05)


def test_fedopt_adam_steps_the_global_model_on_the_server_and_converges(federation: Federation, tmp_path: Path) -> None:
    info, final = run_job(federation, tmp_path, FedOptRecipe, optimizer="adam", server_lr=0.5, beta1=0.0, beta2=0.99)
    mse = round_mse(info)
    assert all(a > b for a, b in itertools.pairwise(mse)), mse
    assert 40 < mse[1] < 50, mse  # every weight moved by 5 in round 0 (FedAvg: below 0.1)
    assert "mu" not in info.progress["rounds"][0]["metrics"]
    assert info.progress["final"]["metrics"]["mse"] < 0.01
    assert np.allclose(final["w"].ravel(), np.arange(1, 9), atol=0.05)


@pytest.mark.skipif(importlib.util.find_spec("tenseal") is None, reason="needs tenseal")
@pytest.mark.federation(he=True)
def test_fedprox_runs_under_he_with_mu_reaching_the_sites(federation: Federation, tmp_path: Path) -> None:
    info, _ = run_job(federation, tmp_path, FedProxRecipe, mu=1.0, he=True, he_clip=16.0)
    assert all(r["metrics"]["mu"] == 1.0 for r in info.progress["rounds"])
    mse = round_mse(info)
    assert all(a > b for a, b in itertools.pairwise(mse)), mse
    assert 10 < mse[1] < 40, mse  # as in plain FedProx, within HE's fixed-point precision
    assert info.progress["final"]["metrics"]["mse"] < 0.01


@pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("torch", "sklearn", "tenseal")), reason="needs ml and tenseal"
)
@pytest.mark.federation(n_clients=3, heartbeat_timeout=30.0, he=True)
def test_scaffold_on_digits_plain_and_under_he_agree(federation: Federation, tmp_path: Path) -> None:
    federation.start_all()
    plain_id, plain_accuracy = run_digits(federation, tmp_path, "--strategy", "scaffold")
    he_id, he_accuracy = run_digits(federation, tmp_path, "--strategy", "scaffold", "--he")
    with Session(federation.admin_kit) as s:
        plain, he = (s.wait_for_job(job_id, timeout=60).progress["rounds"] for job_id in (plain_id, he_id))

    # One aggregation apart, HE and plain agree: round 1's global model (round 0's result) differs only by HE's
    # fixed point (2^-17 here), so its accuracy on the 360 test images is within 0.5 points, and the global c it
    # brought, which under HE the sites derived from the encrypted sum alone, matches the plain one.
    assert he[1]["metrics"]["accuracy"] == pytest.approx(plain[1]["metrics"]["accuracy"], abs=0.005), (plain, he)
    plain_norms = [r["metrics"]["control_norm"] for r in plain]
    he_norms = [r["metrics"]["control_norm"] for r in he]
    assert plain_norms[0] == he_norms[0] == 0.0  # round 0: c = 0
    assert all(norm > 0 for norm in plain_norms[1:]), plain_norms
    assert he_norms[1] == pytest.approx(plain_norms[1], rel=0.01), (plain_norms, he_norms)
    # Five rounds of SGD carry that fixed-point difference into about +-1 point of final accuracy (the same job
    # in plain arithmetic with 2^-17 stochastic rounding added spreads as much): both learn, within 2 points.
    assert plain_accuracy >= 0.9 and he_accuracy >= 0.9, (plain_accuracy, he_accuracy)
    assert abs(he_accuracy - plain_accuracy) <= 0.02, (plain_accuracy, he_accuracy)

    # the server keeps c with each plain checkpoint, by the model's tensor names; under HE it holds nothing plain
    jobs = federation.kit("server1") / "store" / "jobs"
    state = arrays.read_file(jobs / plain_id / "workspace" / "checkpoints" / "round_00004.state.fsa")
    model = arrays.read_file(federation.admin_kit / "transfer" / plain_id / "global_model.fsa")
    assert set(model) == set(state)  # the result is the model alone; every tensor of it is floating point here
    assert all(value.dtype == np.float64 for value in state.values())
    assert any(np.abs(value).max() > 0 for value in state.values())
    assert list((jobs / he_id / "workspace" / "checkpoints").glob("*.fsa")) == []
    kept = arrays.read_file(federation.kit("site-1") / "jobs" / he_id / "work" / "global_model.fsa")
    assert set(kept) == set(model)  # a site keeps the decrypted final model alone, without c's sections


@pytest.mark.skipif(importlib.util.find_spec("tenseal") is None, reason="needs tenseal")
@pytest.mark.federation(he=True)
def test_fedopt_adam_runs_under_he_with_the_sites_stepping(federation: Federation, tmp_path: Path) -> None:
    # as the plain adam job above, within HE's fixed point: the sites step the optimizer on the decrypted sum
    info, _ = run_job(
        federation,
        tmp_path,
        FedOptRecipe,
        optimizer="adam",
        server_lr=0.5,
        beta1=0.0,
        beta2=0.99,
        he=True,
        he_clip=16.0,
    )
    mse = round_mse(info)
    assert all(a > b for a, b in itertools.pairwise(mse)), mse
    assert 40 < mse[1] < 50, mse  # every weight moved by 5 in round 0
    assert info.progress["final"]["metrics"]["mse"] < 0.01
    assert sorted(federation.step_digests(info.job_id), key=int) == [str(n) for n in range(7)]
