"""Homomorphic encryption end to end: the server aggregates what it cannot read."""

from __future__ import annotations

import importlib.util
import itertools
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
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


# The digits job as the tests run it: 3 rounds of one local epoch. More epochs a round make local SGD chaotic
# enough (about 1000 times a round, measured) to carry even float32's last bit into whole test images.
SHORT = ("--num_rounds", "3", "--epochs", "1")


def run_digits(fed: Federation, cwd: Path, *extra: str) -> tuple[str, float]:
    """Run jobs/digits_fedavg/job.py (3 sites, SHORT, and extra) to its end; its job id and final accuracy."""
    argv = [sys.executable, str(JOB_PY), "--startup_kit", str(fed.admin_kit), "--n_clients", "3", *SHORT]
    done = subprocess.run([*argv, *extra], cwd=cwd, capture_output=True, text=True, timeout=300, check=False)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    found = re.search(r"^submitted job (\S+)$", done.stdout, re.M)
    accuracy = re.search(r"^final global model: accuracy ([0-9.]+)", done.stdout, re.M)
    assert found and accuracy, out
    return found.group(1), float(accuracy.group(1))


def digits_shapes() -> dict[str, tuple[int, ...]]:
    """The digits job's model: its tensors' names and shapes (jobs/digits_fedavg/model.py; needs torch)."""
    spec = importlib.util.spec_from_file_location("digits_model", JOB_PY.parent / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {name: tuple(value.shape) for name, value in module.DigitsNet().state_dict().items()}


def run_plain_and_he(fed: Federation, cwd: Path, *extra: str) -> tuple[tuple[str, float], tuple[str, float]]:
    """run_digits with extra, plain and with --he at the same time: (plain job id, accuracy), (HE job id, accuracy)."""
    with ThreadPoolExecutor(2) as pool:
        plain = pool.submit(run_digits, fed, cwd, *extra)
        he = pool.submit(run_digits, fed, cwd, *extra, "--he")
        return plain.result(), he.result()


@pytest.mark.federation(n_clients=3, heartbeat_timeout=30.0, he=True)
def test_he_job_learns_and_the_server_cannot_decrypt(federation: Federation, tmp_path: Path) -> None:
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
    # it learns; that it ends where the plain job does is test_strategies.py's (every strategy, plain and HE)
    he_id, he_accuracy = run_digits(federation, tmp_path, "--he")
    assert he_accuracy >= 0.8, he_accuracy

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

    # the decrypted model has the job's tensors
    with Session(federation.admin_kit) as s:
        assert s.get_job_meta(he_id).status == "finished:completed"
    assert digits_shapes() == {k: v.shape for k, v in decrypted.items()}


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

    After one round the two jobs' models agree to float32's last bit (one_round). After five, their
    accuracies on the 360 test images are within one image: the sites step the same float64 code on a mean
    of differences that the fixed point (2**-38 here) encodes exactly or within 2**-38, so the models stay
    that close (measured, in plain arithmetic with this quantisation: the same bits every round).
    """
    federation.start_all()
    fedadam = ["--strategy", "fedopt", "--optimizer", "adam", "--server_lr", "0.02", "--num_rounds", "5"]
    fedadam += ["--sample_fraction", "0.5", "--min_clients", "2", "--sample_seed", "7"]
    one_round(federation, tmp_path, fedadam)
    (plain_id, plain_accuracy), (he_id, he_accuracy) = run_plain_and_he(federation, tmp_path, *fedadam)
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
    assert plain_accuracy >= 0.5 and he_accuracy >= 0.5, (plain_accuracy, he_accuracy)  # chance: 0.1
    assert abs(he_accuracy - plain_accuracy) <= 0.005, (plain_accuracy, he_accuracy)


def one_round(federation: Federation, tmp_path: Path, fedadam: list[str]) -> None:
    """One round of plain and HE FedAdam: the same updates, so the models agree to float32's last bit.

    Both jobs' two sampled sites train from the same initial model with the same seeds, so they send
    the same float32 differences, each of weight 1 (479 examples apiece). Under HE's fixed point
    (2**-38 here: he.clip 2 for 3 sites) every difference of magnitude 2**-15 and above lies on the grid
    and is encoded exactly, a smaller one within 2**-38: the decrypted mean is the plain one within
    2**-38. Adam's first step, server_lr * 0.1 d / (0.1 |d| + tau), moves by at most
    server_lr * 0.1 / tau = 2 times a change in d: under 2**-37 before the step's float64 result is cast
    to float32, so each weight is the plain one or the float32 next to it (measured: all equal).
    """
    one = [*fedadam, "--num_rounds", "1"]
    (plain_id, plain_accuracy), (he_id, he_accuracy) = run_plain_and_he(federation, tmp_path, *one)
    plain = arrays.read_file(federation.admin_kit / "transfer" / plain_id / "global_model.fsa")
    he = arrays.read_file(federation.kit("site-1") / "jobs" / he_id / "work" / "global_model.fsa")
    for name, value in plain.items():
        assert he[name].dtype == value.dtype == np.float32, name
        apart = np.abs(he[name].astype(np.float64) - value)
        assert (apart <= np.spacing(np.maximum(np.abs(he[name]), np.abs(value)))).all(), (name, apart.max())
    assert abs(he_accuracy - plain_accuracy) <= 0.005, (plain_accuracy, he_accuracy)


def decrypt_result(federation: Federation, tmp_path: Path, job_id: str) -> bytes:
    """The downloaded result of job_id decrypted with site-1's key by `fedsec he decrypt`, as an .fsa file's bytes."""
    out = tmp_path / f"{job_id}.fsa"
    cmd = [sys.executable, "-m", "fedsec", "he", "decrypt", "--context"]
    cmd += [str(federation.kit("site-1") / "startup" / "client_context.tenseal")]
    cmd += [str(federation.admin_kit / "transfer" / job_id), "-o", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    return out.read_bytes()
