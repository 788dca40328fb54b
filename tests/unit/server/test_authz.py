from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedsec import limits
from fedsec.errors import AuthError, KitError
from fedsec.kit import load_kit
from fedsec.pki import certs
from fedsec.provision import templates
from fedsec.server.authz import JobOwner, Policy, Right, Scope, load_policy

Role = certs.Role
ANY, ORG, OWN, NO = Scope.ANY, Scope.OWN_ORG, Scope.OWN_JOBS, Scope.NONE
RIGHTS = [Right.SUBMIT_JOB, Right.CLONE_JOB, Right.MANAGE_JOB, Right.DOWNLOAD_JOB, Right.VIEW, Right.OPERATE]

# The shipped policy, written out here rather than read from the template.
#              submit clone manage download view operate
DEFAULT_SCOPES = {
    Role.PROJECT_ADMIN: (ANY, ANY, ANY, ANY, ANY, ANY),
    Role.ORG_ADMIN: (NO, NO, ORG, ORG, ANY, ORG),
    Role.LEAD: (ANY, OWN, OWN, OWN, ANY, NO),
    Role.MEMBER: (NO, NO, NO, NO, ANY, NO),
}

ME = "me@b.org"
JOBS: dict[str, JobOwner | None] = {
    "no job": None,
    "own job": JobOwner(ME, "b"),
    "same-org job": JobOwner("other@b.org", "b"),
    "other-org job": JobOwner("x@c.org", "c"),
}
# Whether the default policy allows each (role, right) for the jobs above, in JOBS order:
# Y allowed, N refused. Spelled out case by case so the rules are checked, not re-derived.
DEFAULT_OUTCOMES = {
    Role.PROJECT_ADMIN: {r: "YYYY" for r in RIGHTS},
    Role.ORG_ADMIN: {
        Right.SUBMIT_JOB: "NNNN",
        Right.CLONE_JOB: "NNNN",
        Right.MANAGE_JOB: "YYYN",
        Right.DOWNLOAD_JOB: "YYYN",
        Right.VIEW: "YYYY",
        Right.OPERATE: "YYYN",
    },
    Role.LEAD: {
        Right.SUBMIT_JOB: "YYYY",
        Right.CLONE_JOB: "YYNN",
        Right.MANAGE_JOB: "YYNN",
        Right.DOWNLOAD_JOB: "YYNN",
        Right.VIEW: "YYYY",
        Right.OPERATE: "NNNN",
    },
    Role.MEMBER: {r: "YYYY" if r is Right.VIEW else "NNNN" for r in RIGHTS},
}


def _me(role: Role) -> certs.Identity:
    return certs.Identity(ME, "b", certs.Kind.ADMIN, role)


def _kit_with(tmp_path: Path, text: str | bytes) -> Path:
    kit = tmp_path / "server9"
    (kit / "local").mkdir(parents=True)
    (kit / "local" / "authorization.yml").write_bytes(text.encode() if isinstance(text, str) else text)
    return kit


@pytest.fixture
def shipped(prod: Path) -> Policy:
    load_kit(prod / "server1")  # the file is the signed one
    return load_policy(prod / "server1")


def test_shipped_policy_is_the_documented_default(shipped: Policy, tmp_path: Path) -> None:
    for role, scopes in DEFAULT_SCOPES.items():
        assert [shipped.scope(role, right) for right in RIGHTS] == list(scopes), role
    assert shipped == load_policy(_kit_with(tmp_path, templates.AUTHORIZATION_YML))
    assert shipped == Policy(
        {(role, r): s for role, ss in DEFAULT_SCOPES.items() for r, s in zip(RIGHTS, ss, strict=True)}
    )


MATRIX = [(role, right, job, i) for role, right in itertools.product(Role, RIGHTS) for i, job in enumerate(JOBS)]


@pytest.mark.parametrize(
    ("role", "right", "job", "index"), MATRIX, ids=[f"{r.value}-{g.value}-{j}" for r, g, j, _ in MATRIX]
)
def test_default_matrix(shipped: Policy, role: Role, right: Right, job: str, index: int) -> None:
    allowed = DEFAULT_OUTCOMES[role][right][index] == "Y"
    owner = JOBS[job]
    if allowed:
        shipped.authorize(_me(role), right, owner)
        return
    with pytest.raises(AuthError) as info:
        shipped.authorize(_me(role), right, owner)
    if shipped.scope(role, right) is Scope.NONE:
        assert str(info.value) == f"role {role.value} may not {right.value}"
    else:
        assert owner is not None
        assert str(info.value).startswith(f"admin {ME} ({role.value}) may not {right.value} job of {owner.submitter}")


def test_matrix_covers_every_case() -> None:
    assert len(MATRIX) == 4 * 6 * 4
    assert {r for r, *_ in MATRIX} == set(Role) and {g for _, g, *_ in MATRIX} == set(Right)


def test_own_jobs_is_by_name_and_own_org_by_org(tmp_path: Path) -> None:
    text = """format: fedsec-authorization/1
roles:
  project_admin: {submit_job: none, clone_job: none, manage_job: none, download_job: none, view: none, operate: none}
  org_admin: {submit_job: none, clone_job: none, manage_job: none, download_job: none, view: none, operate: none}
  lead: {submit_job: none, clone_job: none, manage_job: none, download_job: none, view: none, operate: none}
  member: {submit_job: own_org, clone_job: own_org, manage_job: own_jobs, download_job: own_jobs, view: own_org,
           operate: any}
"""
    policy = load_policy(_kit_with(tmp_path, text))
    member = _me(Role.MEMBER)
    policy.authorize(member, Right.VIEW, JobOwner("someone@b.org", "b"))
    policy.authorize(member, Right.SUBMIT_JOB)
    policy.authorize(member, Right.OPERATE, JobOwner("x@c.org", "c"))
    with pytest.raises(AuthError, match=r"may not view job of x@c.org \(org c\): role member has view own_org only"):
        policy.authorize(member, Right.VIEW, JobOwner("x@c.org", "c"))
    policy.authorize(member, Right.MANAGE_JOB, JobOwner(ME, "b"))
    with pytest.raises(AuthError, match="may not manage_job job of ME@b.org"):
        policy.authorize(member, Right.MANAGE_JOB, JobOwner("ME@b.org", "b"))  # names are exact
    with pytest.raises(AuthError, match="role project_admin may not view"):
        policy.authorize(_me(Role.PROJECT_ADMIN), Right.VIEW)


@pytest.mark.parametrize(
    "who",
    [
        certs.Identity("site-1", "b", certs.Kind.CLIENT),
        certs.Identity("server1", "b", certs.Kind.SERVER),
        certs.Identity(ME, "b", certs.Kind.ADMIN, None),
    ],
    ids=["site", "server", "admin without role"],
)
@pytest.mark.parametrize("right", RIGHTS, ids=[r.value for r in RIGHTS])
def test_non_admins_refused(shipped: Policy, who: certs.Identity, right: Right) -> None:
    with pytest.raises(AuthError, match=f"^{who.kind.value} '{who.name}' is not an admin and may not {right.value}"):
        shipped.authorize(who, right, JobOwner(who.name, who.org))


def test_policy_needs_every_pair() -> None:
    scopes = {(role, r): Scope.ANY for role in Role for r in RIGHTS}
    del scopes[(Role.LEAD, Right.OPERATE)]
    with pytest.raises(ValueError, match="operate for role lead"):
        Policy(scopes)


def _default_doc() -> dict[str, Any]:
    doc = yaml.safe_load(templates.AUTHORIZATION_YML)
    assert isinstance(doc, dict)
    return doc


def _edit(change: Callable[[dict[str, Any]], object]) -> str:
    doc = copy.deepcopy(_default_doc())
    change(doc)
    return yaml.safe_dump(doc)


def _set(path: str, value: object) -> Callable[[dict[str, Any]], object]:
    *parents, last = path.split(".")

    def change(doc: dict[str, Any]) -> None:
        node = doc
        for p in parents:
            node = node[p]
        node[last] = value

    return change


MALFORMED: list[tuple[str, str, str]] = [
    ("empty file", "", "document: expected a mapping"),
    ("not YAML", "roles: {lead: [\n", "invalid YAML at line"),
    ("wrong format", _edit(_set("format", "fedsec-authorization/2")), "format: 'fedsec-authorization/2' is not"),
    ("no format", _edit(lambda d: d.pop("format")), "format: required key is missing"),
    ("no roles", _edit(lambda d: d.pop("roles")), "roles: required key is missing"),
    ("roles a list", _edit(_set("roles", ["lead"])), "roles: expected a mapping, got a list"),
    ("unknown top key", _edit(_set("default", "none")), "default: unknown key"),
    ("missing role", _edit(lambda d: d["roles"].pop("member")), "roles.member: required key is missing"),
    ("unknown role", _edit(_set("roles.boss", {})), "roles.boss: 'boss' is not one of"),
    ("role not a mapping", _edit(_set("roles.lead", "any")), "roles.lead: expected a mapping, got a string"),
    (
        "missing right",
        _edit(lambda d: d["roles"]["lead"].pop("operate")),
        "roles.lead.operate: required key is missing",
    ),
    ("unknown right", _edit(_set("roles.org_admin.delete_job", "any")), "roles.org_admin.delete_job: unknown key"),
    ("bad scope", _edit(_set("roles.member.view", "all")), "roles.member.view: 'all' is not one of any, own_org"),
    (
        "scope a boolean",
        templates.AUTHORIZATION_YML.replace("view: any, operate: none", "view: no, operate: none", 1),
        "roles.lead.view: False is not",
    ),
    ("scope missing", _edit(_set("roles.member.view", None)), "roles.member.view: None is not one of"),
]


@pytest.mark.parametrize(("text", "message"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_policy_names_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(KitError, match=r"^kit server9: local/authorization\.yml: ") as info:
        load_policy(_kit_with(tmp_path, text))
    assert message in str(info.value)


def test_edit_helper_keeps_a_valid_policy_valid(tmp_path: Path) -> None:
    """The malformed table would pass for a wrong reason if every edited file were refused."""
    text = _edit(_set("roles.member.view", "own_org"))
    assert load_policy(_kit_with(tmp_path, text)).scope(Role.MEMBER, Right.VIEW) is Scope.OWN_ORG


def test_missing_file(tmp_path: Path) -> None:
    (tmp_path / "server9" / "local").mkdir(parents=True)
    with pytest.raises(KitError, match=r"kit server9: local/authorization\.yml: missing"):
        load_policy(tmp_path / "server9")


def test_oversized_file(tmp_path: Path) -> None:
    big = templates.AUTHORIZATION_YML + "#" * limits.MAX_CONFIG_FILE_BYTES
    with pytest.raises(KitError, match="larger than the limit"):
        load_policy(_kit_with(tmp_path, big))


# Acting on sites: each row is (role, sites named -> their orgs, or None for the server / every site), outcome.
SITE_CASES = [
    (Role.PROJECT_ADMIN, None, "Y"),
    (Role.PROJECT_ADMIN, {"site-c": "c"}, "Y"),
    (Role.ORG_ADMIN, {"site-b": "b"}, "Y"),
    (Role.ORG_ADMIN, {"site-b": "b", "site-b2": "b"}, "Y"),
    (Role.ORG_ADMIN, {}, "Y"),
    (Role.ORG_ADMIN, {"site-c": "c"}, "N"),
    (Role.ORG_ADMIN, {"site-b": "b", "site-c": "c"}, "N"),
    (Role.ORG_ADMIN, {"site-x": ""}, "N"),  # an org nobody knows is nobody's own
    (Role.ORG_ADMIN, None, "N"),  # the server, or every site at once
    (Role.LEAD, {"site-b": "b"}, "N"),
    (Role.MEMBER, {"site-b": "b"}, "N"),
]


@pytest.mark.parametrize(("role", "sites", "outcome"), SITE_CASES)
def test_operate_is_scoped_by_the_target_sites_org(
    shipped: Policy, role: Role, sites: dict[str, str] | None, outcome: str
) -> None:
    if outcome == "Y":
        shipped.authorize_sites(_me(role), Right.OPERATE, sites)
    else:
        with pytest.raises(AuthError, match="may not operate"):
            shipped.authorize_sites(_me(role), Right.OPERATE, sites)


def test_own_jobs_reaches_no_site() -> None:
    scopes = {(role, right): ANY for role in Role for right in Right}
    scopes[(Role.LEAD, Right.OPERATE)] = OWN
    policy = Policy(scopes)
    with pytest.raises(AuthError, match=r"may not operate site site-b \(org b\): role lead has operate own_jobs"):
        policy.authorize_sites(_me(Role.LEAD), Right.OPERATE, {"site-b": "b"})
    with pytest.raises(AuthError, match="the server or every site: that needs operate any"):
        policy.authorize_sites(_me(Role.LEAD), Right.OPERATE, None)


def test_a_site_cannot_operate(shipped: Policy) -> None:
    site = certs.Identity("site-b", "b", certs.Kind.CLIENT)
    with pytest.raises(AuthError, match="is not an admin"):
        shipped.authorize_sites(site, Right.OPERATE, {"site-b": "b"})
