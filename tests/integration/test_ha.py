"""A highly available server: two replicas on one PostgreSQL and one store folder, under the server lease.

The active one is killed mid-round: the standby takes the lease, resumes the job, the sites move to it
from their kits' endpoint lists, and the job finishes. A standby answers with the standby status; an
active replica that loses the lease steps down."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psycopg
import pytest
from mlflow.tracking import MlflowClient

from fedsec.api import Session
from fedsec.jobs import FedAvgRecipe
from fedsec.kit import ServerConfig, load_kit
from fedsec.tracking.receivers import embedded_mlflow_uri
from fedsec.transport.failover import is_standby
from fedsec.transport.tls import channel
from fedsec.wire import arrays, fedsec_pb2, fedsec_pb2_grpc
from tests import pgserver
from tests.integration.harness import Federation, pid_alive, pids_running, wait_until
from tests.integration.test_runtime import INITIAL, SCRIPT, linear_job

LEASE_TTL = 3.0
HA_STORE = {"postgres": {"dsn_file": "local/postgres.dsn", "lease_ttl": LEASE_TTL}}
SITES = ["site-1", "site-2", "site-3"]


def start_replicas(federation: Federation, dsn: str, sites: list[str]) -> tuple[str, str]:
    """server1-a active, server1-b standby, the sites registered with server1-a; the two names."""
    first, second = federation.servers
    federation.set_postgres_dsn(dsn)
    federation.start(first)
    federation.wait_log(first, "active: holds the server lease (fencing token 1)", 30)
    federation.start(second)
    federation.wait_log(second, f"standby: the active replica is {first}", 30)
    for site in sites:
        federation.start(site)
    federation.wait_registered(sites, server=first)
    return first, second


@pytest.mark.federation(server_store=HA_STORE, replicas=2)
@pytest.mark.parametrize("moment", ["training", "aggregation", "download"])
def test_the_standby_takes_over_a_killed_active_replica_and_finishes_its_job(
    federation: Federation, tmp_path: Path, pg: pgserver.PgServer, moment: str
) -> None:
    """moment: the active replica is killed while round 2's sites train; once it folded round 2's first
    update into the round's sum (the fold is streaming: the other uploads are arriving or being folded);
    or as round 2 opens, while the sites download its model (16 MB of ballast makes that take a while)."""
    dsn = pg.new_database()
    first, second = start_replicas(federation, dsn, SITES)
    with Session(federation.admin_kit) as s:
        status = s.check_status("server")
        assert status["active_replica"] == status["replica"] == first
        assert status["fencing_token"] == 1 and status["lease_held_for"] >= 0
        if moment == "download":
            initial = {**INITIAL, "ballast": np.zeros(4 << 20, np.float32)}
            recipe = FedAvgRecipe("linear", initial, SCRIPT, 5, 3, script_args=["--sleep", "1"], start_timeout=120)
            job_id = s.submit_job(recipe.export(tmp_path / "job"))
        else:
            job_id = s.submit_job(linear_job(tmp_path, "--sleep", "1", rounds=5, min_clients=3))
        workflow_log = federation.kit(first) / "store/jobs" / job_id / "workflow.log"
        wait_until(lambda: s.get_job_meta(job_id).current_round >= (1 if moment == "download" else 2), 90, "rounds")
    opened = {"aggregation": "round=2 accepted site=", "download": "round=2 train sampled="}.get(moment)
    if opened is not None:
        wait_until(lambda: opened in workflow_log.read_text(), 90, opened)
    workflows = pids_running("fedsec.workflow", str(federation.root))
    assert workflows
    mark = len(federation.log(second))
    federation.kill(first)  # kill -9
    wait_until(lambda: not any(pid_alive(p) for p in workflows), 10, "the workflow process to die with its server")
    federation.wait_log(second, "active: holds the server lease (fencing token 2)", 60, since=mark)
    federation.wait_registered(SITES, timeout=60, since=mark, server=second)  # from their kits' endpoints
    with Session(federation.admin_kit) as s:  # the admin kit's endpoints too
        info = s.wait_for_job(job_id, timeout=180)
        assert info.status == "finished:completed", info.reason
        assert [r["round"] for r in info.progress["rounds"]] == [0, 1, 2, 3, 4]  # none lost, none twice
        assert all(r["sites"] == SITES for r in info.progress["rounds"])
        assert info.progress["final"]["metrics"]["mse"] < 0.01
        status = s.check_status("server")
        assert status["active_replica"] == status["replica"] == second and status["fencing_token"] == 2
        result = s.download_job_result(job_id)
    final = arrays.read_file(result / "global_model.fsa")
    assert np.allclose(final["w"].ravel(), np.arange(1, 9), atol=0.05)
    job_dir = federation.kit(second) / "store/jobs" / job_id
    assert "resuming after round" in workflow_log.read_text()  # from the state the new replica handed it
    exchanged = ["participation.json", "sites", "workspace/state.json", "workspace/progress.json"]
    assert not [name for name in [*exchanged, "workspace/result.json"] if (job_dir / name).exists()]
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT status, current_round, resume_count FROM jobs WHERE job_id = %s", (job_id,))
        assert row.fetchone() == ("finished:completed", 5, 1)
        rounds = conn.execute("SELECT number, kind, accepted FROM rounds WHERE job_id = %s ORDER BY number", (job_id,))
        assert [(n, k, json.loads(a)) for n, k, a in rounds.fetchall()] == [
            *((n, "train", SITES) for n in range(5)),
            (5, "evaluate", SITES),
        ]
        lease = conn.execute("SELECT holder, fencing_token FROM lease").fetchone()
        assert lease == (second, 2)
    # tracking exactly once across the failover: the runs live in the replicas' shared store, every round once;
    # what the job process could not write before it ended (MLflow still opening), the late writer writes
    # opened once the store is ready (the standby set the shared store up as it started), so never mid-setup
    federation.wait_log(second, "tracking: the embedded MLflow store is ready", 120)
    client = MlflowClient(tracking_uri=embedded_mlflow_uri(federation.kit(second) / "store" / "tracking"))

    def runs() -> list[Any]:
        experiment = client.get_experiment_by_name("linear")
        found = (
            []
            if experiment is None
            else client.search_runs([experiment.experiment_id], filter_string=f"tags.`fedsec.job_id` = '{job_id}'")
        )
        return found if len(found) == 1 + len(SITES) else []

    def steps(run_id: str) -> list[int]:
        return sorted(m.step for m in client.get_metric_history(run_id, "mse"))

    seen: list[int] = []

    def written() -> bool:
        parents = [r for r in runs() if "fedsec.site" not in r.data.tags]
        seen[:] = steps(parents[0].info.run_id) if parents else []
        return len(seen) >= 6

    try:
        wait_until(written, 180, "the job's runs with rounds 0-4 and the final model")
    except AssertionError as exc:
        said = [line for line in workflow_log.read_text().splitlines() if "tracking" in line or " done " in line]
        raise AssertionError(
            f"{exc}; the job's run has mse at steps {seen}; its log says:\n" + "\n".join(said)
        ) from exc
    parents = [r for r in runs() if "fedsec.site" not in r.data.tags]
    children = {r.data.tags["fedsec.site"]: r for r in runs() if "fedsec.site" in r.data.tags}
    assert len(parents) == 1 and sorted(children) == SITES
    for run in [*parents, *children.values()]:
        assert steps(run.info.run_id) == list(range(6)), run.data.tags  # each round once, and the final model
    wait_until(lambda: client.get_run(parents[0].info.run_id).info.status == "FINISHED", 60, "the run to end")
    # no process is left behind: the killed replica's workflow is gone, the job's scripts ended on every site
    wait_until(lambda: not any(federation.job_pids(site) for site in SITES), 15, "job processes to end")
    assert not [p for p in pids_running("fedsec.workflow", str(federation.root)) if p in workflows]


@pytest.mark.federation(server_store=HA_STORE, replicas=2, n_clients=1)
def test_a_standby_answers_every_call_with_the_standby_status(federation: Federation, pg: pgserver.PgServer) -> None:
    first, second = start_replicas(federation, pg.new_database(), [])
    admin = load_kit(federation.admin_kit)
    standby = load_kit(federation.kit(second)).config
    assert isinstance(standby, ServerConfig)
    with channel(admin, "127.0.0.1", standby.admin_port, "server1") as to_standby:
        stub = fedsec_pb2_grpc.AdminStub(to_standby)
        for call in (lambda: stub.GetChallenge(fedsec_pb2.Empty(), timeout=10),
                     lambda: stub.CheckStatus(fedsec_pb2.TargetRequest(target="server"), timeout=10),
                     lambda: list(stub.DownloadJob(fedsec_pb2.JobRef(job_id="x"), timeout=10))):  # fmt: skip
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
            assert is_standby(caught.value), caught.value.trailing_metadata()
            assert f"server replica {second} is a standby, not the active replica" in (caught.value.details() or "")
    # a clean stop of the active replica releases the lease: the standby takes it without waiting for it to lapse
    mark = len(federation.log(second))
    federation.procs[first].terminate()
    federation.procs[first].wait(30)
    assert "released the server lease" in federation.log(first)
    federation.wait_log(second, "active: holds the server lease (fencing token 2)", 30, since=mark)


@pytest.mark.federation(server_store=HA_STORE, replicas=2)
def test_an_active_replica_that_loses_the_lease_steps_down_and_its_jobs_move_on(
    federation: Federation, tmp_path: Path, pg: pgserver.PgServer
) -> None:
    """Another holder takes the lease under a live active replica (as after a network partition): the replica
    stops serving and stops its job's workflow, stands by, and the job resumes when the lease comes back."""
    dsn = pg.new_database()
    first, _ = federation.servers
    federation.set_postgres_dsn(dsn)
    federation.start(first)
    federation.wait_log(first, "active: holds the server lease (fencing token 1)", 30)
    for site in SITES:
        federation.start(site)
    federation.wait_registered(SITES, server=first)
    with Session(federation.admin_kit) as s:
        job_id = s.submit_job(linear_job(tmp_path, "--sleep", "1", rounds=4, min_clients=3))
        wait_until(lambda: s.get_job_meta(job_id).current_round >= 1, 90, "a round")
    workflows = pids_running("fedsec.workflow", str(federation.root))
    assert workflows
    mark = len(federation.log(first))
    with psycopg.connect(dsn, autocommit=True) as conn:  # an intruder holds the lease for a long while
        conn.execute(
            "UPDATE lease SET holder = 'intruder', fencing_token = fencing_token + 1, "
            "deadline = extract(epoch from now()) + 3600, acquired = extract(epoch from now())"
        )
        federation.wait_log(first, "lost the server lease, stepping down", 30, since=mark)
        federation.wait_log(first, "standby: the active replica is intruder", 30, since=mark)
        wait_until(lambda: not any(pid_alive(p) for p in workflows), 30, "the workflow to stop with the step-down")
        assert federation.procs[first].poll() is None  # it stands by: alive, not serving
        row = conn.execute("SELECT status, current_round FROM jobs WHERE job_id = %s", (job_id,)).fetchone()
        assert row is not None and row[0] == "running"  # a step-down never ends a job
        conn.execute("UPDATE lease SET holder = '', deadline = 0")  # the intruder goes
        federation.wait_log(first, "active: holds the server lease (fencing token 3)", 30, since=mark)
    federation.wait_registered(SITES, timeout=60, since=mark, server=first)
    with Session(federation.admin_kit) as s:
        info = s.wait_for_job(job_id, timeout=180)
    assert info.status == "finished:completed", info.reason
    assert [r["round"] for r in info.progress["rounds"]] == [0, 1, 2, 3]
