"""A missing optional library is one line naming the extra to install (the import is made to fail here)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedsec import cli
from fedsec.errors import DependencyError

HE = "homomorphic encryption needs the he extra: pip install 'fedsec[he]'"
TRACKING = "experiment tracking needs the tracking extra: pip install 'fedsec[tracking]'"
TENSORBOARD = "TensorBoard event files needs the tracking extra: pip install 'fedsec[tracking]'"
TORCH = "PyTorch models needs the ml extra: pip install 'fedsec[ml]'"
POSTGRES = "a server store in PostgreSQL needs the postgres extra: pip install 'fedsec[postgres]'"


def block(monkeypatch: pytest.MonkeyPatch, lib: str, *fedsec_modules: str) -> None:
    """Make `import lib` (and its submodules) fail, and forget fedsec_modules so they import again."""
    for name in [n for n in sys.modules if n == lib or n.startswith(lib + ".")] + [lib]:
        monkeypatch.setitem(sys.modules, name, None)
    for name in fedsec_modules:
        if name in sys.modules:
            monkeypatch.delitem(sys.modules, name)


@pytest.mark.parametrize(
    ("module", "lib", "message"),
    [
        ("fedsec.he.context", "tenseal", HE),
        ("fedsec.he.codec", "tenseal", HE),
        ("fedsec.tracking.receivers.mlflow_receiver", "mlflow", TRACKING),
        ("fedsec.tracking.receivers.tensorboard", "tensorboardX", TENSORBOARD),
    ],
)
def test_importing_without_the_library_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, module: str, lib: str, message: str
) -> None:
    block(monkeypatch, lib, module, "fedsec.he.context", "fedsec.he.codec")
    with pytest.raises(DependencyError) as err:
        importlib.import_module(module)
    assert str(err.value) == message


def test_embedded_store_without_mlflow_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from fedsec.tracking.receivers.store import prepare_embedded_store

    block(monkeypatch, "mlflow")
    with pytest.raises(DependencyError, match=r"^experiment tracking needs the tracking extra"):
        prepare_embedded_store(tmp_path)


def test_load_into_without_torch_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedsec.client.torch_io import load_into

    block(monkeypatch, "torch")
    with pytest.raises(DependencyError) as err:
        load_into(object(), {"w": np.zeros(2, np.float32)})
    assert str(err.value) == TORCH


def test_postgres_store_without_psycopg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedsec.state.postgres import open_postgres

    block(monkeypatch, "psycopg")
    with pytest.raises(DependencyError) as err:
        open_postgres("host=/nonexistent dbname=x")
    assert str(err.value) == POSTGRES


def test_provisioning_an_he_project_without_tenseal_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = tmp_path / "p.yml"
    participants = [
        {"name": "server1", "type": "server", "org": "o", "host_names": ["localhost"], "fl_port": 1, "admin_port": 2},
        {"name": "site-1", "type": "client", "org": "o"},
    ]
    doc = {"api_version": 1, "name": "p", "participants": participants, "features": {"he": {"enabled": True}}}
    project.write_text(yaml.safe_dump(doc))
    block(monkeypatch, "tenseal", "fedsec.he.context", "fedsec.he.codec")
    code = cli.main(["provision", "-p", str(project), "-w", str(tmp_path / "ws")])
    assert code == 2
    assert capsys.readouterr().err == f"fedsec: error: {HE}\n"
    assert not (tmp_path / "ws" / "p").exists() or not list((tmp_path / "ws" / "p").glob("prod_*"))


def test_a_broken_install_says_what_failed_too() -> None:
    from fedsec import _deps

    exc = ModuleNotFoundError("No module named 'sealapi_core'", name="sealapi_core")
    assert str(_deps.missing("tenseal", exc)) == f"{HE} (No module named 'sealapi_core')"


def test_every_extra_named_in_an_error_is_declared_with_its_library() -> None:
    import tomllib

    from fedsec import _deps

    root = Path(__file__).resolve().parents[2]
    project = tomllib.loads((root / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    pypi_name = {"sklearn": "scikit-learn"}
    for module, extra in _deps.OPTIONAL.items():
        wanted = pypi_name.get(module, module).lower()
        assert any(req.lower().startswith(wanted) for req in extras[extra.extra]), (module, extra.extra)
    assert set(extras["all"]) == {"fedsec[he,tracking,ml,postgres]"}
    pins = (root / "requirements.txt").read_text().splitlines()
    for name in ("tenseal", "mlflow", "tensorboardX", "torch", "scikit-learn", "safetensors", "psycopg[binary]"):
        assert any(line.startswith(f"{name}==") for line in pins), name
    data = project["tool"]["setuptools"]["package-data"]["fedsec"]
    assert "py.typed" in data and "jobs/templates/*/*.in" in data
    assert (root / "fedsec" / "py.typed").is_file()
