from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from fedsec import limits
from fedsec.errors import AuthError, KitError
from fedsec.jobs.signing import new_job_id, sign_archive, verify_archive
from fedsec.kit import load_kit, read_ca
from fedsec.pki import certs
from fedsec.provision import load_project, provision, templates
from fedsec.site.policy import SitePolicy, load_site_policy
from tests.conftest import BASE_PROJECT, project_doc, write_project

Role = certs.Role
DEFAULT = SitePolicy(roles=frozenset({Role.PROJECT_ADMIN, Role.ORG_ADMIN, Role.LEAD}), orgs=None)


def _admin(role: Role, org: str = "acme") -> certs.Identity:
    return certs.Identity(f"{role.value}@{org}.org", org, certs.Kind.ADMIN, role)


def _kit_with(tmp_path: Path, text: str | bytes, name: str = "site-9") -> Path:
    kit = tmp_path / name
    (kit / "local").mkdir(parents=True)
    data = text.encode() if isinstance(text, str) else text
    (kit / "local" / "site_policy.yml").write_bytes(data)
    return kit


@pytest.mark.parametrize("site", ["site-1", "site-2"])
def test_shipped_policy_loads(prod: Path, site: str) -> None:
    load_kit(prod / site)  # the file is the signed one
    assert load_site_policy(prod / site) == DEFAULT


def test_template_is_the_default(tmp_path: Path) -> None:
    assert load_site_policy(_kit_with(tmp_path, templates.SITE_POLICY_YML)) == DEFAULT


# role -> may run under the shipped policy, written out rather than derived from the file
SHIPPED_MAY_RUN = {Role.PROJECT_ADMIN: True, Role.ORG_ADMIN: True, Role.LEAD: True, Role.MEMBER: False}


@pytest.mark.parametrize(
    ("role", "org"), list(itertools.product(Role, ["acme", "beta", "other"])), ids=lambda v: getattr(v, "value", v)
)
def test_shipped_policy_by_role(prod: Path, role: Role, org: str) -> None:
    policy = load_site_policy(prod / "site-2")
    if SHIPPED_MAY_RUN[role]:
        policy.check(_admin(role, org), "site-2")
    else:
        with pytest.raises(AuthError, match=f"^site-2 policy: role {role.value} may not run jobs with custom code"):
            policy.check(_admin(role, org), "site-2")


ORG_LIMITED = """format: fedsec-site-policy/1
custom_code:
  roles: [lead, member]
  orgs: [acme, b.org-2]
"""


@pytest.mark.parametrize(
    ("role", "org", "refusal"),
    [
        (Role.LEAD, "acme", None),
        (Role.MEMBER, "b.org-2", None),
        (Role.LEAD, "beta", "org beta may not run jobs with custom code here"),
        (Role.MEMBER, "ACME", "org ACME may not run"),
        (Role.PROJECT_ADMIN, "acme", "role project_admin may not run"),
        (Role.ORG_ADMIN, "beta", "role org_admin may not run"),
    ],
)
def test_org_list(tmp_path: Path, role: Role, org: str, refusal: str | None) -> None:
    policy = load_site_policy(_kit_with(tmp_path, ORG_LIMITED))
    assert policy == SitePolicy(frozenset({Role.LEAD, Role.MEMBER}), frozenset({"acme", "b.org-2"}))
    if refusal is None:
        policy.check(_admin(role, org), "site-9")
    else:
        with pytest.raises(AuthError, match=f"^site-9 policy: {refusal}"):
            policy.check(_admin(role, org), "site-9")


def test_empty_lists_refuse_everyone(tmp_path: Path) -> None:
    text = "format: fedsec-site-policy/1\ncustom_code: {roles: [], orgs: any}\n"
    policy = load_site_policy(_kit_with(tmp_path, text))
    for role in Role:
        with pytest.raises(AuthError):
            policy.check(_admin(role), "site-9")


@pytest.mark.parametrize(
    "who",
    [
        certs.Identity("site-1", "acme", certs.Kind.CLIENT),
        certs.Identity("server1", "acme", certs.Kind.SERVER),
        certs.Identity("x@acme.org", "acme", certs.Kind.ADMIN, None),
    ],
    ids=["site", "server", "admin without role"],
)
def test_non_admin_signer_refused(who: certs.Identity) -> None:
    with pytest.raises(AuthError, match="is not an admin"):
        DEFAULT.check(who, "site-1")


def test_signed_job_end_to_end(tmp_path: Path) -> None:
    """Real admin certificates: signature verified on the site, then its policy applied."""
    admins = [
        {"name": f"{r.value}@beta.org", "type": "admin", "org": "beta", "role": r.value}
        for r in Role
        if r is not Role.PROJECT_ADMIN
    ]
    doc = project_doc(participants=[*BASE_PROJECT["participants"], *admins])
    prod = provision(load_project(write_project(tmp_path / "project.yml", doc)), tmp_path / "ws").prod_dir
    site = load_kit(prod / "site-2")
    policy = load_site_policy(site.root)
    archive = b"job archive bytes"
    ran = {}
    for name in ["admin@acme.org", *(a["name"] for a in admins)]:
        startup = prod / name / "startup"
        key = certs.load_key((startup / f"{name}.key").read_bytes(), name)
        job_id = new_job_id()
        sig = sign_archive(
            archive, key, (startup / f"{name}.crt").read_bytes(), job_id=job_id, submit_time=1_700_000_000
        )
        signer = verify_archive(archive, sig, read_ca(site), "job 1", job_id=job_id)
        try:
            policy.check(signer, site.name)
            ran[name] = True
        except AuthError:
            ran[name] = False
    assert ran == {
        "admin@acme.org": True,
        "org_admin@beta.org": True,
        "lead@beta.org": True,
        "member@beta.org": False,
    }


_FMT = "format: fedsec-site-policy/1\n"
MALFORMED = [
    ("empty file", "", "document: expected a mapping"),
    ("not YAML", "format: [unclosed\n", "invalid YAML at line"),
    ("a list", "- a\n- b\n", "document: expected a mapping"),
    ("wrong format", "format: fedsec-site-policy/2\ncustom_code: {roles: [], orgs: any}\n", "format: 'fedsec-"),
    ("no format", "custom_code: {roles: [], orgs: any}\n", "format: required key is missing"),
    ("no custom_code", _FMT, "custom_code: required key is missing"),
    ("unknown top key", _FMT + "custom_code: {roles: [], orgs: any}\nextra: 1\n", "extra: unknown key"),
    ("unknown rule key", _FMT + "custom_code: {roles: [], orgs: any, sites: []}\n", "custom_code.sites: unknown key"),
    ("no roles", _FMT + "custom_code: {orgs: any}\n", "custom_code.roles: required key is missing"),
    ("no orgs", _FMT + "custom_code: {roles: []}\n", "custom_code.orgs: required key is missing"),
    (
        "unknown role",
        _FMT + "custom_code: {roles: [lead, boss], orgs: any}\n",
        r"custom_code.roles\[1\]: 'boss' is not",
    ),
    ("role not a list", _FMT + "custom_code: {roles: lead, orgs: any}\n", "custom_code.roles: expected a list"),
    ("orgs a word", _FMT + "custom_code: {roles: [], orgs: all}\n", "custom_code.orgs: expected 'any' or a list"),
    ("orgs a number", _FMT + "custom_code: {roles: [], orgs: 3}\n", "custom_code.orgs: expected 'any' or a list"),
    ("orgs nothing", _FMT + "custom_code: {roles: [], orgs: }\n", "custom_code.orgs: expected 'any' or a list"),
    ("unsafe org", _FMT + "custom_code: {roles: [], orgs: [acme, ../x]}\n", r"custom_code.orgs\[1\] name '../x'"),
    ("org not text", _FMT + "custom_code: {roles: [], orgs: [acme, 7]}\n", r"custom_code.orgs\[1\] name must be"),
    ("org empty", _FMT + "custom_code: {roles: [], orgs: ['']}\n", r"custom_code.orgs\[0\] name must be"),
    ("age zero", _FMT + "custom_code: {roles: [], orgs: any}\nmax_job_age_days: 0\n", "max_job_age_days: 0 is not"),
    ("age negative", _FMT + "custom_code: {roles: [], orgs: any}\nmax_job_age_days: -3\n", "max_job_age_days: -3"),
    ("age over", _FMT + "custom_code: {roles: [], orgs: any}\nmax_job_age_days: 366\n", "in 1..365"),
    ("age text", _FMT + "custom_code: {roles: [], orgs: any}\nmax_job_age_days: week\n", "expected an integer"),
    ("age bool", _FMT + "custom_code: {roles: [], orgs: any}\nmax_job_age_days: true\n", "max_job_age_days"),
]


@pytest.mark.parametrize(("days", "seconds"), [(None, 7 * 86400.0), (1, 86400.0), (365, 365 * 86400.0)])
def test_max_job_age(tmp_path: Path, days: int | None, seconds: float) -> None:
    extra = "" if days is None else f"max_job_age_days: {days}\n"
    policy = load_site_policy(_kit_with(tmp_path, _FMT + "custom_code: {roles: [lead], orgs: any}\n" + extra))
    assert policy.max_job_age == seconds


@pytest.mark.parametrize(("text", "message"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_policy_names_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(KitError, match=r"^kit site-9: local/site_policy\.yml: ") as info:
        load_site_policy(_kit_with(tmp_path, text))
    assert info.match(message)


def test_missing_file(tmp_path: Path) -> None:
    (tmp_path / "site-9" / "local").mkdir(parents=True)
    with pytest.raises(KitError, match=r"kit site-9: local/site_policy\.yml: missing"):
        load_site_policy(tmp_path / "site-9")


def test_oversized_file(tmp_path: Path) -> None:
    big = templates.SITE_POLICY_YML + "#" * limits.MAX_CONFIG_FILE_BYTES
    with pytest.raises(KitError, match="larger than the limit"):
        load_site_policy(_kit_with(tmp_path, big))


def test_symlinked_file_refused(tmp_path: Path) -> None:
    kit = _kit_with(tmp_path, templates.SITE_POLICY_YML)
    target = tmp_path / "elsewhere.yml"
    (kit / "local" / "site_policy.yml").rename(target)
    (kit / "local" / "site_policy.yml").symlink_to(target)
    with pytest.raises(KitError, match="missing or not a regular file"):
        load_site_policy(kit)
