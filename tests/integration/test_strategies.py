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

Every strategy also runs on the digits job (jobs/digits_fedavg, a PyTorch loop; SCAFFOLD through
fedsec.client.scaffold), plain and under HE, on one federation: see
test_every_strategy_on_digits_ends_within_one_test_image_of_plain_under_he.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedsec.api import Session
from fedsec.jobs import FedAvgRecipe, FedOptRecipe, FedProxRecipe
from fedsec.wire import arrays
from tests.integration.harness import Federation
from tests.integration.test_he import JOB_PY, SHORT
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


# each strategy with the digits job's settings (jobs/digits_fedavg/job.py; FedOpt's are Reddi et al.'s defaults,
# tau 1e-3), as bench/strategies_bench.py runs them
DIGITS_STRATEGIES: dict[str, tuple[str, ...]] = {
    "fedavg": ("--strategy", "fedavg"),
    "fedprox mu=0.01": ("--strategy", "fedprox", "--mu", "0.01"),
    "fedopt adam": ("--strategy", "fedopt", "--optimizer", "adam"),
    "fedopt yogi": ("--strategy", "fedopt", "--optimizer", "yogi"),
    "fedopt adagrad": ("--strategy", "fedopt", "--optimizer", "adagrad"),
    "fedopt avgm": ("--strategy", "fedopt", "--optimizer", "avgm"),
    "scaffold": ("--strategy", "scaffold"),
}


def load_digits_job() -> Any:
    """jobs/digits_fedavg/job.py as a module (its make_recipe and parse_args; it imports torch).

    The job puts its folder first on sys.path and imports its `data` and `model`: both are undone
    here, so later tests (jobs/cifar10 has a `data` of its own) import their own.
    """
    path, loaded = list(sys.path), set(sys.modules)
    try:
        spec = importlib.util.spec_from_file_location("digits_job", JOB_PY)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = path
        folder = str(JOB_PY.parent.resolve())
        for name in set(sys.modules) - loaded:
            origin = getattr(sys.modules[name], "__file__", None) or ""
            if origin.startswith(folder):
                del sys.modules[name]
    return module


@pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("torch", "sklearn", "tenseal")), reason="needs ml and tenseal"
)
@pytest.mark.federation(n_clients=3, heartbeat_timeout=30.0, he=True)
def test_every_strategy_on_digits_ends_within_one_test_image_of_plain_under_he(
    federation: Federation, tmp_path: Path
) -> None:
    """Each strategy's digits job (3 sites, 3 rounds of one epoch), plain and HE, ends within 0.5 points.

    HE's fixed point here is 2**-38 (he.clip 2, 3 sites: fedsec.he.params), finer than float32's last
    bit for every value of magnitude 2**-15 and above: such a value is encoded exactly, a smaller one
    within 2**-38, and the encrypted sum is exact. FedOpt's sites encrypt their float32 differences,
    so the decrypted mean is the plain one and the step, the same float64 code, gives the same model.
    FedAvg, FedProx and SCAFFOLD encrypt each site's weights, which the site adds up in float32
    (global + difference) where the plain server adds the mean difference in float64: a few hundred
    of the 38k weights round to the neighbouring float32. One local epoch a round keeps that at
    float32's last bits (measured: under 3e-7 after five rounds, the same accuracy); three would not.
    At 2**-17, two values a slot, the rounding noise alone moved accuracy by up to 41 test images
    (bench/strategies_bench.py --part agreement).
    """
    federation.start_all()
    job_py = load_digits_job()
    runs = [(label, he) for label in DIGITS_STRATEGIES for he in (False, True)]
    jobs: dict[tuple[str, bool], tuple[str, float]] = {}
    with Session(federation.admin_kit) as s:
        for at in range(0, len(runs), 4):  # four jobs at a time: 12 training processes, a few GiB
            submitted: dict[tuple[str, bool], str] = {}
            for label, he in runs[at : at + 4]:
                argv = [
                    "--export_only",
                    "-",
                    "--n_clients",
                    "3",
                    *SHORT,
                    *DIGITS_STRATEGIES[label],
                    *(["--he"] if he else []),
                ]
                folder = tmp_path / f"job-{len(jobs) + len(submitted)}"
                submitted[(label, he)] = s.submit_job(job_py.make_recipe(job_py.parse_args(argv)).export(folder))
            for key, job_id in submitted.items():
                info = s.wait_for_job(job_id, timeout=300)
                assert info.status == "finished:completed", (key, info.reason)
                jobs[key] = (job_id, float(info.progress["final"]["metrics"]["accuracy"]))
    accuracy = {label: (jobs[label, False][1], jobs[label, True][1]) for label in DIGITS_STRATEGIES}
    assert all(min(pair) >= 0.5 for pair in accuracy.values()), accuracy  # all learn (chance: 0.1)
    assert all(abs(he - plain) <= 0.005 for plain, he in accuracy.values()), accuracy  # 0.5 points: one image

    # SCAFFOLD: the global c each round brought, which under HE the sites derived from the encrypted sum alone,
    # matches the plain one
    plain_id, he_id = jobs["scaffold", False][0], jobs["scaffold", True][0]
    with Session(federation.admin_kit) as s:
        plain, he = (s.wait_for_job(job_id, timeout=60).progress["rounds"] for job_id in (plain_id, he_id))
        s.download_job_result(plain_id)  # to the admin kit's transfer/<job id>
    plain_norms = [r["metrics"]["control_norm"] for r in plain]
    he_norms = [r["metrics"]["control_norm"] for r in he]
    assert plain_norms[0] == he_norms[0] == 0.0  # round 0: c = 0
    assert all(norm > 0 for norm in plain_norms[1:]), plain_norms
    assert he_norms[1:] == pytest.approx(plain_norms[1:], rel=1e-4), (plain_norms, he_norms)

    # the server keeps c with each plain checkpoint, by the model's tensor names; under HE it holds nothing plain
    store = federation.kit("server1") / "store" / "jobs"
    last = len(plain) - 1
    state = arrays.read_file(store / plain_id / "workspace" / "checkpoints" / f"round_{last:05d}.state.fsa")
    model = arrays.read_file(federation.admin_kit / "transfer" / plain_id / "global_model.fsa")
    assert set(model) == set(state)  # the result is the model alone; every tensor of it is floating point here
    assert all(value.dtype == np.float64 for value in state.values())
    assert any(np.abs(value).max() > 0 for value in state.values())
    assert list((store / he_id / "workspace" / "checkpoints").glob("*.fsa")) == []
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
