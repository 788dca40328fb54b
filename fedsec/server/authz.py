"""The server's authorization policy: local/authorization.yml.

The file (format fedsec-authorization/1, shipped signed in the server kit) gives
each admin role a scope for each right::

    format: fedsec-authorization/1
    roles:
      lead: {submit_job: any, clone_job: own_jobs, manage_job: own_jobs,
             download_job: own_jobs, view: any, operate: none}
      ...

Scopes: any (every job), own_org (jobs submitted from the admin's organisation),
own_jobs (jobs the admin submitted), none. A right not about one job (submitting,
listing) is allowed under own_org and own_jobs. Acting on sites (operate: remove,
enable, shut down, read their system info) is judged by the target sites'
organisations: own_org reaches only sites of the admin's org, own_jobs no site;
acting on the server itself, or on every site at once, needs scope any. Every
role must define every right, so nothing is allowed by a default nobody wrote down.

load_policy() rejects unknown keys, roles, rights and scopes with a KitError
naming the file and the key. Policy.authorize() judges the identity read from
the caller's verified certificate; it must never be given a name the caller
merely states. The kit's signature over this file is checked by
fedsec.kit.load_kit(), which the server runs first.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from fedsec import _schema
from fedsec.errors import AuthError, ConfigError, KitError
from fedsec.kit import read_kit_yaml
from fedsec.pki import certs

FORMAT = "fedsec-authorization/1"
POLICY_FILE = "local/authorization.yml"


class Right(enum.Enum):
    """What an admin may ask the server to do."""

    SUBMIT_JOB = "submit_job"
    CLONE_JOB = "clone_job"
    MANAGE_JOB = "manage_job"  # abort, delete
    DOWNLOAD_JOB = "download_job"
    VIEW = "view"  # list jobs, check status, list clients
    OPERATE = "operate"  # remove a client, shut down


class Scope(enum.Enum):
    """Which jobs a right covers for a role."""

    ANY = "any"
    OWN_ORG = "own_org"
    OWN_JOBS = "own_jobs"
    NONE = "none"


@dataclass(frozen=True)
class JobOwner:
    """What authorization needs to know about a job: who submitted it, from which org."""

    submitter: str
    submitter_org: str


@dataclass(frozen=True)
class _RoleRights:
    """One role's line of the file; every right is required."""

    submit_job: Scope
    clone_job: Scope
    manage_job: Scope
    download_job: Scope
    view: Scope
    operate: Scope


@dataclass(frozen=True)
class _PolicyFile:
    format: str
    roles: dict[certs.Role, _RoleRights]


class Policy:
    """The scope of every right for every admin role."""

    def __init__(self, scopes: Mapping[tuple[certs.Role, Right], Scope]) -> None:
        """scopes must hold every (role, right) pair; raises ValueError otherwise."""
        missing = [(role, right) for role in certs.Role for right in Right if (role, right) not in scopes]
        if missing:
            role, right = missing[0]
            raise ValueError(f"policy lacks the scope of {right.value} for role {role.value}")
        self._scopes = MappingProxyType(dict(scopes))

    def __repr__(self) -> str:
        return f"Policy({len(self._scopes)} scopes)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Policy) and dict(self._scopes) == dict(other._scopes)

    def __hash__(self) -> int:
        return hash(frozenset(self._scopes.items()))

    def scope(self, role: certs.Role, right: Right) -> Scope:
        """The scope role has for right."""
        return self._scopes[(role, right)]

    def _admin_scope(self, who: certs.Identity, right: Right) -> tuple[certs.Role, Scope]:
        if who.kind is not certs.Kind.ADMIN or who.role is None:
            raise AuthError(f"{who.kind.value} {who.name!r} is not an admin and may not {right.value}")
        scope = self.scope(who.role, right)
        if scope is Scope.NONE:
            raise AuthError(f"role {who.role.value} may not {right.value}")
        return who.role, scope

    def authorize_sites(self, who: certs.Identity, right: Right, site_orgs: Mapping[str, str] | None) -> None:
        """Raise AuthError unless who may exercise right on the sites named in site_orgs (name -> org).

        site_orgs None stands for the server itself or every site at once, which
        needs scope any. An org of "" (not known) matches no admin's org.
        """
        role, scope = self._admin_scope(who, right)
        if scope is Scope.ANY:
            return
        if site_orgs is None:
            raise AuthError(
                f"role {role.value} may not {right.value} the server or every site:"
                f" that needs {right.value} any, the role has {right.value} {scope.value}"
            )
        foreign = sorted((name, org) for name, org in site_orgs.items() if scope is Scope.OWN_JOBS or org != who.org)
        if foreign:
            name, org = foreign[0]
            raise AuthError(
                f"admin {who.name} ({role.value}) may not {right.value} site {name}"
                f" (org {org or 'unknown'}): role {role.value} has {right.value} {scope.value} only"
            )

    def authorize(self, who: certs.Identity, right: Right, job: JobOwner | None = None) -> None:
        """Raise AuthError unless who may exercise right (on job, when the right is about one).

        who must come from a verified certificate and be an admin with a role.
        """
        _, scope = self._admin_scope(who, right)
        if scope is Scope.ANY or job is None:
            return
        if scope is Scope.OWN_ORG and job.submitter_org == who.org:
            return
        if scope is Scope.OWN_JOBS and job.submitter == who.name:
            return
        role = who.role.value if who.role else "?"
        raise AuthError(
            f"admin {who.name} ({role}) may not {right.value} job of {job.submitter}"
            f" (org {job.submitter_org}): role {role} has {right.value} {scope.value} only"
        )


def load_policy(kit_root: Path) -> Policy:
    """Read kit_root/local/authorization.yml.

    Raises KitError naming the file and the key when it is missing, too large,
    not YAML, or breaks the format (an unknown or missing role, right or scope).
    """
    where = f"kit {kit_root.name or kit_root}: {POLICY_FILE}"
    raw = read_kit_yaml(kit_root / POLICY_FILE, where)
    try:
        doc = _schema.build(_PolicyFile, raw, "")
    except ConfigError as exc:
        raise KitError(f"{where}: {exc}") from exc
    if doc.format != FORMAT:
        raise KitError(f"{where}: format: {doc.format!r} is not {FORMAT!r}")
    for role in certs.Role:
        if role not in doc.roles:
            raise KitError(f"{where}: roles.{role.value}: required key is missing (every role needs every right)")
    return Policy(
        {(role, right): getattr(rights, right.value) for role, rights in doc.roles.items() for right in Right}
    )
