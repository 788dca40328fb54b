"""Who a participant is: its kind, role and the Identity a verified certificate states.

Plain data, no cryptography: a process that only names kinds and roles (a site
parent's policy, a kit's config) imports this, never the X.509 code of
fedsec.pki.certs, which reads identities from certificates and re-exports these.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Kind(enum.Enum):
    SERVER = "server"
    CLIENT = "client"
    ADMIN = "admin"


class Role(enum.Enum):
    PROJECT_ADMIN = "project_admin"
    ORG_ADMIN = "org_admin"
    LEAD = "lead"
    MEMBER = "member"


@dataclass(frozen=True)
class Identity:
    """Who a verified certificate says its holder is."""

    name: str
    org: str
    kind: Kind
    role: Role | None = None
