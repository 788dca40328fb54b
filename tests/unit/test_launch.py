"""fedsec.launch.check_kits: a kit checked in a forked child is load_kit's kit, and every refusal comes back."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsec.errors import ConfigError, KitError
from fedsec.kit import from_json, load_kit, read_ca, to_json
from fedsec.launch import check_kit, check_kits
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


def test_check_kits_returns_what_load_kit_returns(prod: Path) -> None:
    kits = check_kits([(prod / "site-1", Kind.CLIENT), (prod / "site-2", Kind.CLIENT), (prod / "server1", Kind.SERVER)])
    assert kits == [load_kit(prod / "site-1"), load_kit(prod / "site-2"), load_kit(prod / "server1")]


def test_the_root_ca_is_the_one_checked_not_the_file_read_later(prod: Path) -> None:
    kit = check_kit(prod / "site-1", Kind.CLIENT)
    checked = kit.ca_path.read_bytes()
    kit.ca_path.write_bytes(b"replaced after the check\n")
    assert kit.ca_pem == checked
    assert read_ca(kit).subject == read_ca(load_kit(prod / "site-2")).subject  # still the checked certificate


def test_each_kit_gets_its_own_verdict_naming_the_changed_file(prod: Path) -> None:
    policy = prod / "site-2" / "local" / "site_policy.yml"
    policy.write_text(policy.read_text() + "\n")
    ok, refused = check_kits([(prod / "site-1", Kind.CLIENT), (prod / "site-2", Kind.CLIENT)])
    assert ok == load_kit(prod / "site-1")
    assert isinstance(refused, KitError)
    assert "site-2: local/site_policy.yml does not match its signature" in str(refused)
    with pytest.raises(KitError, match=r"site-2: local/site_policy.yml does not match its signature"):
        check_kit(prod / "site-2", Kind.CLIENT)


def test_a_kit_of_another_kind_is_refused(prod: Path) -> None:
    with pytest.raises(KitError, match="is a server kit, not a client kit"):
        check_kit(prod / "server1", Kind.CLIENT)


def test_bad_site_settings_stop_a_site_at_start(prod: Path) -> None:
    settings = prod / "site-1" / "local" / "site_settings.yml"
    settings.write_text("no_such_setting: 1\n")
    settings.chmod(0o600)
    with pytest.raises(ConfigError, match="no_such_setting"):
        check_kit(prod / "site-1", Kind.CLIENT)


def test_a_missing_kit_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KitError, match="has no startup/ folder"):
        check_kit(tmp_path / "nothing", Kind.CLIENT)
