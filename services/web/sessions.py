"""Signed-in sessions and CSRF tokens, kept in this process's memory.

A person signs in with their API bearer token. The token stays on the server: the browser holds only a
random session id in an HttpOnly, SameSite=Strict cookie, so no script on the page, no URL and no log
line ever carries the token. Every state-changing request must also carry the session's CSRF token (a
form field or the ``X-CSRF-Token`` header), compared in constant time. Before sign-in, the sign-in form is
protected the same way by a token in a short-lived cookie of its own (double submit), so that another
site cannot sign a visitor in as someone else.

Sessions live in memory: a restart signs everyone out, and several replicas need session affinity.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from tire.v1 import common_pb2

SESSION_COOKIE = "tire_session"
SIGNIN_COOKIE = "tire_signin"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
SIGNIN_TTL_S = 3600


@dataclass(frozen=True)
class Session:
    """One signed-in person.

    Attributes:
        id: the cookie's value, 256 random bits.
        token: their API bearer token, sent to the coordinator on their behalf.
        principal: who the coordinator says they are (shown on the page).
        csrf: the token every state-changing request of this session must carry.
        expires_at: ``time.monotonic()`` deadline.
        uploads: the uploads it announced and has not submitted yet, oldest first: slot -> (the store's
            reference, its presigned PUT URL). The browser names slots, never URIs or URLs, so the
            console PUTs only where the API said and submits only what this session uploaded.
    """

    id: str
    token: str
    principal: str
    csrf: str
    expires_at: float
    uploads: OrderedDict[str, tuple[common_pb2.ObjectRef, str]] = field(default_factory=OrderedDict)

    def __repr__(self) -> str:  # never print the token
        return f"Session(principal={self.principal!r})"


class SessionBook:
    """The signed-in sessions: at most ``max_sessions``, each for ``ttl_s`` seconds. Thread-safe."""

    def __init__(self, ttl_s: float, max_sessions: int):
        self._ttl_s = ttl_s
        self._max = max_sessions
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def open(self, token: str, principal: str) -> Session:
        """A new session for ``token``; the oldest one is dropped when the book is full."""
        session = Session(
            id=secrets.token_urlsafe(32),
            token=token,
            principal=principal,
            csrf=secrets.token_urlsafe(32),
            expires_at=time.monotonic() + self._ttl_s,
        )
        with self._lock:
            self._sessions[session.id] = session
            while len(self._sessions) > self._max:
                self._sessions.popitem(last=False)
        return session

    def find(self, session_id: str | None) -> Session | None:
        """The live session with this id, or None (unknown, expired or signed out)."""
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and session.expires_at <= time.monotonic():
                del self._sessions[session_id]
                return None
            return session

    def close(self, session_id: str | None) -> None:
        """Sign out: the id no longer finds anything."""
        with self._lock:
            self._sessions.pop(session_id or "", None)

    def __len__(self) -> int:
        return len(self._sessions)


def same_token(expected: str, given: str | None) -> bool:
    """Whether ``given`` is the CSRF token ``expected``, in constant time; an empty one never is."""
    return bool(expected) and bool(given) and hmac.compare_digest(expected.encode(), given.encode())


def new_signin_token() -> str:
    return secrets.token_urlsafe(32)
