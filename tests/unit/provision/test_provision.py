from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from fedsec.cli import main
from tests.conftest import BASE_PROJECT, project_doc, write_project


def _snapshot(root: Path) -> dict[str, str]:
    """Path -> content digest (or 'dir') of everything under root."""
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            p = Path(dirpath) / f
            out[os.path.relpath(p, root)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _participants(*changes: tuple[int, dict[str, Any] | None]) -> list[dict[str, Any]]:
    parts = [dict(p) for p in BASE_PROJECT["participants"]]
    for index, change in changes:
        if change is None:
            parts.pop(index)
        else:
            parts[index].update(change)
    return parts


def _extra_server() -> list[dict[str, Any]]:
    parts = _participants()
    parts.append({**parts[0], "name": "server2"})
    return parts


BAD_DOCS: list[tuple[str, Any, str]] = [
    ("unknown top key", project_doc(colour="blue"), "colour: unknown key"),
    (
        "unknown participant key",
        project_doc(participants=_participants((1, {"rol": "x"}))),
        "participants[1].rol: unknown key",
    ),
    (
        "client with a port",
        project_doc(participants=_participants((1, {"fl_port": 1}))),
        "participants[1].fl_port: unknown key",
    ),
    ("duplicate names", project_doc(participants=_participants((2, {"name": "site-1"}))), "'site-1' is a duplicate"),
    ("case-only duplicate", project_doc(participants=_participants((2, {"name": "SITE-1"}))), "is a duplicate"),
    ("path separator", project_doc(participants=_participants((1, {"name": "a/b"}))), "participants[1].name"),
    ("dot dot", project_doc(participants=_participants((1, {"name": ".."}))), "not safe"),
    ("unsafe project name", project_doc(name="../up"), "project name '../up' is not safe"),
    ("bad admin name", project_doc(participants=_participants((3, {"name": "not an email"}))), "participants[3].name"),
    ("no server", project_doc(participants=_participants((0, None))), "exactly one server, found 0"),
    ("two servers", project_doc(participants=_extra_server()), "exactly one server, found 2"),
    ("unknown role", project_doc(participants=_participants((3, {"role": "king"}))), "'king' is not one of"),
    ("unknown type", project_doc(participants=_participants((1, {"type": "robot"}))), "'robot' is not one of server"),
    (
        "port clash",
        project_doc(participants=_participants((0, {"admin_port": 18002}))),
        "fl_port and admin_port are both 18002",
    ),
    ("port out of range", project_doc(participants=_participants((0, {"fl_port": 70000}))), "not a port number"),
    (
        "port not a number",
        project_doc(participants=_participants((0, {"fl_port": "80"}))),
        "fl_port: expected an integer",
    ),
    (
        "no host names",
        project_doc(participants=_participants((0, {"host_names": []}))),
        "host_names: give at least one",
    ),
    ("wrong api version", project_doc(api_version=9), "api_version: 9 is not supported"),
    ("empty participants", project_doc(participants=[]), "participants: the list is empty"),
    ("not a mapping", ["a", "b"], "expected a mapping"),
    ("leaf outlives root", project_doc(validity={"root_days": 10, "leaf_days": 20}), "leaf_days: longer than"),
    (
        "unknown HE key",
        project_doc(features={"he": {"enabled": True, "scheme": "ckks"}}),
        "features.he.scheme: unknown key",
    ),
]


@pytest.mark.parametrize(("label", "doc", "message"), BAD_DOCS, ids=[b[0] for b in BAD_DOCS])
@pytest.mark.parametrize("existing", [False, True], ids=["fresh", "existing"])
def test_bad_input_is_rejected_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], label: str, doc: Any, message: str, existing: bool
) -> None:
    ws = tmp_path / "ws"
    if existing:
        assert main(["provision", "-p", str(write_project(tmp_path / "good.yml", project_doc())), "-w", str(ws)]) == 0
        capsys.readouterr()
    before = _snapshot(tmp_path)
    yml = tmp_path / "bad.yml"
    yml.write_text(__import__("yaml").safe_dump(doc))
    before[yml.name] = hashlib.sha256(yml.read_bytes()).hexdigest()
    assert main(["provision", "-p", str(yml), "-w", str(ws)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedsec: error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"a: [1, 2\n", "invalid YAML at line"), (b"\xff\xfe", "not UTF-8"), (b"", "expected a mapping")],
)
def test_unreadable_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, message: str) -> None:
    yml = tmp_path / "p.yml"
    yml.write_bytes(content)
    assert main(["provision", "-p", str(yml), "-w", str(tmp_path / "ws")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "ws").exists()


def test_missing_project_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["provision", "-p", str(tmp_path / "nope.yml"), "-w", str(tmp_path / "ws")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_state_with_mismatched_root_key_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fedsec.pki import certs

    yml = write_project(tmp_path / "p.yml", project_doc())
    ws = tmp_path / "ws"
    assert main(["provision", "-p", str(yml), "-w", str(ws)]) == 0
    other_key, _ = certs.make_root("x", 10)
    (ws / "testproj/state/rootCA.key").write_bytes(certs.key_pem(other_key))
    before = _snapshot(ws)
    capsys.readouterr()
    assert main(["provision", "-p", str(yml), "-w", str(ws)]) == 2
    assert "rootCA.key is not the key of rootCA.pem" in capsys.readouterr().err
    assert _snapshot(ws) == before


def test_reprovision_keeps_root_and_adds_prod(tmp_path: Path) -> None:
    yml = write_project(tmp_path / "p.yml", project_doc())
    ws = tmp_path / "ws"
    assert main(["provision", "-p", str(yml), "-w", str(ws)]) == 0
    root_key = (ws / "testproj/state/rootCA.key").read_bytes()
    assert (ws / "testproj/state/rootCA.key").stat().st_mode & 0o777 == 0o600
    longer = project_doc(
        participants=[*BASE_PROJECT["participants"], {"name": "site-3", "type": "client", "org": "acme"}]
    )
    write_project(yml, longer)
    assert main(["provision", "-p", str(yml), "-w", str(ws)]) == 0
    assert (ws / "testproj/state/rootCA.key").read_bytes() == root_key
    assert (ws / "testproj/prod_00/site-1/startup/rootCA.pem").read_bytes() == (
        ws / "testproj/prod_01/site-3/startup/rootCA.pem"
    ).read_bytes()
    assert not (ws / "testproj/prod_00/site-3").exists()
    assert not [p for p in (ws / "testproj").iterdir() if p.name.startswith(".staging")]
    # no kit carries the root key
    assert not list(ws.glob("testproj/prod_*/*/startup/rootCA.key"))


def test_init_writes_a_sample_that_provisions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sample.yml"
    assert main(["provision", "--init", "-o", str(out)]) == 0
    assert "# " in out.read_text()
    assert main(["provision", "--init", "-o", str(out)]) == 2  # never overwrites
    assert main(["provision", "-p", str(out), "-w", str(tmp_path / "ws")]) == 0
    assert "verify-kit" not in capsys.readouterr().err
    assert main(["verify-kit", str(tmp_path / "ws/example_project/prod_00/site-2")]) == 0


@pytest.mark.parametrize("shipped", ["provision/project.yml", "provision/secure_project.yml"])
def test_shipped_project_files_provision(tmp_path: Path, shipped: str) -> None:
    root = Path(__file__).resolve().parents[3]
    assert main(["provision", "-p", str(root / shipped), "-w", str(tmp_path)]) == 0
    kits = list(tmp_path.glob("*/prod_00/*"))
    assert len(kits) == (4 if shipped.endswith("/project.yml") else 10)
    for kit in kits:
        assert main(["verify-kit", str(kit)]) == 0
