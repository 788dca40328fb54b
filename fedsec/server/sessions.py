"""Admin sessions: single-use login challenges and idle-expiring session tokens.

A token is bound to the certificate identity that logged in: the same token
from another certificate is refused. Everything is in memory, so a server
restart logs every admin out (the shell then logs in again by itself).

Bounds are per identity, never global: an admin that asks for a thousand
challenges or logs in a thousand times evicts only its own oldest challenges
and sessions, so no admin (of the lowest role or any other) can lock another
out. Identities come from certificates the project CA issued, so the whole
table stays bounded too.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass

from cryptography import x509

from fedsec import limits
from fedsec.errors import AuthError, SessionExpiredError
from fedsec.pki import login
from fedsec.pki.certs import Identity

CHALLENGE_SECONDS = 60.0


@dataclass
class _Session:
    identity: Identity
    last_used: float


class AdminSessions:
    def __init__(self, server_name: str, idle_timeout: float) -> None:
        self._server = server_name
        self.idle_timeout = idle_timeout
        self._lock = threading.Lock()
        self._challenges: dict[bytes, tuple[Identity, float]] = {}
        self._sessions: dict[str, _Session] = {}

    def challenge(self, who: Identity) -> bytes:
        """A fresh single-use challenge for who; who's oldest is dropped past MAX_CHALLENGES_PER_ADMIN."""
        nonce = secrets.token_bytes(login.NONCE_BYTES)
        now = time.monotonic()
        with self._lock:
            self._challenges = {n: c for n, c in self._challenges.items() if c[1] > now}
            own = [n for n, c in self._challenges.items() if c[0] == who]  # oldest first: dicts keep order
            for old in own[: max(0, len(own) - limits.MAX_CHALLENGES_PER_ADMIN + 1)]:
                del self._challenges[old]
            self._challenges[nonce] = (who, now + CHALLENGE_SECONDS)
        return nonce

    def login(self, who: Identity, cert: x509.Certificate, nonce: bytes, signature: bytes) -> str:
        """Check the signed challenge; return a new session token. Raises AuthError."""
        with self._lock:
            entry = self._challenges.pop(nonce, None)  # single use, whatever the outcome
        if entry is None or entry[1] < time.monotonic() or entry[0] != who:
            raise AuthError("login: unknown or expired challenge")
        login.verify_login(cert, nonce, self._server, who.name, signature)
        token = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            self._sessions = {t: s for t, s in self._sessions.items() if now - s.last_used < self.idle_timeout}
            own = sorted((s.last_used, t) for t, s in self._sessions.items() if s.identity == who)
            for _, old in own[: max(0, len(own) - limits.MAX_SESSIONS_PER_ADMIN + 1)]:
                del self._sessions[old]  # who's least recently used session ends; nobody else's
            self._sessions[token] = _Session(who, now)
        return token

    def check(self, who: Identity, token: str) -> None:
        """Raise SessionExpiredError unless token is a live session of who; refresh its idle time."""
        now = time.monotonic()
        with self._lock:
            session = self._sessions.get(token)
            if session is None or session.identity != who:
                raise SessionExpiredError("not logged in (or the session expired): log in again")
            if now - session.last_used > self.idle_timeout:
                del self._sessions[token]
                raise SessionExpiredError(f"session expired after {self.idle_timeout:g} s idle: log in again")
            session.last_used = now
