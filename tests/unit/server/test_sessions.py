"""Admin login challenges and sessions: bounded per identity, so no admin can lock another out."""

from __future__ import annotations

import pytest
from cryptography import x509

from fedsec import limits
from fedsec.errors import AuthError, SessionExpiredError
from fedsec.pki import certs, login
from fedsec.server.sessions import AdminSessions

SERVER = "server1"


Admin = tuple[certs.Identity, certs.PrivateKey, x509.Certificate]


@pytest.fixture(scope="module")
def admins() -> dict[str, Admin]:
    ca_key, ca_cert = certs.make_root("proj", 1)
    made = {}
    for name, role in (("boss@acme.org", certs.Role.PROJECT_ADMIN), ("member@acme.org", certs.Role.MEMBER)):
        key, cert = certs.issue(ca_key, ca_cert, certs.Identity(name, "acme", certs.Kind.ADMIN, role), 1)
        made[name] = (certs.identity_of(cert), key, cert)
    return made


def _login(sessions: AdminSessions, admin: Admin) -> str:
    who, key, cert = admin
    nonce = sessions.challenge(who)
    return sessions.login(who, cert, nonce, login.sign_login(key, nonce, SERVER, who.name))


def test_a_member_flooding_challenges_does_not_block_another_admin(admins: dict[str, Admin]) -> None:
    sessions = AdminSessions(SERVER, idle_timeout=600)
    member = admins["member@acme.org"][0]
    for _ in range(5000):
        sessions.challenge(member)
    token = _login(sessions, admins["boss@acme.org"])
    sessions.check(admins["boss@acme.org"][0], token)


def test_a_flooder_evicts_only_its_own_oldest_challenges(admins: dict[str, Admin]) -> None:
    sessions = AdminSessions(SERVER, idle_timeout=600)
    who, key, cert = admins["member@acme.org"]
    first = sessions.challenge(who)
    for _ in range(limits.MAX_CHALLENGES_PER_ADMIN):
        sessions.challenge(who)
    with pytest.raises(AuthError, match="unknown or expired challenge"):
        sessions.login(who, cert, first, login.sign_login(key, first, SERVER, who.name))
    last = sessions.challenge(who)
    sessions.check(who, sessions.login(who, cert, last, login.sign_login(key, last, SERVER, who.name)))


def test_many_logins_end_only_the_same_admins_oldest_sessions(admins: dict[str, Admin]) -> None:
    sessions = AdminSessions(SERVER, idle_timeout=600)
    boss = admins["boss@acme.org"]
    boss_token = _login(sessions, boss)
    member = admins["member@acme.org"]
    tokens = [_login(sessions, member) for _ in range(limits.MAX_SESSIONS_PER_ADMIN + 50)]
    sessions.check(boss[0], boss_token)  # untouched by the member's logins
    _login(sessions, boss)  # and new logins still work
    sessions.check(member[0], tokens[-1])
    with pytest.raises(SessionExpiredError):
        sessions.check(member[0], tokens[0])


def test_a_token_is_bound_to_its_identity(admins: dict[str, Admin]) -> None:
    sessions = AdminSessions(SERVER, idle_timeout=600)
    token = _login(sessions, admins["member@acme.org"])
    with pytest.raises(SessionExpiredError):
        sessions.check(admins["boss@acme.org"][0], token)
