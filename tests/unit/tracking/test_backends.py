"""fedsec.tracking.backends: the operator's local/tracking.yml, and a job's tracking section that names one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from fedsec.errors import ConfigError, JobError
from fedsec.jobs.meta import parse_app_config
from fedsec.tracking.backends import BACKENDS_FILE, LOCAL, Backend, load_backends, parse_backends

APP = {"workflow": {"kind": "fedavg", "num_rounds": 1}, "script": {"path": "s.py"}, "initial_model": "m.fsa"}


def write(kit: Path, text: str, mode: int = 0o600) -> Path:
    path = kit / BACKENDS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def test_no_file_means_only_local(tmp_path: Path) -> None:
    backends = load_backends(tmp_path)
    assert backends.names == (LOCAL,)
    assert backends.get(LOCAL).embedded


def test_named_backends_and_local(tmp_path: Path) -> None:
    write(tmp_path, "backends:\n  team: {mlflow_uri: 'https://u:secret@mlflow.example.org:8443/x'}\n")
    backends = load_backends(tmp_path)
    assert backends.names == ("local", "team")
    team = backends.get("team")
    assert team.mlflow_uri == "https://u:secret@mlflow.example.org:8443/x"
    assert "secret" not in repr(team) and "secret" not in team.shown
    assert team.env() == {"FEDSEC_TRACKING_BACKEND": "team", "FEDSEC_TRACKING_MLFLOW_URI": team.mlflow_uri}


def test_unknown_backend_names_the_ones_there_are(tmp_path: Path) -> None:
    write(tmp_path, "backends:\n  team: {mlflow_uri: 'http://127.0.0.1:5000'}\n")
    with pytest.raises(JobError, match=r"'nope' is not a tracking backend of this server \(it has: local, team\)"):
        load_backends(tmp_path).get("nope")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([1], "expected a mapping"),
        ({"backend": {}}, "backend: unknown key"),
        ({"backends": {"t": {"mlflow_url": "http://h"}}}, r"backends\.t\.mlflow_url: unknown key"),
        ({"backends": {"t": {}}}, r"backends\.t\.mlflow_uri: required key is missing"),
        ({"backends": {"t": {"mlflow_uri": 5}}}, "expected a string"),
        ({"backends": {"local": {"mlflow_uri": "http://h"}}}, "always the embedded store"),
        ({"backends": {"LOCAL": {"mlflow_uri": "http://h"}}}, "always the embedded store"),
        ({"backends": {"../x": {"mlflow_uri": "http://h"}}}, "not safe"),
        ({"backends": {"t": {"mlflow_uri": "sqlite:////srv/kit/store/jobs.db"}}}, "not an http:// or https:// URL"),
        ({"backends": {"t": {"mlflow_uri": "file:///etc"}}}, "not an http:// or https:// URL"),
        ({"backends": {"t": {"mlflow_uri": "/abs/path"}}}, "not an http:// or https:// URL"),
        ({"backends": {"t": {"mlflow_uri": "http://"}}}, "has no host"),
        ({"backends": {"t": {"mlflow_uri": "http://h:99999"}}}, "not a valid URL"),
        ({"backends": {"t": {"mlflow_uri": "http://h/x?a=1"}}}, "query or a fragment"),
        ({"backends": {"t": {"mlflow_uri": "http://h/\nx"}}}, "control character"),
        ({"backends": {"t": {"mlflow_uri": "http://h/" + "x" * 3000}}}, "longer than"),
        ({"backends": {"t": {"mlflow_uri": "http://a"}, "T": {"mlflow_uri": "http://b"}}}, "twice"),
    ],
)
def test_bad_tracking_yml_is_refused(raw: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_backends(raw, BACKENDS_FILE)
    assert str(caught.value).startswith(f"{BACKENDS_FILE}: ")


def test_bad_yaml_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "backends: [\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_backends(tmp_path)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o602, 0o660])
def test_file_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    write(tmp_path, "backends: {}\n", mode)
    with pytest.raises(ConfigError, match=r"lets others read or change it.*chmod 600"):
        load_backends(tmp_path)


def test_link_is_refused(tmp_path: Path) -> None:
    target = write(tmp_path / "elsewhere", "backends: {}\n")
    (tmp_path / "local").mkdir()
    os.symlink(target, tmp_path / BACKENDS_FILE)
    with pytest.raises(ConfigError, match="regular file"):
        load_backends(tmp_path)


def test_empty_file_is_only_local(tmp_path: Path) -> None:
    write(tmp_path, "")
    assert load_backends(tmp_path).names == (LOCAL,)


# -- a job's tracking section --


def test_job_names_a_backend() -> None:
    config = parse_app_config({**APP, "tracking": {"backend": "team", "tensorboard": True}})
    assert (config.tracking.backend, config.tracking.tensorboard) == ("team", True)
    assert parse_app_config(APP).tracking.backend == LOCAL


@pytest.mark.parametrize(
    "uri", ["sqlite:////srv/kit/startup/x.db", "http://169.254.169.254/latest", "https://mlflow.example.org", ""]
)
def test_job_with_mlflow_uri_is_refused_with_what_to_write(uri: str) -> None:
    with pytest.raises(ConfigError, match=r"tracking\.mlflow_uri: .*tracking: \{backend: local\}"):
        parse_app_config({**APP, "tracking": {"mlflow_uri": uri}})


@pytest.mark.parametrize("name", ["../store", "/abs", "a b", "", "x" * 200])
def test_job_backend_name_must_be_a_short_name(name: str) -> None:
    with pytest.raises(ConfigError, match=r"tracking\.backend: "):
        parse_app_config({**APP, "tracking": {"backend": name}})


def test_backend_repr_of_local() -> None:
    assert Backend(LOCAL).shown == "the server's embedded store"
