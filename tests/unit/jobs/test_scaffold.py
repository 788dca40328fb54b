"""`fedsec job new`: each template writes a job folder whose job.py exports a loadable job; never over anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedsec import cli
from fedsec.errors import ConfigError
from fedsec.jobs import load_job_folder
from fedsec.jobs.scaffold import TEMPLATES, new_job

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("template", TEMPLATES)
def test_each_template_writes_a_job_that_exports(tmp_path: Path, template: str) -> None:
    written = new_job(tmp_path / "my_job", template)
    assert sorted(p.name for p in written) == ["client.py", "job.py", "model.py"]
    for path in written:
        text = path.read_text()
        assert "{{" not in text, path
        compile(text, str(path), "exec")
    assert '"my_job"' in (tmp_path / "my_job" / "job.py").read_text()
    done = subprocess.run(
        [sys.executable, str(tmp_path / "my_job" / "job.py"), "--export_only", str(tmp_path / "exported")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    meta, config = load_job_folder(tmp_path / "exported")
    assert meta.name == "my_job" and meta.min_clients == 2
    assert config.script.path == "client.py"
    assert sorted(p.name for p in (tmp_path / "exported" / "app" / "custom").iterdir()) == ["client.py", "model.py"]


def test_an_existing_folder_is_never_touched(tmp_path: Path) -> None:
    (tmp_path / "my_job").mkdir()
    (tmp_path / "my_job" / "job.py").write_text("mine")
    with pytest.raises(ConfigError, match="job folder .*my_job exists already; not overwriting it"):
        new_job(tmp_path / "my_job", "numpy")
    assert (tmp_path / "my_job" / "job.py").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["my_job"]  # no staging folder left


@pytest.mark.parametrize(
    ("name", "template", "match"),
    [
        ("my_job", "keras", "no template 'keras'; choose one of numpy, pytorch, sklearn"),
        ("..", "numpy", "not safe"),
        ("-x", "numpy", "not safe"),
    ],
)
def test_bad_names_and_templates(tmp_path: Path, name: str, template: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        new_job(tmp_path / name, template)


def test_cli_says_how_to_run_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["job", "new", "j", "--template", "sklearn", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"wrote the sklearn job j into {tmp_path / 'j'}: client.py, job.py, model.py" in out
    assert f"python {tmp_path / 'j' / 'job.py'} --startup_kit ADMIN_KIT" in out
    assert cli.main(["job", "new", "j", "--dir", str(tmp_path)]) == 2
    assert "exists already" in capsys.readouterr().err
