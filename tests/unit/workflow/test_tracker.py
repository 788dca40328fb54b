"""fedsec.workflow.tracking.Tracker: a backend that fails is retried in the background and warned about, never fatal."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

from fedsec.errors import JobError
from fedsec.jobs import FedAvgRecipe, FedOptRecipe, FedProxRecipe, load_job_folder
from fedsec.tracking.events import Event, EventKind
from fedsec.tracking.receivers import Receiver, RunEnd, SiteMetrics
from fedsec.workflow.tracking import Tracker, job_params, script_arg_params
from tests.integration.harness import wait_until


class FakeReceiver:
    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.metrics: dict[int, Mapping[str, float]] = {}
        self.site_metrics: dict[int, SiteMetrics] = {}
        self.params: dict[str, str] = {}
        self.models: list[Path | None] = []
        self.ended: RunEnd | None = None
        self.fail = False

    def site_events(self, site: str, events: Sequence[Event]) -> None:
        if self.fail:
            raise JobError("mlflow: down")
        self.events += [(site, e.seq) for e in events]

    def global_metrics(
        self,
        current_round: int,
        metrics: Mapping[str, float],
        sites: SiteMetrics | None = None,
        *,
        stamp: float | None = None,
    ) -> None:
        if self.fail:
            raise JobError("mlflow: down")
        self.metrics[current_round] = metrics
        self.site_metrics[current_round] = dict(sites or {})

    def job_params(self, params: Mapping[str, str]) -> None:
        if self.fail:
            raise JobError("mlflow: down")
        self.params.update(params)

    def final_model(self, path: Path | None) -> None:
        self.models.append(path)

    def close(self, end: RunEnd = RunEnd.FINISHED) -> None:
        self.ended = end


def wait(cond: object, what: str) -> None:
    assert callable(cond)
    wait_until(cond, 60, what, interval=0.01)


def event(seq: int) -> Event:
    return Event("ab" * 16, seq, EventKind.SCALAR, "loss", seq, 1.7e9, 0.5)


def test_backend_down_at_start_is_retried_and_what_waited_is_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="fedsec.workflow.tracking")
    receiver = FakeReceiver()
    tries: list[int] = []

    def opener() -> Sequence[Receiver]:
        tries.append(1)
        if len(tries) < 3:
            raise JobError("mlflow at http://h: open: connection refused")
        return [receiver]

    tracker = Tracker(tmp_path / "tracking.db", opener, "team", retry_seconds=(0.01,))
    tracker.global_metrics(0, {"acc": 0.5})  # the round's result stands while the backend is down
    wait(lambda: tracker.ready, "the receivers to open")
    assert len(tries) == 3
    assert tracker.site_events("site-1", [event(0), event(1)]) == (2, 0)
    tracker.final_model(None)
    tracker.close(RunEnd.FAILED)
    assert receiver.metrics == {0: {"acc": 0.5}}
    assert receiver.events == [("site-1", 0), ("site-1", 1)]
    assert receiver.ended is RunEnd.FAILED
    warnings = [r.getMessage() for r in caplog.records]
    assert any("backend team: cannot open it (try 1" in w and "the job goes on" in w for w in warnings)
    assert any("open after 3 tries" in w for w in warnings)


def test_events_refused_until_open_and_on_failure_then_taken_once(tmp_path: Path) -> None:
    receiver = FakeReceiver()
    opened: list[bool] = []

    def opener() -> Sequence[Receiver]:
        if not opened:
            opened.append(True)
            raise JobError("not yet")
        return [receiver]

    tracker = Tracker(tmp_path / "tracking.db", opener, "local", retry_seconds=(0.2,))
    with pytest.raises(JobError, match="not open yet; send the events again"):
        tracker.site_events("site-1", [event(0)])
    wait(lambda: tracker.ready, "the receivers to open")
    receiver.fail = True
    with pytest.raises(JobError, match="down"):
        tracker.site_events("site-1", [event(0)])
    receiver.fail = False
    assert tracker.site_events("site-1", [event(0)]) == (1, 0)  # not marked seen by the failed try
    assert tracker.site_events("site-1", [event(0)]) == (0, 1)
    tracker.close()
    assert receiver.ended is RunEnd.FINISHED


def test_what_a_tracker_never_wrote_is_kept_and_written_once_by_the_next(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A job that ends before its backend opens loses nothing: the next tracker (the late writer) writes it."""

    def down() -> Sequence[Receiver]:
        raise JobError("down")

    (tmp_path / "result").mkdir()
    model = tmp_path / "result" / "final.fsa"
    first = Tracker(tmp_path / "tracking.db", down, "team", retry_seconds=(0.01,))
    first.job_params({"job_id": "j"})
    first.global_metrics(0, {"acc": 0.5}, {"site-1": {"acc": 0.4}})
    first.global_metrics(1, {"acc": 0.75})
    assert (tmp_path / "tracking_pending.json").exists()  # kept as it waits: a kill -9 now loses nothing
    first.final_model(model)
    first.close(RunEnd.FINISHED)  # never raises
    assert first.pending
    assert (tmp_path / "tracking_pending.json").stat().st_mode & 0o077 == 0
    assert any("kept in workspace/tracking_pending.json" in r.getMessage() for r in caplog.records)

    receiver = FakeReceiver()
    second = Tracker(tmp_path / "tracking.db", lambda: [receiver], "team")
    wait(lambda: second.ready, "the receivers to open")
    second.global_metrics(1, {"acc": 0.9})  # a round written again by a resumed job process: not twice
    second.close(RunEnd.FINISHED)
    assert receiver.params == {"job_id": "j"}
    assert receiver.metrics == {0: {"acc": 0.5}, 1: {"acc": 0.75}}
    assert receiver.site_metrics[0] == {"site-1": {"acc": 0.4}}
    assert receiver.models == [model]
    assert not second.pending and not (tmp_path / "tracking_pending.json").exists()

    third = Tracker(tmp_path / "tracking.db", lambda: [FakeReceiver()], "team")  # nothing is taken up again
    assert not third.pending
    third.close()


@pytest.mark.parametrize(
    "text",
    [
        b"{not json",
        b'{"metrics": {"0": {"metrics": {"acc": "NaN"}, "sites": {}}}, "params": {}, "has_model": false}',
        b'{"metrics": {}, "params": {}, "has_model": true, "model": "../../../etc/passwd"}',
        b"[]",
    ],
)
def test_an_unusable_pending_file_is_dropped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, text: bytes
) -> None:
    (tmp_path / "tracking_pending.json").write_bytes(text)
    receiver = FakeReceiver()
    tracker = Tracker(tmp_path / "tracking.db", lambda: [receiver], "team")
    wait(lambda: tracker.ready, "the receivers to open")
    tracker.close()
    assert receiver.metrics == {} and receiver.models == []
    assert any("tracking_pending.json is unusable" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "tracking_pending.json").exists()


def scalar(writer: str, seq: int, step: int, value: float, tag: str = "loss") -> Event:
    return Event(writer, seq, EventKind.SCALAR, tag, step, 1.7e9 + step, value)


def test_replayed_round_replaces_metric_points_in_mlflow(tmp_path: Path) -> None:
    """A server killed mid-round: the site's script re-logs the round's steps with a new writer; each step once."""
    from mlflow.tracking import MlflowClient

    from fedsec.tracking.backends import Backend
    from fedsec.tracking.receivers import embedded_mlflow_uri, open_receivers

    tracking, db = tmp_path / "tracking", tmp_path / "tracking.db"

    def opener() -> Sequence[Receiver]:
        return open_receivers("job-1", "replay", tracking, Backend("local"), tensorboard=False)

    first = Tracker(db, opener, "local", retry_seconds=(0.01,))
    wait(lambda: first.ready, "the receivers to open")
    before = "a" * 32  # the script before the server was killed: steps 0..3, and 3 logged twice by itself
    assert first.site_events("site-1", [scalar(before, i, i, 1.0 + i) for i in range(4)]) == (4, 0)
    assert first.site_events("site-1", [scalar(before, 4, 3, 9.0)]) == (1, 0)
    first.global_metrics(1, {"acc": 0.5})
    first.close(RunEnd.KILLED)

    again = Tracker(db, opener, "local", retry_seconds=(0.01,))  # the resumed job process
    wait(lambda: again.ready, "the receivers to open again")
    # the round replayed: a script the site restarted logs steps 2..5 (new writer), one that kept running logs 3 again
    after = "b" * 32
    replay = [scalar(after, i, step, 100.0 + step) for i, step in enumerate(range(2, 6))]
    replay.append(scalar(after, 4, 2, 5.0, tag="other"))
    replay.append(scalar(before, 5, 3, 7.0))
    assert again.site_events("site-1", replay) == (3, 3)
    assert again.site_events("site-1", replay) == (0, 6)  # a resent batch: nothing new
    assert again.site_events("site-1", [scalar(after, 6, 5, 55.0)]) == (1, 0)  # its own second point at step 5
    again.global_metrics(1, {"acc": 0.6})  # the same round written again: one value per round
    again.global_metrics(2, {"acc": 0.7})
    again.close(RunEnd.FINISHED)

    client = MlflowClient(tracking_uri=embedded_mlflow_uri(tracking))
    experiment = client.get_experiment_by_name("replay")
    assert experiment is not None
    runs = {r.data.tags.get("fedsec.site", "server"): r for r in client.search_runs([experiment.experiment_id])}
    points = sorted((m.step, m.value) for m in client.get_metric_history(runs["site-1"].info.run_id, "loss"))
    assert points == [(0, 1.0), (1, 2.0), (2, 3.0), (3, 4.0), (3, 9.0), (4, 104.0), (5, 55.0), (5, 105.0)]
    assert [(m.step, m.value) for m in client.get_metric_history(runs["site-1"].info.run_id, "other")] == [(2, 5.0)]
    server = sorted((m.step, m.value) for m in client.get_metric_history(runs["server"].info.run_id, "acc"))
    assert server == [(1, 0.5), (2, 0.7)]


def open_tracker_on(tmp_path: Path, receiver: FakeReceiver) -> Tracker:
    tracker = Tracker(tmp_path / "tracking.db", lambda: [receiver], "local", retry_seconds=(0.01,))
    wait(lambda: tracker.ready, "the receivers to open")
    return tracker


def test_final_metrics_are_the_last_step_and_final_names_for_the_job_and_each_site(tmp_path: Path) -> None:
    receiver = FakeReceiver()
    tracker = open_tracker_on(tmp_path, receiver)
    tracker.global_metrics(0, {"accuracy": 0.3}, {"site-1": {"accuracy": 0.2}, "site-2": {"accuracy": 0.4}})
    tracker.final_metrics(1, {"accuracy": 0.9}, {"site-1": {"accuracy": 0.85}, "site-2": {"accuracy": 0.95}})
    tracker.final_metrics(1, {"accuracy": 0.1})  # written before: not again
    tracker.close()
    assert receiver.metrics == {0: {"accuracy": 0.3}, 1: {"accuracy": 0.9, "final_accuracy": 0.9}}
    assert receiver.site_metrics[1] == {
        "site-1": {"accuracy": 0.85, "final_accuracy": 0.85},
        "site-2": {"accuracy": 0.95, "final_accuracy": 0.95},
    }


def test_a_site_metric_is_one_point_whoever_logs_it_first(tmp_path: Path) -> None:
    """The site's script logs accuracy at the round's step itself, and sends it with its result: one value."""
    receiver = FakeReceiver()
    tracker = open_tracker_on(tmp_path, receiver)
    assert tracker.site_events("site-1", [scalar("c" * 32, 0, 0, 0.25, tag="accuracy")]) == (1, 0)
    tracker.global_metrics(
        0, {"accuracy": 0.5}, {"site-1": {"accuracy": 0.2, "loss": 1.0}, "site-2": {"accuracy": 0.6}}
    )
    assert receiver.site_metrics[0] == {"site-1": {"loss": 1.0}, "site-2": {"accuracy": 0.6}}
    assert tracker.site_events("site-2", [scalar("d" * 32, 0, 0, 0.7, tag="accuracy")]) == (0, 1)
    tracker.close()


def test_round_metrics_that_failed_are_written_whole_later(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="fedsec.workflow.tracking")
    receiver = FakeReceiver()
    tracker = open_tracker_on(tmp_path, receiver)
    receiver.fail = True
    tracker.job_params({"strategy": "fedavg"})
    tracker.global_metrics(0, {"accuracy": 0.5}, {"site-1": {"accuracy": 0.4}})
    assert receiver.metrics == {} and receiver.params == {}
    assert any("job params not written yet" in r.getMessage() for r in caplog.records)
    receiver.fail = False
    tracker.final_model(None)  # the next write tries again what waits
    tracker.close()
    assert receiver.params == {"strategy": "fedavg"}
    assert receiver.metrics == {0: {"accuracy": 0.5}}
    assert receiver.site_metrics[0] == {"site-1": {"accuracy": 0.4}}  # the failed try did not use up its points


@pytest.mark.parametrize(
    ("args", "params"),
    [
        (["--epochs", "3", "--lr=0.05"], {"epochs": "3", "lr": "0.05"}),
        (["--fast", "--shift", "-1", "--n", "2", "stray"], {"fast": "true", "shift": "-1", "n": "2"}),
        (["--a", "--b"], {"a": "true", "b": "true"}),
        (["pos", "--", "--=x", "--e", "1", "--e", "2"], {"e": "2"}),
        ([], {}),
    ],
)
def test_script_arg_params(args: list[str], params: dict[str, str]) -> None:
    assert script_arg_params(args) == {f"script.args.{k}": v for k, v in params.items()}


def test_job_params_name_the_settings_of_meta_and_config(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text("")
    args = ["--epochs", "2", "--lr", "0.1"]
    plain = FedAvgRecipe("digits", {"w": np.zeros(2, np.float32)}, script, 3, 2, script_args=args, sites=["s-1", "s-2"])
    meta, app = load_job_folder(plain.export(tmp_path / "plain"))
    params = job_params("job-1", meta, app, "admin@acme.org")
    assert {k: params[k] for k in ("job_id", "job_name", "submitter", "strategy", "min_clients", "sites")} == {
        "job_id": "job-1",
        "job_name": "digits",
        "submitter": "admin@acme.org",
        "strategy": "fedavg",
        "min_clients": "2",
        "sites": "s-1,s-2",
    }
    assert params["num_sites"] == "2"
    assert params["workflow.num_rounds"] == "3"
    assert params["workflow.evaluate_final"] == "true"
    assert params["he.enabled"] == "false"
    assert not any(k.startswith("he.") and k != "he.enabled" for k in params)  # HE off: its settings mean nothing
    assert params["script.args"] == "--epochs 2 --lr 0.1"
    assert params["script.args.epochs"] == "2"
    assert params["tracking.backend"] == "local"
    assert all(isinstance(v, str) and len(v) <= 6000 for v in params.values())

    he = FedAvgRecipe("digits", {"w": np.zeros(2, np.float32)}, script, 1, 1, he=True, he_clip=2.0)
    meta, app = load_job_folder(he.export(tmp_path / "he"))
    params = job_params("job-2", meta, app, "")
    assert (params["he.enabled"], params["he.clip"], params["sites"]) == ("true", "2.0", "all")
    assert "num_sites" not in params  # open to every site: logged when the job ends


def test_job_params_name_the_real_strategy_and_its_effective_settings(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text("")
    model = {"w": np.zeros(2, np.float32)}
    opt = FedOptRecipe("opt", model, script, 3, 2, optimizer="adam", server_lr=0.5)
    params = job_params("job-1", *load_job_folder(opt.export(tmp_path / "opt")), "")
    assert {k: v for k, v in params.items() if k.startswith("strategy")} == {
        "strategy": "fedopt",
        "strategy.name": "fedopt",
        "strategy.optimizer": "adam",
        "strategy.server_lr": "0.5",
        "strategy.beta1": "0.9",
        "strategy.beta2": "0.99",
        "strategy.tau": "0.001",
    }
    prox = FedProxRecipe("prox", model, script, 3, 2, mu=0.01)
    params = job_params("job-2", *load_job_folder(prox.export(tmp_path / "prox")), "")
    assert (params["strategy"], params["strategy.mu"]) == ("fedprox", "0.01")
