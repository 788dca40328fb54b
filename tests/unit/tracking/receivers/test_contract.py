"""One contract for both receivers (MLflow, TensorBoard), then what is particular to each.

The contract: what goes in through the Receiver protocol (a site's scalars,
texts, params and tags; global metrics per round; the final model) comes back
out of the backend, read with the backend's own reader (MlflowClient on the
embedded store; the TFRecord event files decoded with tensorboardX's protos),
and a second receiver for the same job id adds to the same runs.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from mlflow.utils import validation
from tensorboardX.proto.event_pb2 import Event as RecordEvent  # type: ignore[import-untyped]
from tensorboardX.record_writer import masked_crc32c  # type: ignore[import-untyped]

from fedsec.errors import JobError
from fedsec.tracking.backends import Backend as TrackingBackend
from fedsec.tracking.backends import public_uri
from fedsec.tracking.events import Event, EventKind, check_event
from fedsec.tracking.receivers import Receiver, RunEnd, embedded_mlflow_uri, open_receivers
from fedsec.tracking.receivers.mlflow_receiver import MlflowReceiver, mlflow_key
from fedsec.tracking.receivers.tensorboard import TensorBoardReceiver

JOB_ID = "5f3c2a1b9d8e4f70a1b2c3d4e5f60718"
JOB_NAME = "cifar-fedavg"
LOCAL_BACKEND = TrackingBackend("local")
SITES = ("site-1", "site-2")
T0 = 1_700_000_000.0
Scalars = dict[str, list[tuple[int, float]]]
# MLflow's own checks of a key (untyped functions, given a type here).
key_chars_ok: Callable[[str], object] = validation.validate_param_and_metric_name
key_path_bad: Callable[[str], bool] = validation.path_not_unique


# -- events as a site's SummaryWriter makes them --


class Script:
    """One SummaryWriter of a training script: a writer id and a seq counting up."""

    count = 0

    def __init__(self) -> None:
        Script.count += 1
        self.writer = f"{Script.count:032x}"
        self.seq = 0

    def _event(self, kind: EventKind, tag: str, step: int, value: float = 0.0, text: str = "") -> Event:
        e = Event(self.writer, self.seq, kind, tag, step, T0 + step, value, text)
        self.seq += 1
        return check_event(e, "test")

    def scalar(self, tag: str, step: int, value: float) -> Event:
        return self._event(EventKind.SCALAR, tag, step, value=value)

    def text(self, tag: str, step: int, text: str) -> Event:
        return self._event(EventKind.TEXT, tag, step, text=text)

    def params(self, **items: str) -> Event:
        return self._event(EventKind.PARAMS, "", 0, text=json.dumps(items))

    def tags(self, **items: str) -> Event:
        return self._event(EventKind.TAGS, "", 0, text=json.dumps(items))


def loss(site_index: int, step: int) -> float:
    return 1.0 / (step + 1) + site_index


def site_session(receiver: Receiver, site: str, index: int, steps: range) -> None:
    """A site's run: params, tags, two scalars per step and two texts, in two batches."""
    s = Script()
    events = [s.params(lr="0.01", optimizer="sgd", index=str(index)), s.tags(framework="numpy", shard=f"s{index}")]
    events += [s.scalar("train/loss", step, loss(index, step)) for step in steps]
    events += [s.scalar("train/acc", step, 0.1 * step + index) for step in steps]
    events += [s.text("notes", step, f"{site} at **{step}**") for step in steps if step % 2 == 1]
    receiver.site_events(site, events[:5])
    receiver.site_events(site, events[5:])


def first_session(receiver: Receiver, model: Path) -> None:
    for index, site in enumerate(SITES):
        site_session(receiver, site, index, range(5))
    for rnd in (1, 2, 3):
        receiver.global_metrics(rnd, {"accuracy": 0.5 + 0.1 * rnd, "loss": 1.0 / rnd})
    receiver.final_model(model)
    receiver.final_model(None)
    receiver.close()


# -- what a backend holds, in one shape for both --


@dataclass
class Seen:
    """Per run (a site, or "server" for the job's own run)."""

    scalars: dict[str, Scalars] = field(default_factory=dict)
    texts: dict[str, dict[str, dict[int, str]]] = field(default_factory=dict)
    params: dict[str, dict[str, str]] = field(default_factory=dict)
    tags: dict[str, dict[str, str]] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)  # file names of the final models kept


def read_mlflow(workspace: Path, scratch: Path) -> Seen:
    """The embedded store of workspace; asserts one parent run and one child run per site."""
    client = MlflowClient(tracking_uri=embedded_mlflow_uri(workspace))
    experiment = client.get_experiment_by_name(JOB_NAME)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if "fedsec.site" not in r.data.tags]
    assert len(parents) == 1, f"{len(parents)} parent runs"
    parent = parents[0]
    assert parent.info.run_name == f"{JOB_NAME}-{JOB_ID[:8]}"
    assert parent.data.tags["fedsec.job_id"] == JOB_ID
    assert parent.data.tags["fedsec.job_name"] == JOB_NAME
    by_run = {"server": parent}
    for run in runs:
        site = run.data.tags.get("fedsec.site")
        if site is not None:
            assert site not in by_run, f"two runs for {site}"
            assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
            assert run.data.tags["fedsec.job_id"] == JOB_ID
            assert run.info.run_name == site
            by_run[site] = run
    seen = Seen()
    for name, run in by_run.items():
        run_id = run.info.run_id
        seen.scalars[name] = {
            key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)) for key in run.data.metrics
        }
        seen.params[name] = dict(run.data.params)
        seen.tags[name] = {k: v for k, v in run.data.tags.items() if not k.startswith(("mlflow.", "fedsec."))}
        texts: dict[str, dict[int, str]] = {}
        for path in artifact_files(client, run_id, "text"):
            tag, file_name = path.removeprefix("text/").rsplit("/", 1)
            local = client.download_artifacts(run_id, path, str(scratch))
            texts.setdefault(tag, {})[int(file_name.removeprefix("step_").removesuffix(".txt"))] = Path(
                local
            ).read_text()
        seen.texts[name] = texts
    seen.models = [Path(f.path).name for f in client.list_artifacts(parent.info.run_id, "model")]
    return seen


def artifact_files(client: MlflowClient, run_id: str, folder: str) -> Iterator[str]:
    for info in client.list_artifacts(run_id, folder):
        if info.is_dir:
            yield from artifact_files(client, run_id, info.path)
        else:
            yield info.path


def tfrecords(path: Path) -> Iterator[RecordEvent]:
    """The events of a TFRecord file: uint64 length, uint32 masked CRC of it, data, uint32 masked CRC of data."""
    data = path.read_bytes()
    pos = 0
    while pos < len(data):
        header = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
        assert header_crc == masked_crc32c(header), f"{path}: bad length CRC at {pos}"
        body = data[pos + 12 : pos + 12 + length]
        (body_crc,) = struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])
        assert body_crc == masked_crc32c(body), f"{path}: bad data CRC at {pos}"
        yield RecordEvent.FromString(body)
        pos += 16 + length


def read_tensorboard(workspace: Path, scratch: Path) -> Seen:
    seen = Seen()
    for folder in sorted((workspace / "tensorboard").iterdir()):
        name = folder.name
        scalars: Scalars = {}
        texts: dict[str, dict[int, str]] = {}
        params: dict[str, str] = {}
        tags: dict[str, str] = {}
        for path in sorted(folder.glob("events.out.tfevents.*")):
            records = list(tfrecords(path))
            assert records[0].file_version == "brain.Event:2"
            for record in records[1:]:
                for value in record.summary.value:
                    if value.metadata.plugin_data.plugin_name == "text":
                        text = value.tensor.string_val[0].decode()
                        tag = value.tag.removesuffix("/text_summary")
                        if tag == "params":
                            params.update(json.loads(text))
                        elif tag == "tags":
                            tags.update(json.loads(text))
                        elif tag == "final_model" and name == "server":
                            seen.models.append(text.split(" (")[0])
                        else:
                            texts.setdefault(tag, {})[record.step] = text
                    else:
                        scalars.setdefault(value.tag, []).append((record.step, value.simple_value))
        seen.scalars[name] = {k: sorted(v) for k, v in scalars.items()}
        seen.texts[name], seen.params[name], seen.tags[name] = texts, params, tags
    return seen


@dataclass
class Backend:
    name: str
    open: Callable[[Path], Receiver]
    read: Callable[[Path, Path], Seen]


def open_mlflow(workspace: Path) -> Receiver:
    receivers = open_receivers(JOB_ID, JOB_NAME, workspace, LOCAL_BACKEND, tensorboard=False)
    assert len(receivers) == 1
    assert isinstance(receivers[0], MlflowReceiver)
    return receivers[0]


def open_tensorboard(workspace: Path) -> Receiver:
    return TensorBoardReceiver(workspace / "tensorboard", label="tracking/tensorboard")


BACKENDS = {
    "mlflow": Backend("mlflow", open_mlflow, read_mlflow),
    "tensorboard": Backend("tensorboard", open_tensorboard, read_tensorboard),
}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> Backend:
    return BACKENDS[request.param]


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "model.bin"
    path.write_bytes(b"\x00weights" * 16)
    return path


def assert_scalars(got: Scalars, want: Scalars) -> None:
    assert sorted(got) == sorted(want)
    for key, points in want.items():
        assert [s for s, _ in got[key]] == [s for s, _ in points], key
        assert [v for _, v in got[key]] == pytest.approx([v for _, v in points], rel=1e-6), key


def site_scalars(index: int, steps: range) -> Scalars:
    return {
        "train/loss": [(s, loss(index, s)) for s in steps],
        "train/acc": [(s, 0.1 * s + index) for s in steps],
    }


# -- the contract --


def test_what_goes_in_comes_out(backend: Backend, tmp_path: Path, model: Path) -> None:
    workspace = tmp_path / "ws"
    first_session(backend.open(workspace), model)

    seen = backend.read(workspace, tmp_path / "scratch")
    assert set(seen.scalars) == {"server", *SITES}
    rounds = (1, 2, 3)
    assert_scalars(
        seen.scalars["server"],
        {"accuracy": [(r, 0.5 + 0.1 * r) for r in rounds], "loss": [(r, 1.0 / r) for r in rounds]},
    )
    for index, site in enumerate(SITES):
        assert_scalars(seen.scalars[site], site_scalars(index, range(5)))
        assert seen.texts[site] == {"notes": {1: f"{site} at **1**", 3: f"{site} at **3**"}}
        assert seen.params[site] == {"lr": "0.01", "optimizer": "sgd", "index": str(index)}
        assert seen.tags[site] == {"framework": "numpy", "shard": f"s{index}"}
    assert seen.models == ["model.bin"]


def test_reopen_adds_to_the_same_runs(backend: Backend, tmp_path: Path, model: Path) -> None:
    workspace = tmp_path / "ws"
    first_session(backend.open(workspace), model)

    again = backend.open(workspace)  # a restarted job process
    site_session(again, "site-1", 0, range(5, 7))
    site_session(again, "site-3", 2, range(2))
    again.global_metrics(4, {"accuracy": 0.9, "loss": 0.25})
    again.final_model(None)
    again.close()

    seen = backend.read(workspace, tmp_path / "scratch")
    assert set(seen.scalars) == {"server", "site-1", "site-2", "site-3"}
    assert_scalars(seen.scalars["site-1"], site_scalars(0, range(7)))
    assert_scalars(seen.scalars["site-2"], site_scalars(1, range(5)))
    assert_scalars(seen.scalars["site-3"], site_scalars(2, range(2)))
    assert [r for r, _ in seen.scalars["server"]["accuracy"]] == [1, 2, 3, 4]
    assert seen.texts["site-1"]["notes"] == {1: "site-1 at **1**", 3: "site-1 at **3**", 5: "site-1 at **5**"}
    assert seen.models == ["model.bin"]


def test_closed_receiver_refuses(backend: Backend, tmp_path: Path) -> None:
    receiver = backend.open(tmp_path / "ws")
    receiver.close()
    receiver.close()  # twice is fine
    with pytest.raises(JobError, match="closed"):
        receiver.site_events("site-1", [Script().scalar("loss", 0, 1.0)])
    with pytest.raises(JobError, match="closed"):
        receiver.global_metrics(1, {"loss": 1.0})


def test_backend_failure_is_job_error(backend: Backend, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    receiver = backend.open(workspace)
    try:
        # A site's events cannot be written: MLflow's artifact folder / the site's log folder is a file.
        blocker = workspace / ("mlflow/artifacts" if backend.name == "mlflow" else "tensorboard/site-1")
        if blocker.is_dir():
            shutil.rmtree(blocker)
        blocker.write_text("not a folder")
        with pytest.raises(JobError, match=rf"^{backend.name}.*: site site-1: ") as caught:
            receiver.site_events("site-1", [Script().text("notes", 0, "hello")])
        assert str(tmp_path) not in str(caught.value)  # errors reach admins: no server path
    finally:
        receiver.close()


def test_no_events_is_no_op(backend: Backend, tmp_path: Path) -> None:
    receiver = backend.open(tmp_path / "ws")
    receiver.site_events("site-1", [])
    receiver.global_metrics(1, {})
    receiver.close()


# -- open_receivers --


def test_open_receivers_logs_how_to_open_without_a_server_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fedsec.tracking.receivers")
    receivers = open_receivers(JOB_ID, JOB_NAME, tmp_path, LOCAL_BACKEND, tensorboard=True)
    for receiver in receivers:
        receiver.close()
    assert [type(r) for r in receivers] == [MlflowReceiver, TensorBoardReceiver]
    lines = [r.getMessage() for r in caplog.records if r.name == "fedsec.tracking.receivers.base"]
    assert len(lines) == 1
    assert "mlflow ui --backend-store-uri sqlite:///<server kit>/tracking/mlflow/mlflow.db" in lines[0]
    assert "tensorboard --logdir tracking/tensorboard" in lines[0]
    assert (tmp_path / "mlflow" / "mlflow.db").is_file()
    assert not any(str(tmp_path) in r.getMessage() for r in caplog.records)


def test_embedded_uri_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert embedded_mlflow_uri(Path("ws")) == f"sqlite:///{tmp_path.resolve()}/ws/mlflow/mlflow.db"
    assert embedded_mlflow_uri(Path("ws")).startswith("sqlite:////")


# -- MLflow in particular --


@pytest.mark.parametrize(
    "name",
    [
        "loss",
        "a/../b",
        "/lead",
        "trail/",
        "..x",
        "a b:c",
        "ünï",
        "x?y*z=1",
        "a" * 300,
        ".",
        "..",
        "a//b",
        "./a",
        "",
        "/",
    ],
)
def test_mlflow_key_is_valid(name: str) -> None:
    key = mlflow_key(name)
    assert 0 < len(key) <= 250
    assert key_chars_ok(key)
    assert not key_path_bad(key)
    if key_chars_ok(name) and name and not key_path_bad(name) and len(name) <= 250:
        assert key == name  # a valid key is kept as it is


def test_mlflow_site_cannot_take_reserved_tags_and_params_keep_their_value(tmp_path: Path) -> None:
    receiver = open_mlflow(tmp_path)
    s = Script()
    receiver.site_events("site-1", [s.params(lr="0.1"), s.tags(**{"mlflow.parentRunId": "x", "fedsec.site": "site-9"})])
    receiver.site_events("site-1", [s.params(lr="0.2", epochs="3"), s.tags(**{"odd key?": "v"})])
    receiver.close()
    client = MlflowClient(tracking_uri=embedded_mlflow_uri(tmp_path))
    assert isinstance(receiver, MlflowReceiver)
    child = client.search_runs([receiver.experiment_id], "tags.`fedsec.site` = 'site-1'")
    assert len(child) == 1
    tags = child[0].data.tags
    assert tags["mlflow.parentRunId"] == receiver.run_id
    assert tags["site.mlflow.parentRunId"] == "x"
    assert tags["site.fedsec.site"] == "site-9"
    assert tags["odd key_"] == "v"
    assert child[0].data.params == {"lr": "0.1", "epochs": "3"}
    assert tags["fedsec.param.lr"] == "0.2"


def test_mlflow_resent_batch_adds_nothing(tmp_path: Path) -> None:
    receiver = open_mlflow(tmp_path)
    s = Script()
    batch = [s.params(lr="0.1"), s.scalar("loss", 0, 1.0), s.scalar("loss", 1, 0.5), s.text("notes", 0, "hi")]
    receiver.site_events("site-1", batch)
    receiver.site_events("site-1", batch)  # a batch a receiver after this one refused comes again
    receiver.global_metrics(1, {"loss": 0.7})
    receiver.global_metrics(1, {"loss": 0.7})
    receiver.close()
    seen = read_mlflow(tmp_path, tmp_path / "scratch")
    assert seen.scalars["site-1"] == {"loss": [(0, 1.0), (1, 0.5)]}
    assert seen.scalars["server"] == {"loss": [(1, 0.7)]}


def test_mlflow_runs_end_finished_and_run_again_when_reopened(tmp_path: Path) -> None:
    receiver = open_mlflow(tmp_path)
    receiver.site_events("site-1", [Script().scalar("loss", 0, 1.0)])
    receiver.close()
    client = MlflowClient(tracking_uri=embedded_mlflow_uri(tmp_path))
    assert isinstance(receiver, MlflowReceiver)
    runs = client.search_runs([receiver.experiment_id])
    assert {r.info.status for r in runs} == {"FINISHED"}
    again = open_mlflow(tmp_path)
    assert client.get_run(receiver.run_id).info.status == RunStatus.to_string(RunStatus.RUNNING)
    again.close()
    assert client.get_run(receiver.run_id).info.status == "FINISHED"


@pytest.mark.parametrize("end", [RunEnd.FAILED, RunEnd.KILLED])
def test_mlflow_runs_of_a_failed_or_stopped_job_end_so(tmp_path: Path, end: RunEnd) -> None:
    receiver = open_mlflow(tmp_path)
    receiver.site_events("site-1", [Script().scalar("loss", 0, 1.0)])
    receiver.close(end)
    assert isinstance(receiver, MlflowReceiver)
    runs = MlflowClient(tracking_uri=embedded_mlflow_uri(tmp_path)).search_runs([receiver.experiment_id])
    assert len(runs) == 2
    assert {r.info.status for r in runs} == {end.value}


def test_mlflow_deleted_experiment_is_job_error(tmp_path: Path) -> None:
    receiver = open_mlflow(tmp_path)
    receiver.close()
    assert isinstance(receiver, MlflowReceiver)
    MlflowClient(tracking_uri=embedded_mlflow_uri(tmp_path)).delete_experiment(receiver.experiment_id)
    with pytest.raises(JobError, match="is deleted"):
        open_mlflow(tmp_path)


def test_mlflow_unreachable_server_is_job_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens on it once closed
    with pytest.raises(JobError, match=rf"^mlflow at http://127.0.0.1:{port}: job {JOB_ID}: open: "):
        MlflowReceiver(f"http://user:secret@127.0.0.1:{port}", JOB_ID, JOB_NAME)


def test_mlflow_refuses_unsafe_job_id(tmp_path: Path) -> None:
    with pytest.raises(JobError, match="job id"):
        MlflowReceiver(embedded_mlflow_uri(tmp_path), "x' OR '1'='1", JOB_NAME)


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("http://u:p@host:5000/x", "http://host:5000/x"),
        ("https://token@host/", "https://host/"),
        ("sqlite:////a/b.db", "sqlite:////a/b.db"),
        ("http://host:5000", "http://host:5000"),
    ],
)
def test_display_uri_hides_credentials(uri: str, shown: str) -> None:
    assert public_uri(uri) == shown


# -- TensorBoard in particular --


def test_tensorboard_keeps_a_site_named_server_apart(tmp_path: Path) -> None:
    receiver = TensorBoardReceiver(tmp_path / "tensorboard")
    receiver.site_events("server", [Script().scalar("loss", 0, 1.0)])
    receiver.global_metrics(1, {"loss": 0.5})
    receiver.close()
    seen = read_tensorboard(tmp_path, tmp_path)
    assert seen.scalars["_site_server"] == {"loss": [(0, 1.0)]}
    assert seen.scalars["server"] == {"loss": [(1, 0.5)]}


def test_tensorboard_refuses_an_unsafe_site_name(tmp_path: Path) -> None:
    receiver = TensorBoardReceiver(tmp_path / "tensorboard")
    with pytest.raises(JobError, match="site name"):
        receiver.site_events("../escape", [Script().scalar("loss", 0, 1.0)])
    receiver.close()
    assert not (tmp_path / "escape").exists()


# -- metrics and params as users read them --


def test_a_round_metric_has_one_name_in_the_jobs_run_and_in_each_sites(backend: Backend, tmp_path: Path) -> None:
    """One chart per name: the global curve (the job's run) beside every site's (its own run)."""
    receiver = backend.open(tmp_path / "ws")
    receiver.global_metrics(0, {"accuracy": 0.5}, {"site-1": {"accuracy": 0.4}, "site-2": {"accuracy": 0.6}})
    receiver.global_metrics(
        1, {"accuracy": 0.8, "loss": 0.3}, {"site-1": {"accuracy": 0.7, "loss": 0.4}, "site-2": {"accuracy": 0.9}}
    )
    receiver.global_metrics(2, {}, {"site-2": {}})  # nothing to write
    receiver.close()
    seen = backend.read(tmp_path / "ws", tmp_path / "scratch")
    assert_scalars(seen.scalars["server"], {"accuracy": [(0, 0.5), (1, 0.8)], "loss": [(1, 0.3)]})
    assert_scalars(seen.scalars["site-1"], {"accuracy": [(0, 0.4), (1, 0.7)], "loss": [(1, 0.4)]})
    assert_scalars(seen.scalars["site-2"], {"accuracy": [(0, 0.6), (1, 0.9)]})


def test_job_params_go_to_the_jobs_run(backend: Backend, tmp_path: Path) -> None:
    receiver = backend.open(tmp_path / "ws")
    receiver.job_params({"workflow.num_rounds": "3", "he.enabled": "false", "submitter": "admin@acme.org"})
    receiver.job_params({})
    receiver.site_events("site-1", [Script().params(lr="0.1")])
    receiver.close()
    seen = backend.read(tmp_path / "ws", tmp_path / "scratch")
    assert seen.params["server"] == {"workflow.num_rounds": "3", "he.enabled": "false", "submitter": "admin@acme.org"}
    assert seen.params["site-1"] == {"lr": "0.1"}


def test_mlflow_runs_belong_to_the_submitter(tmp_path: Path) -> None:
    first = MlflowReceiver(embedded_mlflow_uri(tmp_path), JOB_ID, JOB_NAME, user="admin@acme.org")
    first.site_events("site-1", [Script().scalar("loss", 0, 1.0)])
    first.close(RunEnd.KILLED)
    again = MlflowReceiver(embedded_mlflow_uri(tmp_path), JOB_ID, JOB_NAME)  # a late-events writer: no user given
    again.global_metrics(1, {"loss": 0.5}, {"site-2": {"loss": 0.6}})
    again.close()
    runs = MlflowClient(tracking_uri=embedded_mlflow_uri(tmp_path)).search_runs([first.experiment_id])
    assert len(runs) == 3
    assert {r.info.user_id for r in runs} == {"admin@acme.org"}
    assert {r.data.tags["mlflow.user"] for r in runs} == {"admin@acme.org"}


def test_mlflow_job_params_keep_their_first_value(tmp_path: Path) -> None:
    receiver = open_mlflow(tmp_path)
    receiver.job_params({"num_sites": "3", "strategy": "fedavg"})
    receiver.close()
    again = open_mlflow(tmp_path)  # a resumed job process: the same settings, one that changed
    again.job_params({"num_sites": "4", "strategy": "fedavg"})
    again.close()
    assert isinstance(again, MlflowReceiver)
    parent = MlflowClient(tracking_uri=embedded_mlflow_uri(tmp_path)).get_run(again.run_id)
    assert parent.data.params == {"num_sites": "3", "strategy": "fedavg"}
    assert parent.data.tags["fedsec.param.num_sites"] == "4"


def test_mlflow_close_ends_every_run_of_the_job_as_the_job_ended(tmp_path: Path) -> None:
    """A job stopped (server down) and resumed to completion: a site that sent nothing after the resume too."""
    first = open_mlflow(tmp_path)
    for site in SITES:
        first.site_events(site, [Script().scalar("loss", 0, 1.0)])
    first.close(RunEnd.KILLED)
    again = open_mlflow(tmp_path)
    again.site_events("site-1", [Script().scalar("loss", 1, 0.5)])
    again.close(RunEnd.FINISHED)
    assert isinstance(again, MlflowReceiver)
    runs = MlflowClient(tracking_uri=embedded_mlflow_uri(tmp_path)).search_runs([again.experiment_id])
    assert {r.info.run_name: r.info.status for r in runs} == {
        f"{JOB_NAME}-{JOB_ID[:8]}": "FINISHED",
        "site-1": "FINISHED",
        "site-2": "FINISHED",
    }


def test_mlflow_a_round_written_again_by_another_process_with_its_stamp_is_stored_once(tmp_path: Path) -> None:
    """A job process killed between MLflow's write and its own record of it: the next one writes the round
    again with the time kept with it, and MLflow keeps one point per metric (not a second value)."""
    first = open_mlflow(tmp_path)
    first.global_metrics(2, {"loss": 0.5}, {"site-1": {"loss": 0.25}}, stamp=1_700_000_000.5)
    again = open_mlflow(tmp_path)  # the resumed job process, with the round taken up from the pending file
    again.global_metrics(2, {"loss": 0.5}, {"site-1": {"loss": 0.25}}, stamp=1_700_000_000.5)
    again.close()
    assert isinstance(again, MlflowReceiver)
    client = MlflowClient(tracking_uri=embedded_mlflow_uri(tmp_path))
    runs = client.search_runs([again.experiment_id])
    assert len(runs) == 2
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "loss")
        assert [(m.step, m.timestamp) for m in history] == [(2, 1_700_000_000_500)], run.data.tags
