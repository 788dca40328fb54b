"""fedsec.launch.check_kits: a kit checked in a forked child is load_kit's kit, and every refusal comes back."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from fedsec.errors import FedsecError, KitError
from fedsec.kit import from_json, load_kit, read_ca, to_json
from fedsec.launch import check_kits
from fedsec.pki.identity import Kind


@pytest.mark.parametrize("name", ["server1", "site-1", "admin@acme.org"])
def test_a_kit_survives_its_json_record(prod: Path, name: str) -> None:
    kit = load_kit(prod / name)
    assert from_json(to_json(kit)) == kit


@pytest.mark.parametrize(
    "damage",
    [
        lambda doc: doc.pop("ca_pem"),
        lambda doc: doc.update(kind="robot"),
        lambda doc: doc["identity"].update(role="king"),
        lambda doc: doc["config"].update(unknown_key=1),
        lambda doc: doc.update(signed_files=None),
    ],
    ids=["no CA", "bad kind", "bad role", "unknown config key", "no file list"],
)
def test_a_malformed_record_is_a_kit_error(prod: Path, damage: object) -> None:
    doc = to_json(load_kit(prod / "admin@acme.org"))
    damage(doc)  # type: ignore[operator]
    with pytest.raises(KitError, match="a checked kit's record is malformed"):
        from_json(doc)


# check_kits forks, so it runs in a fresh interpreter of one thread, as the fedsec command calls it.
_CHECK = """
import json, sys
from pathlib import Path
from fedsec.errors import FedsecError
from fedsec.kit import to_json
from fedsec.launch import check_kits
from fedsec.pki.identity import Kind
requests = [(Path(root), Kind(kind)) for root, kind in json.loads(sys.argv[1])]
print(json.dumps([
    {"error": type(v).__name__, "message": str(v)} if isinstance(v, FedsecError) else {"kit": to_json(v)}
    for v in check_kits(requests)
]))
"""


def _check(*requests: tuple[Path, Kind]) -> list[Any]:
    """check_kits(requests) in a fresh interpreter: each verdict's kit as from_json builds it, or (class, message)."""
    args = json.dumps([(str(root), kind.value) for root, kind in requests])
    out = subprocess.run([sys.executable, "-c", _CHECK, args], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return [from_json(v["kit"]) if "kit" in v else (v["error"], v["message"]) for v in json.loads(out.stdout)]


def test_check_kits_returns_what_load_kit_returns(prod: Path) -> None:
    kits = _check((prod / "site-1", Kind.CLIENT), (prod / "site-2", Kind.CLIENT), (prod / "server1", Kind.SERVER))
    assert kits == [load_kit(prod / "site-1"), load_kit(prod / "site-2"), load_kit(prod / "server1")]


def test_the_root_ca_is_the_one_checked_not_the_file_read_later(prod: Path) -> None:
    (kit,) = _check((prod / "site-1", Kind.CLIENT))
    checked = kit.ca_path.read_bytes()
    kit.ca_path.write_bytes(b"replaced after the check\n")
    assert kit.ca_pem == checked
    assert read_ca(kit).subject == read_ca(load_kit(prod / "site-2")).subject  # still the checked certificate


def test_each_kit_gets_its_own_verdict_naming_the_changed_file(prod: Path) -> None:
    policy = prod / "site-2" / "local" / "site_policy.yml"
    policy.write_text(policy.read_text() + "\n")
    ok, refused = _check((prod / "site-1", Kind.CLIENT), (prod / "site-2", Kind.CLIENT))
    assert ok == load_kit(prod / "site-1")
    assert refused[0] == "KitError"
    assert "site-2: local/site_policy.yml does not match its signature" in refused[1]


def test_a_kit_of_another_kind_is_refused(prod: Path) -> None:
    ((error, message),) = _check((prod / "server1", Kind.CLIENT))
    assert error == "KitError" and "is a server kit, not a client kit" in message


def test_bad_site_settings_stop_a_site_at_start(prod: Path) -> None:
    settings = prod / "site-1" / "local" / "site_settings.yml"
    settings.write_text("no_such_setting: 1\n")
    settings.chmod(0o600)
    ((error, message),) = _check((prod / "site-1", Kind.CLIENT))
    assert error == "ConfigError" and "no_such_setting" in message  # exit 2, as before, from `fedsec client`


def test_a_missing_kit_is_refused(tmp_path: Path) -> None:
    ((error, message),) = _check((tmp_path / "nothing", Kind.CLIENT))
    assert error == "KitError" and "has no startup/ folder" in message


def test_the_fedsec_client_command_names_a_refused_kit_and_exits_2(prod: Path) -> None:
    policy = prod / "site-1" / "local" / "site_policy.yml"
    policy.write_text(policy.read_text() + "\n")
    out = subprocess.run(
        [sys.executable, "-m", "fedsec", "client", "--kit", str(prod / "site-1")],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().endswith("site-1: local/site_policy.yml does not match its signature"), out.stderr


def test_nothing_forks_while_another_thread_runs(prod: Path) -> None:
    release = threading.Event()
    other = threading.Thread(target=release.wait, daemon=True)
    other.start()
    try:
        with pytest.raises(FedsecError, match="runs more than one thread; it must not fork now"):
            check_kits([(prod / "site-1", Kind.CLIENT)])
    finally:
        release.set()
        other.join()
