"""A site's failure is that site's: who may report, restarts, leaving; and the workflow's reasons without paths."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from fedsec.server.job_sites import JobSites
from fedsec.server.jobs import exit_text, last_lines, public_text
from fedsec.server.store import JobStore


def _job(tmp_path: Path) -> tuple[JobStore, str]:
    store = JobStore(tmp_path / "store")
    job_id = store.add(
        name="j", submitter="a@b.org", submitter_org="b", submitter_role="lead", meta_json="{}", num_rounds=1
    ).job_id
    return store, job_id


def test_a_site_restarts_up_to_max_restarts_then_leaves(tmp_path: Path) -> None:
    store, job_id = _job(tmp_path)
    job_dir = store.job_dir(job_id)
    sites = JobSites.load(store.state, job_id, job_dir)
    sites.fetched |= {"site-1", "site-2"}
    assert not sites.fail("site-1", "boom 1\n", was_running=True, max_restarts=1)
    assert sites.fail("site-1", "boom 2\n", was_running=True, max_restarts=1)
    # a site that never had the script running (it refused or could not start it) does not retry: it leaves
    assert sites.fail("site-2", "site-2 refused the job: policy", was_running=False, max_restarts=5)
    sites.save()
    again = JobSites.load(store.state, job_id, job_dir)
    assert again.fetched == {"site-1", "site-2"}
    assert again.failures == {"site-1": 2, "site-2": 1}
    assert again.left == {"site-1": "boom 2", "site-2": "site-2 refused the job: policy"}
    # the record is the state's: no file is written for the workflow process (it hears it over its socket)
    assert not (job_dir / "participation.json").exists()
    assert store.state.get_participation(job_id).left == again.left
    assert JobSites.load(store.state, job_id, job_dir).failures == again.failures
    store.close()


def test_a_record_kept_by_an_older_fedsec_is_read_from_its_file(tmp_path: Path) -> None:
    store, job_id = _job(tmp_path)
    job_dir = store.job_dir(job_id)
    doc = {"fetched": ["site-1"], "failures": {"site-1": 1}, "left": {"site-1": "boom"}}
    (job_dir / "participation.json").write_text(json.dumps(doc))
    sites = JobSites.load(store.state, job_id, job_dir)
    assert (sites.fetched, sites.failures, sites.left) == ({"site-1"}, {"site-1": 1}, {"site-1": "boom"})
    sites.fetched.add("site-2")
    sites.save()
    assert store.state.get_participation(job_id).fetched == frozenset({"site-1", "site-2"})
    store.close()


def test_reasons_for_an_admin_carry_no_server_path() -> None:
    text = (
        'File "/srv/fedsec/ws/server1/store/jobs/abc/job/app/x.py", line 3\n'
        "MLflow: mlflow ui --backend-store-uri sqlite:////srv/fedsec/ws/server1/tracking/mlflow.db\n"
        "cannot start the workflow: job folder /srv/fedsec/store/jobs/abc/job: meta.yml: min_clients: bad"
    )
    public = public_text(text)
    assert "/srv" not in public and "server1" not in public
    assert '".../x.py", line 3' in public and ".../mlflow.db" in public
    assert "job folder .../job: meta.yml: min_clients: bad" in public


def test_a_dead_workflow_is_described_by_its_exit() -> None:
    assert exit_text(-signal.SIGKILL) == "the workflow process was killed by SIGKILL before it wrote its result"
    assert exit_text(3) == "the workflow process exited with status 3 before it wrote its result"
    assert last_lines("cut line\n\nsecond\nthird\n", 2) == "second\nthird"
