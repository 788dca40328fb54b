"""The job process's state goes to its server parent only over its socket (fedsec.workflow.link): the parent hands
it the stored state and a resumed job continues from it; reports wait for the parent's acknowledgement."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fedsec import limits
from fedsec.errors import JobError, WireError
from fedsec.jobs import load_job_folder
from fedsec.state.records import Participation, Refusal, RoundKind, RoundRecord
from fedsec.transport.local import serve_unix, unix_channel
from fedsec.wire import arrays, fedsec_pb2, fedsec_pb2_grpc, job_state
from fedsec.workflow.fedavg import FedAvg
from fedsec.workflow.link import JobState, JobStateLink
from fedsec.workflow.service import WorkflowService
from tests.unit.workflow.test_fedavg import JOB_ID, SITES, Job, assert_model, submit, task, update


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test models are tiny: let them travel in 64-byte chunks (as in test_fedavg)."""
    monkeypatch.setattr(limits, "MIN_CHUNK_BYTES", 64)


ROUND_0 = RoundRecord(0, RoundKind.TRAIN, frozenset(SITES), frozenset(SITES), metrics={"loss": 1.0})


def test_a_round_waits_for_the_parent_and_its_report_is_sent_again_until_acknowledged() -> None:
    link = JobStateLink()
    link.start(JobState())
    done = threading.Event()

    def driver() -> None:
        link.round_done(ROUND_0, completed_rounds=1)
        done.set()

    thread = threading.Thread(target=driver)
    thread.start()
    (first,) = link.pull(0, 10)
    assert first.seq == 1 and first.completed_rounds == 1 and first.round.accepted == SITES
    assert [r.seq for r in link.pull(0, 0)] == [1]  # not acknowledged: sent again
    assert not done.is_set()  # the driver does not go on before the parent recorded the round
    assert link.pull(1, 0) == []
    thread.join(10)
    assert done.is_set() and link.completed_rounds == 1


def test_a_round_the_parent_does_not_record_in_time_fails_the_job() -> None:
    link = JobStateLink(ack_seconds=0.2)
    link.start(JobState())
    with pytest.raises(JobError, match="the server did not record round 0 within 0.2 s"):
        link.round_done(ROUND_0, completed_rounds=1)


def test_without_the_parents_state_the_job_does_not_start() -> None:
    with pytest.raises(JobError, match="did not hand over the job's state within 0.1 s"):
        JobStateLink().wait_started(0.1)
    link = JobStateLink.in_process()
    with pytest.raises(JobError, match="handed over already"):
        link.start(JobState())


def test_refusals_kept_are_bounded_per_round_and_reported_with_the_rounds_reasons() -> None:
    link = JobStateLink.in_process()
    kept = [link.refused(Refusal(0, f"site-{n}", f"bad {n}")) for n in range(limits.MAX_REFUSALS_PER_ROUND + 2)]
    assert kept == [True] * limits.MAX_REFUSALS_PER_ROUND + [False, False]
    link.round_done(RoundRecord(0, RoundKind.TRAIN, frozenset({"site-0"}), frozenset(), {"site-0": ""}), 1)
    (recorded,) = link.state().rounds
    assert recorded.refused == {"site-0": "bad 0"}


def test_the_outcome_waits_for_the_parent_and_carries_the_model_kept() -> None:
    link = JobStateLink()
    link.start(JobState())
    link.keep({"model": "global_model.fsa", "round": 2, "completed_rounds": 3})
    assert not link.end(False, "aborted", timeout=0.1)  # nobody acknowledged it
    (report,) = link.pull(0, 0)
    assert report.outcome.reason == "aborted" and report.outcome.kept.round == 2
    assert link.pull(report.seq, 30) == []  # answered at once: nothing comes after the outcome


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Callable[[FedAvg], fedsec_pb2_grpc.WorkflowStub]]:
    """Serve a FedAvg's Workflow service on a Unix socket; the parent's stub to it."""
    stops: list[Callable[[], object]] = []

    def serve(fedavg: FedAvg) -> fedsec_pb2_grpc.WorkflowStub:
        sock = tmp_path / f"wf{len(stops) // 2}.sock"
        service = WorkflowService(fedavg, fedavg.cfg.num_rounds)
        server = serve_unix(sock, lambda s: fedsec_pb2_grpc.add_WorkflowServicer_to_server(service, s), 8)
        channel = unix_channel(sock)
        stops.append(channel.close)
        stops.append(lambda: server.stop(0))
        return fedsec_pb2_grpc.WorkflowStub(channel)

    yield serve
    for stop in stops:
        stop()


def test_a_resumed_job_continues_from_the_state_the_parent_hands_it_over_the_socket(
    tmp_path: Path, served: Callable[[FedAvg], fedsec_pb2_grpc.WorkflowStub]
) -> None:
    job = Job(tmp_path / "job", num_rounds=2, min_clients=1, evaluate_final=False)
    first = job.fedavg()  # round 0 runs in an earlier process; its checkpoint stays on disk
    first.update_sites(SITES)
    run = job.start(first)
    for site in SITES:
        task(first, site, 0)
        assert submit(first, site, 0, update(2)) == (True, "")
    task(first, "site-1", 1)
    first.update_sites([])
    assert isinstance(run.join(), JobError)

    meta, app = load_job_folder(job.folder)
    second = FedAvg(JOB_ID, job.folder, job.workspace, meta, app, link=JobStateLink())  # a link to a parent
    job.fedavgs.append(second)
    stub = served(second)
    stored = Participation(frozenset([*SITES, "site-3"]), {"site-3": 1}, {"site-3": "gone"})
    start = fedsec_pb2.JobStart(
        completed_rounds=1,
        counted=sorted(first.link.state().counted),
        participation=job_state.participation_to_wire(stored),
    )
    run = job.start(second)
    stub.StartState(start, timeout=10)
    stub.UpdateSites(fedsec_pb2.SiteList(sites=[*SITES, "site-3"]), timeout=10)
    reports: list[fedsec_pb2.StateReport] = []

    def parent() -> None:  # pulls and acknowledges, as the server parent does
        acked = 0
        while not any(r.WhichOneof("what") == "round" and r.round.number == 1 for r in reports):
            got = stub.PullState(fedsec_pb2.StatePull(acked=acked, wait_seconds=5), timeout=30).reports
            reports.extend(r for r in got if r.seq > acked)
            acked = max([acked, *(r.seq for r in got)])
        stub.PullState(fedsec_pb2.StatePull(acked=acked, wait_seconds=0), timeout=30)

    puller = threading.Thread(target=parent, daemon=True)
    puller.start()
    for site in SITES:  # round 1, from the model after round 0
        assert_model(arrays.read_file(task(second, site, 1)), 2, 0)
    assert second.get_task("site-3", 0.1).status == fedsec_pb2.TASK_STATUS_WAIT  # it left the job: never asked
    for site in SITES:
        assert submit(second, site, 1, update(1)) == (True, "")
    assert run.join() is None
    puller.join(30)
    (report,) = reports
    assert report.completed_rounds == 2 and report.round.number == 1 and sorted(report.round.sampled) == SITES
    assert second.link.completed_rounds == 2
    assert [r["round"] for r in second.link.progress()["rounds"]] == [1]  # round 0 is the parent's record
    assert second.sites_taking_part() == set(SITES)
    assert second.link.progress()["sites_left"] == [{"site": "site-3", "reason": "gone"}]
    assert {p.name for p in job.workspace.iterdir()} == {"checkpoints", "incoming", "result"}  # no state file


def test_the_state_handed_over_fits_one_message_at_the_limits_and_more_is_refused() -> None:
    sites = [f"site-{n:04d}".ljust(limits.MAX_NAME_LENGTH, "x") for n in range(limits.MAX_PARTICIPANTS)]
    everyone_left = Participation(
        frozenset(sites), dict.fromkeys(sites, 99), {s: "e" * limits.MAX_ERROR_TEXT + s for s in sites}
    )
    refusals = [Refusal(n, sites[n], "r" * limits.MAX_REFUSAL_TEXT) for n in range(limits.MAX_REFUSALS_KEPT)]
    start = fedsec_pb2.JobStart(
        completed_rounds=limits.MAX_ROUNDS,
        counted=sites,
        refusals=[job_state.refusal_to_wire(r) for r in refusals],
        participation=job_state.participation_to_wire(everyone_left),
    )
    assert start.ByteSize() < limits.MAX_MESSAGE_BYTES
    state = JobState.from_wire(start)
    assert state.participation.left[sites[0]].endswith(sites[0])  # the end of the reason is kept
    assert len(state.participation.left[sites[0]]) == limits.MAX_LEFT_REASON_TEXT
    with pytest.raises(WireError, match="more sites or refusals than the limits allow"):
        JobState.from_wire(fedsec_pb2.JobStart(counted=[*sites, "one-more"]))
