"""FedOpt under HE, sites and server in one process: the sites' step against the server's plain step.

Three sites, two sampled each round (as sample_fraction 0.5 samples), each sending a fixed update; the
HE path (fedsec.site.fedopt_he on the sites, SiteStepAccumulator on the server, the real codec) must
give every sampled site the byte-identical global model and state, and match the plain FedOpt
strategy within the fixed point: he.clip 0.5 with max_clients 2 gives 2**-39 per value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

pytest.importorskip("tenseal")

from fedsec.errors import HEError, JobError
from fedsec.he import codec, context, sealed
from fedsec.jobs.meta import ServerOptimizer, StrategyConfig, StrategyKind
from fedsec.site import fedopt_he
from fedsec.wire import arrays
from fedsec.workflow.aggregate import Accumulator, SiteStepAccumulator
from fedsec.workflow.strategies import FedOpt

JOB = "job-7"
CLIP, MAX_CLIENTS, MAX_EXAMPLES = 0.5, 2, 4
STRATEGY = StrategyConfig(StrategyKind.FEDOPT, optimizer=ServerOptimizer.ADAM, server_lr=0.05)
INITIAL: dict[str, NDArray[Any]] = {
    "w": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
    "b": np.zeros(4, np.float32),
    "n": np.array(3, np.int64),
}
EXAMPLES = {"site-1": 2, "site-2": 4, "site-3": 3}  # weights 0.5, 1, 0.75: exact in the fixed point
SAMPLED = [("site-1", "site-2"), ("site-2", "site-3"), ("site-1", "site-3")]


def update(site: str, number: int) -> dict[str, NDArray[Any]]:
    """site's weight difference in round number: fixed, different per site and round, within the clip."""
    rng = np.random.default_rng([int(site[-1]), number])
    return {
        "w": rng.uniform(-0.2, 0.2, (3, 4)).astype(np.float32),
        "b": rng.uniform(-0.1, 0.1, 4).astype(np.float32),
        "n": np.array(0, np.int64),  # a counter's change would have to fit the clip too
    }


@pytest.fixture(scope="module")
def keys() -> tuple[Any, Any]:
    client, server = context.make_contexts()
    return context.load_client_context(client, "client"), context.load_server_context(server, "server")


def plain_job(tmp: Path) -> dict[str, NDArray[Any]]:
    strategy = FedOpt(ServerOptimizer.ADAM, {k: float(v) for k, v in STRATEGY.settings().items() if k != "optimizer"})
    model = tmp / "plain-0.fsa"
    arrays.write_file(model, INITIAL)
    for number, sites in enumerate(SAMPLED):
        fold = Accumulator(arrays.specs_of(INITIAL))
        for site in sites:
            path = tmp / f"plain-{site}.fsa"
            arrays.write_file(path, update(site, number))
            fold.add(path, EXAMPLES[site], site)
        dest = tmp / f"plain-{number + 1}.fsa"
        strategy.write_result(fold, model, True, dest)
        model = dest
    return arrays.read_file(model)


def he_round(
    keys: tuple[Any, Any], tmp: Path, number: int, sites: tuple[str, ...], task: bytes, final: bool = False
) -> tuple[bytes, list[fedopt_he.SiteStep]]:
    """One round: each site steps from task and sends its bundle; the server's next task (or result) and the steps."""
    client, server = keys
    acc = SiteStepAccumulator(server, arrays.specs_of(INITIAL), CLIP, MAX_CLIENTS, tmp, final=final)
    steps = []
    for site in sites:
        stepped = fedopt_he.step(client, JOB, STRATEGY, number, task, number > 0, f"{site} round {number}")
        steps.append(stepped)
        body = b""
        if not final:
            diff = fedopt_he.update_difference(update(site, number), {"params_type": "diff"}, stepped.model, site)
            rng = np.random.default_rng(number)
            weight = EXAMPLES[site] / MAX_EXAMPLES
            body = codec.encrypt_model(client, diff, weight, CLIP, rng, MAX_CLIENTS)
        path = tmp / f"upload-{site}-{number}"
        path.write_bytes(stepped.prefix + body)
        acc.add_result(site, path, f"result of {site}")
    dest = tmp / f"round-{number}.fsh"
    acc.write(dest, number)
    acc.close()
    return dest.read_bytes(), steps


def test_the_sites_step_agrees_byte_for_byte_and_matches_the_plain_job(keys: tuple[Any, Any], tmp_path: Path) -> None:
    expected = plain_job(tmp_path)
    task = arrays.encode(INITIAL)
    for number, sites in enumerate(SAMPLED):
        task, steps = he_round(keys, tmp_path, number, sites, task)
        assert len({s.digest for s in steps}) == 1  # the sampled sites computed the same model and state
        assert steps[0].prefix != steps[1].prefix  # ... though their ciphertexts differ
        assert len({arrays.encode(s.model) for s in steps}) == 1
    # the final evaluation: every site (also one never sampled since round 1) steps to the same final model
    _, finals = he_round(keys, tmp_path, len(SAMPLED), ("site-1", "site-2", "site-3"), task, final=True)
    models = {arrays.encode(s.model) for s in finals}
    assert len(models) == 1 and len({s.digest for s in finals}) == 1
    final = finals[0].model
    assert final["n"].tolist() == expected["n"].tolist() == 3
    step = 2.0**-39  # the fixed point of clip 0.5 with 2 sites
    for name in ("w", "b"):
        assert final[name].dtype == np.float32
        difference = np.abs(final[name].astype(np.float64) - expected[name])
        # three adam steps (0.05 each) on averages good to about 2**-39: within ten fixed-point steps, where one
        # adam step moves each weight by up to 0.05, and the float32 next to the plain model's
        within = 10 * step + np.spacing(np.abs(expected[name]).astype(np.float32)).astype(np.float64)
        assert (difference <= within).all(), (name, float(difference.max()))
    assert not np.array_equal(final["w"], INITIAL["w"])


def test_a_state_that_is_not_the_one_the_sites_agreed_on_is_refused(keys: tuple[Any, Any], tmp_path: Path) -> None:
    task, _ = he_round(keys, tmp_path, 0, SAMPLED[0], arrays.encode(INITIAL))
    digest, state, rest = sealed.split_bundle(task, "task")
    forged = sealed.bundle_header("0" * 64, len(state)) + bytes(state) + bytes(rest)
    with pytest.raises(HEError, match="do not have the digest 0000000000000000... its sites agreed on"):
        fedopt_he.step(keys[0], JOB, STRATEGY, 1, forged, True, "task")
    with pytest.raises(HEError, match="of round 0 do not have the digest"):  # another job's state
        fedopt_he.step(keys[0], "job-8", STRATEGY, 1, task, True, "task")
    other_state = fedopt_he.step(keys[0], JOB, STRATEGY, 0, arrays.encode(update("site-1", 5)), False, "x").prefix
    _, swapped, _ = sealed.split_bundle(other_state, "x")
    replay = sealed.bundle_header(digest, len(swapped)) + bytes(swapped) + bytes(rest)
    with pytest.raises(HEError, match="do not have the digest"):
        fedopt_he.step(keys[0], JOB, STRATEGY, 1, replay, True, "task")


def test_sites_that_disagree_fail_the_round_naming_them(keys: tuple[Any, Any], tmp_path: Path) -> None:
    client, server = keys
    acc = SiteStepAccumulator(server, arrays.specs_of(INITIAL), CLIP, MAX_CLIENTS, tmp_path, final=True)
    good = fedopt_he.step(client, JOB, STRATEGY, 0, arrays.encode(INITIAL), False, "good")
    other: dict[str, NDArray[Any]] = {**INITIAL, "b": np.ones(4, np.float32)}
    bad = fedopt_he.step(client, JOB, STRATEGY, 0, arrays.encode(other), False, "bad")
    for site, stepped in (("site-1", good), ("site-2", bad), ("site-3", good)):
        (tmp_path / site).write_bytes(stepped.prefix)
        acc.add_result(site, tmp_path / site, site)
    with pytest.raises(JobError) as info:
        acc.write(tmp_path / "out.fsh", 4)
    text = str(info.value)
    assert text.startswith("round 4: the sites disagree on the FedOpt step")
    assert f"site-1, site-3 sent {good.digest[:16]}" in text and f"site-2 sent {bad.digest[:16]}" in text
    assert not (tmp_path / "out.fsh").exists()
    acc.close()
    assert list(tmp_path.glob("*.fsx")) == []  # the kept state is gone


def test_the_server_refuses_a_result_of_the_wrong_shape(keys: tuple[Any, Any], tmp_path: Path) -> None:
    client, server = keys
    stepped = fedopt_he.step(client, JOB, STRATEGY, 0, arrays.encode(INITIAL), False, "site")
    training = SiteStepAccumulator(server, arrays.specs_of(INITIAL), CLIP, MAX_CLIENTS, tmp_path, final=False)
    final = SiteStepAccumulator(server, arrays.specs_of(INITIAL), CLIP, MAX_CLIENTS, tmp_path, final=True)
    path = tmp_path / "upload"
    path.write_bytes(stepped.prefix)
    with pytest.raises(Exception, match="the training result carries no encrypted update"):
        training.add_result("site-1", path, "result of site-1")
    encrypted = codec.encrypt_model(client, update("site-1", 0), 1.0, CLIP, np.random.default_rng(0), MAX_CLIENTS)
    path.write_bytes(stepped.prefix + encrypted)
    with pytest.raises(Exception, match="a final evaluation's answer carries no update"):
        final.add_result("site-1", path, "result of site-1")
    path.write_bytes(stepped.prefix[:-5] + b"\0" * 5)  # a sealed state cut short and padded
    with pytest.raises(Exception, match="sealed"):
        final.add_result("site-1", path, "result of site-1")
    assert training.digests == {} and final.digests == {} and list(tmp_path.glob("*.fsx")) == []
