"""Homomorphic encryption end to end: the server aggregates what it cannot read."""

from __future__ import annotations

import importlib.util
import itertools
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedsec.api import Session
from fedsec.errors import HEError
from fedsec.wire import arrays
from tests.integration.harness import Federation

JOB_PY = Path(__file__).resolve().parents[2] / "jobs" / "digits_fedavg" / "job.py"

pytestmark = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("torch", "sklearn", "tenseal")),
    reason="needs the ml extra and tenseal",
)


def run_digits(fed: Federation, cwd: Path, *extra: str) -> tuple[str, float]:
    """Run jobs/digits_fedavg/job.py (3 sites, 5 rounds, and extra) to its end; its job id and final accuracy."""
    argv = [sys.executable, str(JOB_PY), "--startup_kit", str(fed.admin_kit), "--n_clients", "3", "--num_rounds", "5"]
    done = subprocess.run([*argv, *extra], cwd=cwd, capture_output=True, text=True, timeout=300, check=False)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    found = re.search(r"^submitted job (\S+)$", done.stdout, re.M)
    accuracy = re.search(r"^final global model: accuracy ([0-9.]+)", done.stdout, re.M)
    assert found and accuracy, out
    return found.group(1), float(accuracy.group(1))


@pytest.mark.federation(n_clients=3, heartbeat_timeout=30.0, he=True)
def test_he_job_matches_plain_job_and_server_cannot_decrypt(federation: Federation, tmp_path: Path) -> None:
    from fedsec.he.codec import decrypt_model
    from fedsec.he.context import has_secret_key, load_client_context, load_server_context

    server_ctx_file = federation.kit("server1") / "startup" / "server_context.tenseal"
    client_ctx_file = federation.kit("site-1") / "startup" / "client_context.tenseal"
    assert client_ctx_file.stat().st_mode & 0o777 == 0o600
    assert not (federation.kit("server1") / "startup" / "client_context.tenseal").exists()
    server_ctx = load_server_context(server_ctx_file.read_bytes(), "server context")
    assert not has_secret_key(server_ctx)
    with pytest.raises(HEError):
        load_client_context(server_ctx_file.read_bytes(), "server context")

    federation.start_all()
    plain_id, plain_accuracy = run_digits(federation, tmp_path)
    he_id, he_accuracy = run_digits(federation, tmp_path, "--he")
    # Both learn on every CPU. Their digits differ: HE quantises each update (stochastic rounding, 2^-17 steps here),
    # and five rounds of SGD carry such a difference anywhere within run-to-run noise. That the encrypted sum equals
    # the plain sum of the same quantised updates exactly is tests/unit/he/test_codec.py's to show.
    assert plain_accuracy >= 0.9 and he_accuracy >= 0.9, (plain_accuracy, he_accuracy)

    # the server's job store and the downloaded result hold only the encrypted model
    store = federation.kit("server1") / "store" / "jobs" / he_id / "workspace"
    assert list(store.glob("checkpoints/*.fsa")) == []
    assert list(store.glob("checkpoints/*.fsh"))
    result = federation.admin_kit / "transfer" / he_id
    assert not (result / "global_model.fsa").exists()
    encrypted = (result / "global_model.fsh").read_bytes()
    with pytest.raises(HEError):  # what the server holds cannot decrypt it
        decrypt_model(server_ctx, encrypted, "result")

    # a site's key holder decrypts the downloaded result; it equals what each site kept
    out = tmp_path / "final.fsa"
    cmd = [
        sys.executable,
        "-m",
        "fedsec",
        "he",
        "decrypt",
        "--context",
        str(client_ctx_file),
        str(result),
        "-o",
        str(out),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    decrypted = arrays.read_file(out)
    for site in ("site-1", "site-2", "site-3"):
        kept = arrays.read_file(federation.kit(site) / "jobs" / he_id / "work" / "global_model.fsa")
        assert set(kept) == set(decrypted)
        assert all(np.array_equal(kept[k], decrypted[k]) for k in kept)

    # the plain job's result is plain, with the same tensors
    with Session(federation.admin_kit) as s:
        assert s.get_job_meta(he_id).status == "finished:completed"
    plain = arrays.read_file(federation.admin_kit / "transfer" / plain_id / "global_model.fsa")
    assert {k: v.shape for k, v in plain.items()} == {k: v.shape for k, v in decrypted.items()}


def test_he_job_on_a_project_without_he_fails_clearly(federation: Federation, tmp_path: Path) -> None:
    federation.start_all()
    argv = [sys.executable, str(JOB_PY), "--startup_kit", str(federation.admin_kit), "--n_clients", "3"]
    done = subprocess.run(
        [*argv, "--num_rounds", "1", "--he"], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode != 0
    assert "the server kit has no HE context" in done.stdout + done.stderr


@pytest.mark.federation(n_clients=3, heartbeat_timeout=30.0, he=True)
def test_he_fedadam_with_sampling_gives_every_site_the_same_final_model(federation: Federation, tmp_path: Path) -> None:
    """FedAdam under HE: the sampled sites step the optimizer; every site ends with the byte-identical model.

    Sampling 0.5 of 3 sites (with min_clients 2) takes 2 a round, so some site's first round after
    sitting one out starts from the state the others stepped; the final evaluation brings all 3 the
    same last step. The plain job of the same sample_seed samples the same sites.

    After one round the two jobs' models agree within the fixed point (their sites sent the same
    updates). After five they agree in accuracy only: each round's local SGD, from a global model a
    few 2**-17 away, carries the difference far (measured: weights 0.05 apart, accuracy within 1.1
    points over four runs), as in FedAvg under HE (test_he_job_matches_plain_job_and_server_cannot_decrypt).
    """
    federation.start_all()
    fedadam = ["--strategy", "fedopt", "--optimizer", "adam", "--server_lr", "0.02"]
    fedadam += ["--sample_fraction", "0.5", "--min_clients", "2", "--sample_seed", "7"]
    one_round(federation, tmp_path, fedadam)
    plain_id, plain_accuracy = run_digits(federation, tmp_path, *fedadam)
    he_id, he_accuracy = run_digits(federation, tmp_path, *fedadam, "--he")
    sites = ("site-1", "site-2", "site-3")

    with Session(federation.admin_kit) as s:
        info, plain_info = s.get_job_meta(he_id), s.get_job_meta(plain_id)
    assert info.status == "finished:completed", info.reason
    sampled = [r["sites"] for r in info.progress["rounds"]]
    assert [len(r) for r in sampled] == [2] * 5, sampled
    assert any(set(now) - set(before) for before, now in itertools.pairwise(sampled)), sampled
    assert [r["sites"] for r in plain_info.progress["rounds"]] == sampled  # the same sample_seed: the same sites
    assert sorted(info.progress["final"]["sites"]) == list(sites)
    # the server saw the sampled sites agree on every round's step, and all three on the final one
    digests = federation.step_digests(he_id)
    assert sorted(digests, key=int) == [str(n) for n in range(6)] and len(set(digests.values())) == 6

    kept = {site: (federation.kit(site) / "jobs" / he_id / "work" / "global_model.fsa").read_bytes() for site in sites}
    assert len(set(kept.values())) == 1, "the sites' final models differ"
    assert decrypt_result(federation, tmp_path, he_id) == kept["site-1"]  # the job's result: that model, sealed

    final = arrays.decode(kept["site-1"], "final model")
    plain = arrays.read_file(federation.admin_kit / "transfer" / plain_id / "global_model.fsa")
    assert {k: (v.dtype, v.shape) for k, v in plain.items()} == {k: (v.dtype, v.shape) for k, v in final.items()}
    assert plain_accuracy >= 0.9 and he_accuracy >= 0.9, (plain_accuracy, he_accuracy)
    assert abs(he_accuracy - plain_accuracy) <= 0.02, (plain_accuracy, he_accuracy)


def one_round(federation: Federation, tmp_path: Path, fedadam: list[str]) -> None:
    """One round of plain and HE FedAdam: the same updates, so the models agree within the fixed point.

    Both jobs' two sampled sites train from the same initial model with the same seeds, so they send
    the same differences; only the fixed point (2**-17 here: he.clip 2 for 3 sites) parts the HE
    average from the plain one, by under a step per site. Adam's first step,
    server_lr * 0.1 d / (0.1 |d| + tau), moves by at most server_lr * 0.1 / tau = 2 times a change in d:
    under 4 steps of 2**-17 in all (measured: 1.7).
    """
    one = [*fedadam, "--num_rounds", "1"]
    plain_id, plain_accuracy = run_digits(federation, tmp_path, *one)
    he_id, he_accuracy = run_digits(federation, tmp_path, *one, "--he")
    plain = arrays.read_file(federation.admin_kit / "transfer" / plain_id / "global_model.fsa")
    he = arrays.read_file(federation.kit("site-1") / "jobs" / he_id / "work" / "global_model.fsa")
    gap = max(float(np.abs(he[k].astype(np.float64) - plain[k]).max()) for k in plain)
    assert 0 < gap < 4 * 2**-17, gap / 2**-17
    assert abs(he_accuracy - plain_accuracy) <= 0.005, (plain_accuracy, he_accuracy)


def decrypt_result(federation: Federation, tmp_path: Path, job_id: str) -> bytes:
    """The downloaded result of job_id decrypted with site-1's key by `fedsec he decrypt`, as an .fsa file's bytes."""
    out = tmp_path / f"{job_id}.fsa"
    cmd = [sys.executable, "-m", "fedsec", "he", "decrypt", "--context"]
    cmd += [str(federation.kit("site-1") / "startup" / "client_context.tenseal")]
    cmd += [str(federation.admin_kit / "transfer" / job_id), "-o", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    return out.read_bytes()
