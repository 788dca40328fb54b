"""A site's own policy on which jobs it runs: local/site_policy.yml.

The file (format fedsec-site-policy/1, shipped signed in every site kit) says
which submitter roles, and optionally which organisations, may run jobs with
custom code on this site::

    format: fedsec-site-policy/1
    custom_code:
      roles: [project_admin, org_admin, lead]
      orgs: any            # or a list of organisation names
    max_job_age_days: 7    # optional: refuse to start a job signed longer ago (1..365; default 7)

Every fedsec job carries custom code (its training script), so the rule applies
to every job. load_site_policy() rejects unknown keys, unknown roles and unsafe
organisation names with a KitError naming the file and the key. SitePolicy.check()
judges the identity verify_archive() returned for a job's signer; it must never
be given a name the submitter merely states. The kit's signature over this file
is checked by fedsec.kit.load_kit(), which callers run first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsec import _fs, _schema, limits
from fedsec.errors import AuthError, ConfigError, KitError
from fedsec.kit import read_kit_yaml
from fedsec.pki.identity import Identity, Kind, Role

FORMAT = "fedsec-site-policy/1"
POLICY_FILE = "local/site_policy.yml"
ANY_ORG = "any"


@dataclass(frozen=True)
class _CustomCodeRule:
    roles: tuple[Role, ...]
    orgs: Any  # 'any' or a list of organisation names; checked by _orgs()


@dataclass(frozen=True)
class _PolicyFile:
    format: str
    custom_code: _CustomCodeRule
    max_job_age_days: int = limits.DEFAULT_JOB_MAX_AGE_DAYS


@dataclass(frozen=True)
class SitePolicy:
    """Who may run jobs (all of which have custom code) on this site."""

    roles: frozenset[Role]  # roles whose jobs may run here
    orgs: frozenset[str] | None  # organisations whose jobs may run here; None: any
    max_job_age: float = limits.DEFAULT_JOB_MAX_AGE_DAYS * 86400.0  # seconds: older signed jobs do not start

    def check(self, signer: Identity, site: str) -> None:
        """Raise AuthError unless a job signed by signer may run on site."""
        if signer.kind is not Kind.ADMIN or signer.role is None:
            raise AuthError(f"{site} policy: {signer.name!r} is not an admin and may not run jobs here")
        if signer.role not in self.roles:
            raise AuthError(f"{site} policy: role {signer.role.value} may not run jobs with custom code here")
        if self.orgs is not None and signer.org not in self.orgs:
            raise AuthError(f"{site} policy: org {signer.org} may not run jobs with custom code here")


def load_site_policy(kit_root: Path) -> SitePolicy:
    """Read kit_root/local/site_policy.yml.

    Raises KitError naming the file and the key when it is missing, too large,
    not YAML, or breaks the format.
    """
    where = f"kit {kit_root.name or kit_root}: {POLICY_FILE}"
    raw = read_kit_yaml(kit_root / POLICY_FILE, where)
    try:
        doc = _schema.build(_PolicyFile, raw, "")
    except ConfigError as exc:
        raise KitError(f"{where}: {exc}") from exc
    if doc.format != FORMAT:
        raise KitError(f"{where}: format: {doc.format!r} is not {FORMAT!r}")
    days = doc.max_job_age_days
    if isinstance(days, bool) or not 1 <= days <= limits.MAX_JOB_MAX_AGE_DAYS:
        raise KitError(
            f"{where}: max_job_age_days: {days!r} is not a whole number of days in 1..{limits.MAX_JOB_MAX_AGE_DAYS}"
        )
    orgs = _orgs(doc.custom_code.orgs, where)
    return SitePolicy(roles=frozenset(doc.custom_code.roles), orgs=orgs, max_job_age=days * 86400.0)


def _orgs(value: Any, where: str) -> frozenset[str] | None:
    key = "custom_code.orgs"
    if value == ANY_ORG:
        return None
    if not isinstance(value, list):
        raise KitError(f"{where}: {key}: expected 'any' or a list of organisation names, got {value!r}")
    if len(value) > limits.MAX_PARTICIPANTS:
        raise KitError(f"{where}: {key}: more than {limits.MAX_PARTICIPANTS} organisations")
    for i, org in enumerate(value):
        try:
            _fs.check_name(f"{key}[{i}]", org)
        except ConfigError as exc:
            raise KitError(f"{where}: {exc}") from exc
    return frozenset(value)
