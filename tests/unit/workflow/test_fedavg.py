"""FedAvg driven in-process: run() in a thread, sites calling get_task / submit as the service would (no gRPC)."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from fedsec import limits
from fedsec.errors import JobError, TransferInterruptedError
from fedsec.jobs import FedAvgRecipe, FedOptRecipe, load_job_folder
from fedsec.tracking.receivers import Receiver
from fedsec.wire import arrays, fedsec_pb2, streams
from fedsec.workflow.fedavg import FedAvg, Participation
from fedsec.workflow.link import JobStateLink
from fedsec.workflow.tracking import Tracker
from tests.integration.harness import wait_until

JOB_ID = "0123456789abcdef"
INITIAL: dict[str, NDArray[Any]] = {"w": np.zeros((2, 3), np.float32), "n": np.zeros(2, np.int64)}
TASK, WAIT, DONE = fedsec_pb2.TASK_STATUS_TASK, fedsec_pb2.TASK_STATUS_WAIT, fedsec_pb2.TASK_STATUS_DONE
SITES = ["site-1", "site-2"]


def update(w: float, n: int = 0) -> dict[str, NDArray[Any]]:
    return {"w": np.full((2, 3), w, np.float32), "n": np.full(2, n, np.int64)}


class Job:
    """A job folder from FedAvgRecipe and the FedAvg objects made from it on one workspace."""

    def __init__(
        self, tmp: Path, num_rounds: int, min_clients: int, recipe: type[FedAvgRecipe] = FedAvgRecipe, **settings: Any
    ) -> None:
        tmp.mkdir()
        script = tmp / "train.py"
        script.write_text("raise SystemExit('never run by the workflow')\n")
        settings.setdefault("round_timeout", 10.0)
        settings.setdefault("start_timeout", 10.0)
        self.folder = recipe("unit", INITIAL, script, num_rounds, min_clients, **settings).export(tmp / "job")
        self.workspace = tmp / "workspace"
        self.fedavgs: list[FedAvg] = []
        self.runs: list[Running] = []

    def fedavg(self, clock: Callable[[], float] = time.monotonic, tracker: Tracker | None = None) -> FedAvg:
        """A new FedAvg on the workspace, handed the state the previous one left (as the server parent would)."""
        meta, app = load_job_folder(self.folder)
        link = JobStateLink.in_process(self.fedavgs[-1].link.state() if self.fedavgs else None)
        fedavg = FedAvg(JOB_ID, self.folder, self.workspace, meta, app, tracker=tracker, clock=clock, link=link)
        self.fedavgs.append(fedavg)
        return fedavg

    def start(self, fedavg: FedAvg) -> Running:
        run = Running(fedavg)
        self.runs.append(run)
        return run

    def progress(self) -> dict[str, Any]:
        """The progress document of the latest FedAvg's state (what admins see)."""
        return self.fedavgs[-1].link.progress()

    def result(self) -> dict[str, NDArray[Any]]:
        return arrays.read_file(self.workspace / "result" / "global_model.fsa")

    def close(self) -> None:
        """End every run still going: no site left, so an open round closes at once."""
        for fedavg in self.fedavgs:
            fedavg.update_sites([])
            fedavg.finish()
        for run in self.runs:
            run.thread.join(2)


class Running:
    """FedAvg.run() in a thread; what it raised is kept for the test."""

    def __init__(self, fedavg: FedAvg) -> None:
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, args=(fedavg,), name="fedavg-run", daemon=True)
        self.thread.start()

    def _main(self, fedavg: FedAvg) -> None:
        try:
            fedavg.run()
        except BaseException as exc:  # handed to the test by join()
            self.error = exc

    def join(self, timeout: float = 60.0) -> BaseException | None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"run() did not return within {timeout} s"
        return self.error


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """These models are a few hundred bytes: let them travel in 64-byte chunks, so a stream can be cut midway."""
    monkeypatch.setattr(limits, "MIN_CHUNK_BYTES", 64)


@pytest.fixture
def make_job(tmp_path: Path) -> Iterator[Callable[..., Job]]:
    jobs: list[Job] = []

    def make(num_rounds: int = 1, min_clients: int = 1, **settings: Any) -> Job:
        job = Job(tmp_path / str(len(jobs)), num_rounds, min_clients, **settings)
        jobs.append(job)
        return job

    yield make
    for job in jobs:
        job.close()


def task(fedavg: FedAvg, site: str, number: int, kind: str = "train") -> Path:
    """Wait for site's task and check it is round number of kind; the model file it names."""
    got = fedavg.get_task(site, 10)
    assert got.status == TASK, f"{site} got status {got.status}, expected a task for round {number}"
    assert (got.kind, got.current_round) == (kind, number)
    assert got.model is not None
    return got.model


def submit(
    fedavg: FedAvg,
    site: str,
    number: int,
    params: dict[str, NDArray[Any]] | None,
    *,
    kind: str = "train",
    num_examples: object = 1,
    params_type: str = "diff",
    metrics: dict[str, float] | None = None,
    meta_json: str | None = None,
    corrupt: Callable[[bytes], bytes] | None = None,
    cut_after: int | None = None,
) -> tuple[bool, str]:
    """Send site's result as the service does: a ResultHeader, then the encoded update in chunks.

    cut_after: the stream breaks (as the service reports a cancelled stream) after that many chunks.
    """
    payload = arrays.encode(params) if params is not None else b""
    if meta_json is None:
        meta_json = json.dumps({"num_examples": num_examples, "params_type": params_type})
    header = fedsec_pb2.ResultHeader(
        job_id=JOB_ID,
        site=site,
        current_round=number,
        task=kind,
        metrics=metrics or {},
        meta_json=meta_json,
        payload=streams.describe_bytes(payload),
    )
    sent = corrupt(payload) if corrupt else payload
    chunks = streams.bytes_chunks(sent, 64)  # small chunks of a small model: see small_chunks below
    if cut_after is not None:
        chunks = _cut(chunks, cut_after)
    return fedavg.submit(site, header, chunks)


def _cut(chunks: Iterator[bytes], after: int) -> Iterator[bytes]:
    for i, chunk in enumerate(chunks):
        if i == after:
            raise TransferInterruptedError("result stream: cancelled before its end")
        yield chunk


def assert_model(got: dict[str, NDArray[Any]], w: float, n: int) -> None:
    assert list(got) == ["w", "n"]
    assert got["w"].dtype == np.float32 and got["n"].dtype == np.int64
    assert np.array_equal(got["w"], np.full((2, 3), w, np.float32)), got["w"]
    assert np.array_equal(got["n"], np.full(2, n, np.int64)), got["n"]


# ---------------------------------------------------------------- a whole job


def test_two_sites_give_the_exact_weighted_average(make_job: Callable[..., Job]) -> None:
    job = make_job(num_rounds=2, min_clients=2)
    fedavg = job.fedavg()
    fedavg.update_sites(["site-1"])
    run = job.start(fedavg)
    assert fedavg.get_task("site-1", 0.2).status == WAIT  # waiting for min_clients=2 sites
    fedavg.update_sites(SITES)

    # round 0: weight differences, weighted by num_examples 1 and 3
    for site in SITES:
        assert_model(arrays.read_file(task(fedavg, site, 0)), 0, 0)
    assert submit(fedavg, "site-1", 0, update(1, 1), num_examples=1, metrics={"loss": 1.0}) == (True, "")
    assert fedavg.get_task("site-1", 0).status == WAIT  # answered: nothing until the next round
    assert submit(fedavg, "site-2", 0, update(5, 2), num_examples=3, metrics={"loss": 3.0}) == (True, "")

    # round 1 starts from 0 + (1*1 + 3*5)/4 = 4 and n = rint((1*1 + 3*2)/4 = 1.75) = 2; full weights this time
    for site in SITES:
        assert_model(arrays.read_file(task(fedavg, site, 1)), 4, 2)
    assert submit(fedavg, "site-1", 1, update(8, 10), params_type="full", metrics={"loss": 2.0}) == (True, "")
    assert submit(fedavg, "site-2", 1, update(0, 2), params_type="full", num_examples=3, metrics={"loss": 1.0}) == (
        True,
        "",
    )

    # the final evaluation of (1*8 + 3*0)/4 = 2 and n = (10 + 6)/4 = 4
    for site in SITES:
        assert_model(arrays.read_file(task(fedavg, site, 2, "evaluate")), 2, 4)
    assert submit(fedavg, "site-1", 2, None, kind="evaluate", metrics={"accuracy": 0.5}) == (True, "")
    assert submit(fedavg, "site-2", 2, None, kind="evaluate", num_examples=3, metrics={"accuracy": 0.9}) == (True, "")

    assert run.join() is None
    assert all(fedavg.get_task(site, 5).status == DONE for site in SITES)
    assert_model(job.result(), 2, 4)
    assert_model(arrays.read_file(job.workspace / "checkpoints" / "round_00000.fsa"), 4, 2)
    progress = job.progress()
    assert progress["rounds"] == [
        {"round": 0, "metrics": {"loss": 2.5}, "sites": SITES, "rejected": []},
        {"round": 1, "metrics": {"loss": 1.25}, "sites": SITES, "rejected": []},
    ]
    assert progress["final"]["sites"] == SITES
    assert progress["final"]["metrics"]["accuracy"] == pytest.approx(0.8)
    assert fedavg.link.completed_rounds == 2
    assert not (job.workspace / "progress.json").exists() and not (job.workspace / "state.json").exists()
    assert submit(fedavg, "site-1", 2, None, kind="evaluate") == (False, "the job has ended")


def test_sites_in_threads_over_many_rounds(make_job: Callable[..., Job]) -> None:
    sites = [f"site-{i}" for i in range(1, 5)]
    job = make_job(num_rounds=5, min_clients=4, evaluate_final=False)
    fedavg = job.fedavg()
    fedavg.update_sites(sites)
    errors: list[str] = []

    def site_main(site: str) -> None:
        # Every round site-i sends the difference i with weight i: the average moves by (1+4+9+16)/10 = 3.
        i = int(site.rsplit("-", 1)[1])
        number = 0
        while True:
            got = fedavg.get_task(site, 10)
            if got.status == DONE:
                break
            if got.status != TASK or got.model is None or got.current_round != number:
                errors.append(f"{site}: unexpected {got} in round {number}")
                return
            w = arrays.read_file(got.model)["w"]
            if not np.all(w == 3 * number):
                errors.append(f"{site}: round {number} model {w.ravel()[0]}, expected {3 * number}")
            accepted, reason = submit(fedavg, site, number, update(i), num_examples=i)
            if not accepted:
                errors.append(f"{site}: round {number} refused: {reason}")
            number += 1
        if number != 5:
            errors.append(f"{site}: done after {number} rounds")

    threads = [threading.Thread(target=site_main, args=(s,), name=s, daemon=True) for s in sites]
    run = job.start(fedavg)
    for thread in threads:
        thread.start()
    assert run.join(30) is None
    for thread in threads:
        thread.join(10)
    assert errors == []
    assert_model(job.result(), 15, 0)
    assert [r["sites"] for r in job.progress()["rounds"]] == [sites] * 5


# ---------------------------------------------------------------- refusals


def test_stale_unsampled_and_second_answers_are_refused(make_job: Callable[..., Job]) -> None:
    job = make_job(num_rounds=2, min_clients=1, sites=SITES, evaluate_final=False)
    fedavg = job.fedavg()
    assert submit(fedavg, "site-1", 0, update(1)) == (False, "no round is open")
    fedavg.update_sites([*SITES, "site-3"])  # site-3 is connected but not one of the job's sites
    run = job.start(fedavg)
    task(fedavg, "site-1", 0)
    assert fedavg.get_task("site-3", 0.1).status == WAIT

    assert submit(fedavg, "site-1", 1, update(1)) == (False, "stale result: round 0 (train) is open")
    assert submit(fedavg, "site-1", 0, None, kind="evaluate") == (False, "stale result: round 0 (train) is open")
    assert submit(fedavg, "site-3", 0, update(1)) == (False, "site-3 is not sampled in round 0")
    assert submit(fedavg, "site-1", 0, update(1)) == (True, "")
    assert submit(fedavg, "site-1", 0, update(100)) == (False, "site-1 already answered round 0")
    assert submit(fedavg, "site-2", 0, update(3)) == (True, "")

    task(fedavg, "site-2", 1)
    assert submit(fedavg, "site-2", 0, update(1)) == (False, "stale result: round 1 (train) is open")
    assert submit(fedavg, "site-1", 1, update(1)) == (True, "")
    assert submit(fedavg, "site-2", 1, update(1)) == (True, "")
    assert run.join() is None
    assert_model(job.result(), 3, 0)  # (1 + 3)/2 + (1 + 1)/2: the refused updates counted nowhere
    assert [r["rejected"] for r in job.progress()["rounds"]] == [[], []]


def _flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


def _nan() -> dict[str, NDArray[Any]]:
    bad = update(1)
    bad["w"][1, 2] = np.nan
    return bad


BAD_RESULTS: list[tuple[str, dict[str, Any], str]] = [
    ("nan", {"params": _nan()}, "tensor 'w' has 1 NaN and 0 infinite values"),
    (
        "shape",
        {"params": {"w": np.zeros((3, 2), np.float32), "n": np.zeros(2, np.int64)}},
        r"^tensor 'w' has shape \(3, 2\), the model has \(2, 3\)$",
    ),
    (
        "shape and size",
        {"params": {"w": np.zeros((3, 4), np.float32), "n": np.zeros(2, np.int64)}},
        r"^tensor 'w' has shape \(3, 4\), the model has \(2, 3\)$",
    ),
    (
        "dtype",
        {"params": {"w": np.zeros((2, 3), np.float64), "n": np.zeros(2, np.int64)}},
        r"^tensor 'w' has dtype float64, the model has float32$",
    ),
    (
        "missing tensor",
        {"params": {"w": np.zeros((2, 3), np.float32)}},
        r"^tensor 'n' is missing \(the model has it: int64 \(2,\)\)$",
    ),
    ("extra tensor", {"params": {**update(1), "x": np.zeros(1, np.float32)}}, r"^tensor 'x' is not in the model$"),
    ("no model", {"params": None}, r"^a training result carries no model"),
    (
        "not a model",
        {"params": {"w": np.zeros(50, np.float32)}, "corrupt": lambda data: b"JUNK" + data[4:]},
        r"^the update: bad magic .*\(not a model in fedsec's array format\)$",
    ),
    ("zero examples", {"num_examples": 0}, "num_examples must be a positive number, got 0"),
    ("bool examples", {"num_examples": True}, "num_examples must be a positive number, got True"),
    ("huge examples", {"num_examples": 1e13}, "num_examples must be a positive number"),
    ("params_type", {"params_type": "delta"}, "params_type must be one of full, diff"),
    ("mixed params_type", {"params_type": "full"}, "params_type full differs from this round's diff"),
    ("meta not JSON", {"meta_json": "{"}, "meta: not JSON"),
    ("meta nested deep", {"meta_json": "[" * 10_000}, "meta: nested deeper than"),
    ("meta with a huge number", {"meta_json": '{"num_examples": ' + "9" * 200_000 + "}"}, "meta: larger than"),
    ("meta with a long number", {"meta_json": '{"num_examples": ' + "9" * 5_000 + "}"}, "more than 100 digits"),
    ("meta a list", {"meta_json": "[1]"}, "meta is not a JSON object"),
    ("metric NaN", {"metrics": {"loss": float("nan")}}, "metric 'loss' is not a finite number"),
    ("digest", {"corrupt": _flip_last_byte}, "does not match its SHA-256 digest"),
]


@pytest.mark.parametrize(("bad", "reason"), [(b, r) for _, b, r in BAD_RESULTS], ids=[i for i, _, _ in BAD_RESULTS])
def test_a_bad_result_is_refused_and_the_round_goes_on(
    make_job: Callable[..., Job], bad: dict[str, Any], reason: str
) -> None:
    job = make_job(num_rounds=1, min_clients=1, evaluate_final=False)
    fedavg = job.fedavg()
    fedavg.update_sites([*SITES, "site-3"])
    run = job.start(fedavg)
    task(fedavg, "site-2", 0)
    assert submit(fedavg, "site-1", 0, update(2, 4)) == (True, "")
    kwargs = {"params": update(100, 100), **bad}
    accepted, why = submit(fedavg, "site-2", 0, **kwargs)
    assert not accepted
    assert why.startswith("site-2 round 0: update refused: ")
    assert re.search(reason, why.removeprefix("site-2 round 0: update refused: ")), why
    # the reason is in the job's progress as soon as it is given
    assert job.progress()["refused"] == [
        {"round": 0, "site": "site-2", "reason": why.removeprefix("site-2 round 0: update refused: ")}
    ]
    # the bad result used up site-2's turn: the round goes on without it
    assert submit(fedavg, "site-2", 0, update(100, 100)) == (False, "site-2 already answered round 0")
    assert submit(fedavg, "site-3", 0, update(2, 4)) == (True, "")
    assert run.join() is None
    assert_model(job.result(), 2, 4)
    rounds = job.progress()["rounds"]
    assert rounds == [{"round": 0, "metrics": {}, "sites": ["site-1", "site-3"], "rejected": ["site-2"]}]
    assert not list((job.workspace / "incoming").iterdir())


# ---------------------------------------------------------------- sites coming and going


def test_a_dropped_site_lets_the_round_close_with_the_others(make_job: Callable[..., Job]) -> None:
    job = make_job(num_rounds=2, min_clients=1, evaluate_final=False)
    fedavg = job.fedavg()
    fedavg.update_sites(SITES)
    run = job.start(fedavg)
    task(fedavg, "site-2", 0)
    assert submit(fedavg, "site-1", 0, update(2)) == (True, "")
    fedavg.update_sites(["site-1"])  # site-2's heartbeats stopped mid-round
    task(fedavg, "site-1", 1)
    assert fedavg.get_task("site-2", 0).status == WAIT  # not sampled: it was not live when round 1 began
    assert submit(fedavg, "site-2", 0, update(50)) == (False, "stale result: round 1 (train) is open")
    assert submit(fedavg, "site-2", 1, update(50)) == (False, "site-2 is not sampled in round 1")
    assert submit(fedavg, "site-1", 1, update(2)) == (True, "")
    assert run.join() is None
    assert_model(job.result(), 4, 0)
    assert [r["sites"] for r in job.progress()["rounds"]] == [["site-1"], ["site-1"]]


def test_fewer_results_than_min_clients_fail_the_job(make_job: Callable[..., Job]) -> None:
    job = make_job(num_rounds=3, min_clients=2)
    fedavg = job.fedavg()
    fedavg.update_sites(SITES)
    run = job.start(fedavg)
    for number in (0, 1):
        for site in SITES:
            task(fedavg, site, number)
            assert submit(fedavg, site, number, update(1)) == (True, "")
    task(fedavg, "site-1", 2)
    assert submit(fedavg, "site-1", 2, update(1)) == (True, "")
    fedavg.update_sites(["site-1"])
    error = run.join()
    assert isinstance(error, JobError)
    assert str(error) == "round 2: only 1 of min_clients=2 results arrived"
    assert fedavg.link.completed_rounds == 2
    assert not (job.workspace / "result" / "global_model.fsa").exists()


def test_a_silent_site_is_left_behind_at_the_round_timeout(make_job: Callable[..., Job]) -> None:
    job = make_job(num_rounds=1, min_clients=1, round_timeout=0.5, evaluate_final=False)
    fedavg = job.fedavg()
    fedavg.update_sites(SITES)
    run = job.start(fedavg)
    task(fedavg, "site-2", 0)
    assert submit(fedavg, "site-1", 0, update(7)) == (True, "")
    assert run.join() is None  # the round closed without site-2
    assert job.progress()["rounds"][0]["sites"] == ["site-1"]
    assert_model(job.result(), 7, 0)


def test_too_few_sites_at_the_start_fail_the_job(make_job: Callable[..., Job]) -> None:
    job = make_job(num_rounds=1, min_clients=2, start_timeout=0.3)
    fedavg = job.fedavg()
    fedavg.update_sites(["site-1"])
    error = job.start(fedavg).join()
    assert isinstance(error, JobError)
    assert str(error) == "start: only 1 of min_clients=2 sites connected within 0.3 s"


# ---------------------------------------------------------------- resuming


def test_a_new_fedavg_resumes_after_the_last_completed_round(
    make_job: Callable[..., Job], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fedsec.workflow")
    job = make_job(num_rounds=3, min_clients=2)
    first = job.fedavg()
    first.update_sites(SITES)
    run = job.start(first)
    for number in (0, 1):
        for site in SITES:
            task(first, site, number)
            assert submit(first, site, number, update(number + 1, 1), metrics={"round": number}) == (True, "")
    task(first, "site-1", 2)
    first.update_sites([])  # every site lost in round 2: the process gives up, as a crash would
    assert isinstance(run.join(), JobError)
    assert first.link.completed_rounds == 2

    second = job.fedavg()
    second.update_sites(SITES)
    run = job.start(second)
    for site in SITES:  # round 2 starts from the model after round 1: 0 + 1 + 2
        assert_model(arrays.read_file(task(second, site, 2)), 3, 2)
    for site in SITES:
        assert submit(second, site, 2, update(3, 1), metrics={"round": 2}) == (True, "")
    for site in SITES:
        task(second, site, 3, "evaluate")
        assert submit(second, site, 3, None, kind="evaluate", metrics={"accuracy": 1.0}) == (True, "")
    assert run.join() is None
    assert_model(job.result(), 6, 3)
    progress = job.progress()
    assert [(r["round"], r["metrics"]) for r in progress["rounds"]] == [(i, {"round": float(i)}) for i in range(3)]
    assert progress["final"] == {"metrics": {"accuracy": 1.0}, "sites": SITES}
    checkpoints = sorted(p.name for p in (job.workspace / "checkpoints").iterdir())
    assert checkpoints == ["round_00001.fsa", "round_00002.fsa"]  # the last two are kept
    assert f"job={JOB_ID} resuming after round 1" in caplog.text


def test_a_job_resumed_after_its_final_evaluation_asks_the_sites_nothing_and_keeps_its_result(
    make_job: Callable[..., Job], caplog: pytest.LogCaptureFixture
) -> None:
    """Its sites were told they are done and their scripts ended: a resumed process (the server restarted, or
    another replica took over, between the final evaluation and the result) must not wait for them again."""
    caplog.set_level(logging.INFO, logger="fedsec.workflow")
    job = make_job(num_rounds=1, min_clients=2)
    first = job.fedavg()
    first.update_sites(SITES)
    run = job.start(first)
    for site in SITES:
        task(first, site, 0)
        assert submit(first, site, 0, update(2, 1)) == (True, "")
    for site in SITES:
        task(first, site, 1, "evaluate")
        assert submit(first, site, 1, None, kind="evaluate", metrics={"accuracy": 0.5}) == (True, "")
    assert run.join() is None
    for kept in (job.workspace / "result").iterdir():  # as if it died before keeping its result
        kept.unlink()

    second = job.fedavg()  # no site is alive for it, and none would answer
    assert job.start(second).join() is None
    assert_model(job.result(), 2, 1)
    assert job.progress()["final"] == {"metrics": {"accuracy": 0.5}, "sites": SITES}
    assert f"job={JOB_ID} resuming after its final evaluation" in caplog.text


def test_a_resumed_fedopt_job_continues_its_server_optimizer_from_the_checkpoint(
    make_job: Callable[..., Job],
) -> None:
    # avgm, server_lr 0.5, momentum 0.5, every site sending the difference d: m = 0.5*m + d, w += 0.5*m
    job = make_job(num_rounds=3, min_clients=2, recipe=FedOptRecipe, optimizer="avgm", server_lr=0.5, momentum=0.5)
    first = job.fedavg()
    first.update_sites(SITES)
    run = job.start(first)
    for number in (0, 1):  # d = 2 twice: m = 2, w = 1; m = 0.5*2 + 2 = 3, w = 1 + 1.5 = 2.5
        for site in SITES:
            task(first, site, number)
            assert submit(first, site, number, update(2, 1)) == (True, "")
    assert_model(arrays.read_file(task(first, "site-1", 2)), 2.5, 2)  # n: the rounded average, as FedAvg
    first.update_sites([])  # every site lost in round 2: the process gives up, as a crash would
    assert isinstance(run.join(), JobError)
    checkpoints = sorted(p.name for p in (job.workspace / "checkpoints").iterdir())
    assert checkpoints == ["round_00000.fsa", "round_00000.state.fsa", "round_00001.fsa", "round_00001.state.fsa"]

    second = job.fedavg()
    second.update_sites(SITES)
    run = job.start(second)
    for site in SITES:  # d = 1 with m = 3 restored: m = 1.5 + 1 = 2.5, w = 2.5 + 1.25 = 3.75 (not 3.0 from m = 0)
        assert_model(arrays.read_file(task(second, site, 2)), 2.5, 2)
        assert submit(second, site, 2, update(1, 0)) == (True, "")
    for site in SITES:
        task(second, site, 3, "evaluate")
        assert submit(second, site, 3, None, kind="evaluate", metrics={"accuracy": 1.0}) == (True, "")
    assert run.join() is None
    assert_model(job.result(), 3.75, 2)
    checkpoints = sorted(p.name for p in (job.workspace / "checkpoints").iterdir())
    assert checkpoints == ["round_00001.fsa", "round_00001.state.fsa", "round_00002.fsa", "round_00002.state.fsa"]


def test_a_fedopt_job_whose_optimizer_state_is_lost_does_not_resume(make_job: Callable[..., Job]) -> None:
    job = make_job(num_rounds=2, min_clients=1, recipe=FedOptRecipe, optimizer="adam")
    first = job.fedavg()
    first.update_sites(["site-1"])
    run = job.start(first)
    task(first, "site-1", 0)
    assert submit(first, "site-1", 0, update(1, 0)) == (True, "")
    task(first, "site-1", 1)
    first.update_sites([])
    assert isinstance(run.join(), JobError)
    (job.workspace / "checkpoints" / "round_00000.state.fsa").unlink()
    second = job.fedavg()
    second.update_sites(["site-1"])
    error = job.start(second).join()
    assert isinstance(error, JobError)
    assert "the fedopt state of round 0 is missing: the job cannot resume its server optimizer" in str(error)


# ---------------------------------------------------------------- interrupted uploads


@pytest.mark.parametrize("how", ["ended early", "cancelled"])
def test_an_interrupted_upload_leaves_the_site_pending_and_its_retry_is_accepted(
    make_job: Callable[..., Job], how: str
) -> None:
    job = make_job(num_rounds=1, min_clients=2, evaluate_final=False)
    fedavg = job.fedavg()
    fedavg.update_sites(SITES)
    run = job.start(fedavg)
    task(fedavg, "site-2", 0)
    assert submit(fedavg, "site-1", 0, update(2, 4)) == (True, "")
    if how == "ended early":
        accepted, why = submit(
            fedavg, "site-2", 0, update(4, 4), corrupt=lambda data: data[: len(data) // 2 // 64 * 64]
        )  # whole chunks
        assert re.search(r"payload ended after \d+ of \d+ bytes", why), why
    else:
        accepted, why = submit(fedavg, "site-2", 0, update(4, 4), cut_after=1)
        assert "cancelled before its end" in why
    assert not accepted
    assert "send it again" in why
    assert fedavg.get_task("site-2", 0).status == TASK  # still pending in round 0
    assert submit(fedavg, "site-2", 0, update(4, 4)) == (True, "")  # the retry counts
    assert run.join() is None
    assert_model(job.result(), 3, 4)
    assert job.progress()["rounds"] == [{"round": 0, "metrics": {}, "sites": SITES, "rejected": []}]
    assert not list((job.workspace / "incoming").iterdir())


# ---------------------------------------------------------------- a site's failure is that site's

THREE = ["site-1", "site-2", "site-3"]


def test_a_site_that_left_leaves_the_round_and_is_never_sampled_again(make_job: Callable[..., Job]) -> None:
    job = make_job(num_rounds=2, min_clients=2, evaluate_final=False, round_timeout=600.0)
    fedavg = job.fedavg()
    fedavg.update_sites(THREE)
    run = job.start(fedavg)
    for site in THREE:
        task(fedavg, site, 0)
    assert submit(fedavg, "site-1", 0, update(2)) == (True, "")
    assert submit(fedavg, "site-2", 0, update(4)) == (True, "")
    # site-3's script died: the round closes at once with the two others, not at the round timeout
    fedavg.apply_participation(Participation({"site-3": 1}, {"site-3": "Traceback: RuntimeError: out of memory"}))
    for site in ("site-1", "site-2"):
        task(fedavg, site, 1)
    fedavg.update_sites(THREE)  # its parent is still connected: it stays out all the same
    assert fedavg.get_task("site-3", 0.2).status == WAIT
    assert submit(fedavg, "site-3", 1, update(50)) == (False, "site-3 is not sampled in round 1")
    for site in ("site-1", "site-2"):
        assert submit(fedavg, site, 1, update(1)) == (True, "")
    assert run.join() is None
    progress = job.progress()
    assert [r["sites"] for r in progress["rounds"]] == [["site-1", "site-2"]] * 2
    assert progress["rounds"][0]["failed"] == ["site-3"]
    assert progress["sites_left"] == [{"site": "site-3", "reason": "Traceback: RuntimeError: out of memory"}]
    assert_model(job.result(), 4, 0)


def test_a_restarted_site_skips_the_round_it_failed_in_and_rejoins_the_next(make_job: Callable[..., Job]) -> None:
    job = make_job(num_rounds=2, min_clients=2, evaluate_final=False, round_timeout=600.0)
    fedavg = job.fedavg()
    fedavg.update_sites(THREE)
    run = job.start(fedavg)
    for site in THREE:
        task(fedavg, site, 0)
    fedavg.apply_participation(Participation({"site-3": 1}))  # failed once, restarts
    assert fedavg.get_task("site-3", 0.1).status == WAIT
    assert submit(fedavg, "site-3", 0, update(9)) == (False, "site-3 left round 0: its script failed")
    fedavg.apply_participation(Participation({"site-3": 1}))  # the same failure read again changes nothing
    for site in ("site-1", "site-2"):
        assert submit(fedavg, site, 0, update(3)) == (True, "")
    for site in THREE:
        task(fedavg, site, 1)
        assert submit(fedavg, site, 1, update(3)) == (True, "")
    assert run.join() is None
    progress = job.progress()
    assert [r["sites"] for r in progress["rounds"]] == [["site-1", "site-2"], THREE]
    assert progress["site_restarts"] == {"site-3": 1}
    assert "sites_left" not in progress


def test_the_job_fails_only_when_fewer_than_min_clients_sites_remain(make_job: Callable[..., Job]) -> None:
    job = make_job(num_rounds=3, min_clients=2, sites=THREE, round_timeout=600.0, start_timeout=600.0)
    fedavg = job.fedavg()
    fedavg.update_sites(THREE)
    run = job.start(fedavg)
    for site in THREE:
        task(fedavg, site, 0)
    fedavg.apply_participation(Participation({"site-3": 1}, {"site-3": "site-3 refused the job: policy"}))
    for site in ("site-1", "site-2"):
        assert submit(fedavg, site, 0, update(1)) == (True, "")
    task(fedavg, "site-1", 1)  # two sites remain: min_clients=2 still holds
    assert run.thread.is_alive()
    fedavg.apply_participation(
        Participation({"site-3": 1, "site-2": 2}, {"site-3": "site-3 refused the job: policy", "site-2": "MemoryError"})
    )
    error = run.join()
    assert isinstance(error, JobError)
    assert str(error) == (
        "only 1 of min_clients=2 sites remain: site-3 left: site-3 refused the job: policy; site-2 left: MemoryError"
    )
    assert [e["site"] for e in job.progress()["sites_left"]] == ["site-3", "site-2"]
    assert fedavg.link.completed_rounds == 1


def test_sites_that_left_stay_out_after_a_resume(make_job: Callable[..., Job]) -> None:
    job = make_job(num_rounds=1, min_clients=1, evaluate_final=False, round_timeout=600.0)
    fedavg = job.fedavg()
    fedavg.apply_participation(Participation({"site-2": 2}, {"site-2": "gone"}))  # read at the process start
    fedavg.update_sites(SITES)
    run = job.start(fedavg)
    task(fedavg, "site-1", 0)
    assert fedavg.get_task("site-2", 0.1).status == WAIT
    assert submit(fedavg, "site-1", 0, update(1)) == (True, "")
    assert run.join() is None
    assert job.progress()["rounds"][0]["sites"] == ["site-1"]


# ---------------------------------------------------------------- deadlines per site, from receipt


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_each_site_has_the_round_timeout_from_when_it_received_its_task(make_job: Callable[..., Job]) -> None:
    clock = FakeClock()
    job = make_job(num_rounds=1, min_clients=2, evaluate_final=False, round_timeout=10.0, start_timeout=600.0)
    fedavg = job.fedavg(clock)
    fedavg.update_sites(THREE)
    run = job.start(fedavg)
    task(fedavg, "site-1", 0)  # the round opened at 1000
    assert submit(fedavg, "site-1", 0, update(2)) == (True, "")
    clock.now = 1008.0
    task(fedavg, "site-2", 0)  # a slow link: site-2 has its task only now, so it has until 1018
    clock.now = 1012.0  # past the opening's deadline: site-3, which never asked, is out of time, site-2 is not
    fedavg.update_sites(THREE)  # wakes the driver, which must keep the round open for site-2
    assert fedavg.get_task("site-2", 0).status == TASK
    assert submit(fedavg, "site-2", 0, update(4)) == (True, "")
    assert run.join() is None  # closed with two answers, site-3 past its deadline
    assert job.progress()["rounds"][0]["sites"] == ["site-1", "site-2"]
    assert_model(job.result(), 3, 0)


def test_a_round_closes_once_the_pending_sites_are_past_their_deadlines(make_job: Callable[..., Job]) -> None:
    clock = FakeClock()
    job = make_job(num_rounds=1, min_clients=1, evaluate_final=False, round_timeout=10.0, start_timeout=600.0)
    fedavg = job.fedavg(clock)
    fedavg.update_sites(SITES)
    run = job.start(fedavg)
    task(fedavg, "site-1", 0)
    assert submit(fedavg, "site-1", 0, update(2)) == (True, "")
    clock.now = 1005.0
    task(fedavg, "site-2", 0)  # until 1015
    clock.now = 1014.0
    fedavg.update_sites(SITES)
    assert run.thread.is_alive() and fedavg.get_task("site-2", 0).status == TASK
    clock.now = 1015.5
    fedavg.update_sites(SITES)
    assert run.join() is None
    assert job.progress()["rounds"][0]["sites"] == ["site-1"]


# ---------------------------------------------------------------- resume hygiene


def test_a_new_process_removes_leftover_temporary_files(make_job: Callable[..., Job]) -> None:
    job = make_job()
    job.fedavg()
    leftovers = [
        job.workspace / "checkpoints" / ".round_00003.fsa.k2j4h1.tmp",
        job.workspace / "incoming" / "site-1-x8f2.fsa",
        job.workspace / "incoming" / ".site-1-x8f2.fsa.abc.part",
    ]
    kept = job.workspace / "checkpoints" / "round_00002.fsa"
    for path in [*leftovers, kept]:
        path.write_bytes(b"half")
    job.fedavg()
    assert [p for p in leftovers if p.exists()] == []
    assert kept.read_bytes() == b"half"


# ---------------------------------------------------------------- the result of a job that did not complete


def test_a_failed_job_keeps_the_last_completed_round_as_its_result(make_job: Callable[..., Job]) -> None:
    job = make_job(num_rounds=3, min_clients=2)
    fedavg = job.fedavg()
    fedavg.update_sites(SITES)
    run = job.start(fedavg)
    for number in (0, 1):
        for site in SITES:
            task(fedavg, site, number)
            assert submit(fedavg, site, number, update(number + 1)) == (True, "")
    task(fedavg, "site-1", 2)
    fedavg.update_sites(["site-1"])
    assert isinstance(run.join(), JobError)
    entry = fedavg.keep_last_result()  # what the workflow process does as the job fails or is aborted
    assert entry == {"model": "global_model.fsa", "round": 1, "completed_rounds": 2}
    kept = job.workspace / "result" / "global_model.fsa"
    assert kept.read_bytes() == (job.workspace / "checkpoints" / "round_00001.fsa").read_bytes()
    assert_model(job.result(), 3, 0)
    assert job.progress()["result"] == entry
    assert fedavg.keep_last_result() == entry  # a second call (the process's last words) changes nothing


def test_a_job_stopped_before_its_first_round_completed_keeps_no_result(make_job: Callable[..., Job]) -> None:
    job = make_job(num_rounds=2, min_clients=2, start_timeout=0.3)
    fedavg = job.fedavg()
    assert isinstance(job.start(fedavg).join(), JobError)
    assert fedavg.keep_last_result() is None
    assert not (job.workspace / "result" / "global_model.fsa").exists()
    assert "result" not in job.progress() and job.progress()["rounds"] == []


def test_a_resumed_job_drops_the_result_kept_when_it_was_stopped(make_job: Callable[..., Job]) -> None:
    job = make_job(num_rounds=2, min_clients=1, evaluate_final=False)
    first = job.fedavg()
    first.update_sites(["site-1"])
    run = job.start(first)
    task(first, "site-1", 0)
    assert submit(first, "site-1", 0, update(1)) == (True, "")
    task(first, "site-1", 1)
    first.update_sites([])
    first.finish()
    run.join()
    assert first.keep_last_result() == {"model": "global_model.fsa", "round": 0, "completed_rounds": 1}
    second = job.fedavg()
    second.update_sites(["site-1"])
    run = job.start(second)
    task(second, "site-1", 1)
    assert "result" not in job.progress()  # the running job has no result yet
    assert submit(second, "site-1", 1, update(2)) == (True, "")
    assert run.join() is None
    assert job.progress()["result"] == {"model": "global_model.fsa", "round": 1, "completed_rounds": 2}
    assert_model(job.result(), 3, 0)


def test_a_full_server_disk_fails_the_job_with_that_reason(
    make_job: Callable[..., Job], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk is injected (a write that fails with ENOSPC): the job's reason says so, not an internal error."""
    import errno
    import os

    def full(path: Path, tensors: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    job = make_job(num_rounds=2, min_clients=1)
    fedavg = job.fedavg()
    fedavg.update_sites(["site-1"])
    run = job.start(fedavg)
    task(fedavg, "site-1", 0)
    monkeypatch.setattr(arrays, "write_file", full)
    assert submit(fedavg, "site-1", 0, update(1)) == (True, "")
    error = run.join()
    assert isinstance(error, JobError)
    assert str(error) == "server disk full: cannot write the checkpoint of round 0: No space left on device"
    assert str(job.workspace) not in str(error)


def test_refusals_kept_are_bounded_per_round_and_in_length(
    make_job: Callable[..., Job], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "MAX_REFUSALS_PER_ROUND", 1)
    monkeypatch.setattr(limits, "MAX_REFUSAL_TEXT", 30)
    job = make_job(num_rounds=1, min_clients=1, evaluate_final=False)
    fedavg = job.fedavg()
    fedavg.update_sites([*SITES, "site-3"])
    run = job.start(fedavg)
    task(fedavg, "site-1", 0)
    bad: dict[str, NDArray[Any]] = {"w": np.zeros((3, 2), np.float32), "n": np.zeros(2, np.int64)}
    accepted, why = submit(fedavg, "site-1", 0, bad)
    assert not accepted and why == "site-1 round 0: update refused: tensor 'w' has shape (3, 2)..."
    assert not submit(fedavg, "site-2", 0, bad)[0]
    assert submit(fedavg, "site-3", 0, update(1)) == (True, "")
    assert run.join() is None
    assert job.progress()["refused"] == [{"round": 0, "site": "site-1", "reason": "tensor 'w' has shape (3, 2)..."}]
    assert job.progress()["rounds"][0]["rejected"] == ["site-1", "site-2"]


def test_each_rounds_metrics_and_the_final_evaluation_reach_the_job_and_site_runs_under_one_name(
    make_job: Callable[..., Job], tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    from fedsec.tracking.backends import Backend
    from fedsec.tracking.receivers import embedded_mlflow_uri, open_receivers

    def opener() -> list[Receiver]:
        return open_receivers(JOB_ID, "unit", tmp_path / "tracking", Backend("local"), tensorboard=False)

    tracker = Tracker(tmp_path / "tracking.db", opener, "local", retry_seconds=(0.01,))
    wait_until(lambda: tracker.ready, 60, "the tracking store to open")
    job = make_job(num_rounds=2, min_clients=2)
    fedavg = job.fedavg(tracker=tracker)
    fedavg.update_sites(SITES)
    run = job.start(fedavg)
    for number, kind in ((0, "train"), (1, "train"), (2, "evaluate")):
        for i, site in enumerate(SITES):
            task(fedavg, site, number, kind)
            sent = update(1) if kind == "train" else None
            accuracy = 0.1 * number + 0.1 * i + (0.6 if kind == "evaluate" else 0.0)
            metrics = {"accuracy": accuracy}
            assert submit(fedavg, site, number, sent, kind=kind, num_examples=1 + 2 * i, metrics=metrics)[0]
    assert run.join() is None
    assert fedavg.sites_taking_part() == set(SITES)
    tracker.close()

    client = MlflowClient(tracking_uri=embedded_mlflow_uri(tmp_path / "tracking"))
    experiment = client.get_experiment_by_name("unit")
    assert experiment is not None
    runs = {
        r.data.tags.get("fedsec.site", "job"): r.info.run_id for r in client.search_runs([experiment.experiment_id])
    }
    assert sorted(runs) == ["job", *SITES]

    def curve(run: str, key: str) -> list[tuple[int, float]]:
        return sorted((m.step, round(m.value, 6)) for m in client.get_metric_history(runs[run], key))

    # the job's run: the weighted average (weights 1 and 3); each site's run: its own value; the final model at step 2
    assert curve("job", "accuracy") == [(0, 0.075), (1, 0.175), (2, 0.875)]
    assert curve("site-1", "accuracy") == [(0, 0.0), (1, 0.1), (2, 0.8)]
    assert curve("site-2", "accuracy") == [(0, 0.1), (1, 0.2), (2, 0.9)]
    assert curve("job", "final_accuracy") == [(2, 0.875)]
    assert curve("site-1", "final_accuracy") == [(2, 0.8)]
    assert curve("site-2", "final_accuracy") == [(2, 0.9)]


def test_a_rounds_metrics_are_kept_by_the_tracker_before_the_round_counts_as_completed(
    make_job: Callable[..., Job], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process killed right after its round was recorded is resumed after that round and never hands its
    metrics over again: they must already be with the tracker (kept on disk while its backend is closed)."""

    def closed() -> list[Receiver]:
        raise JobError("mlflow: still opening")

    job = make_job(num_rounds=2, min_clients=1)
    job.workspace.mkdir()
    tracker = Tracker(job.workspace / "tracking.db", closed, "local", retry_seconds=(60.0,))
    pending = job.workspace / "tracking_pending.json"
    kept_at_record: list[set[str]] = []
    fedavg = job.fedavg(tracker=tracker)
    round_done = fedavg.link.round_done

    def recording(record: Any, completed_rounds: int | None = None) -> None:
        kept_at_record.append(set(json.loads(pending.read_text())["metrics"]) if pending.exists() else set())
        round_done(record, completed_rounds)

    monkeypatch.setattr(fedavg.link, "round_done", recording)
    fedavg.update_sites(["site-1"])
    run = job.start(fedavg)
    for number, kind in ((0, "train"), (1, "train"), (2, "evaluate")):
        task(fedavg, "site-1", number, kind)
        sent = update(1) if kind == "train" else None
        assert submit(fedavg, "site-1", number, sent, kind=kind, metrics={"accuracy": 0.5})[0]
    assert run.join() is None
    tracker.close()
    assert kept_at_record == [{"0"}, {"0", "1"}, {"0", "1", "2"}]  # each round kept before it was recorded
