"""Who calls the coordinator: bearer tokens, kept only as hashes, each naming a principal.

A client sends its token as the call metadata ``authorization: Bearer <token>`` (``tire`` reads
``TIRE_TOKEN`` or ``TIRE_TOKEN_FILE``). The coordinator knows tokens only by their sha256, one entry per
line of ``TIRE_COORDINATOR_TOKENS_FILE`` (a mounted Kubernetes Secret), or comma-separated in
``TIRE_COORDINATOR_TOKENS``::

    sha256:<64 hex digits: sha256 of the token's UTF-8 bytes> <principal> [admin]

``tire tokens new NAME`` makes a token and prints its entry. A principal owns the jobs it submits and
the files it uploads; ``admin`` sees every job. The file is read again when it changes (a Secret volume
is updated in place), so tokens rotate without a restart: add the new entry, hand out the new token,
remove the old entry. A file changed into something unreadable keeps the entries read before, so a
bad edit cannot lock everybody out.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass

import grpc

from services.common.config import file_stamp
from services.common.errors import ConfigError, Unauthenticated

log = logging.getLogger(__name__)

TOKEN_PREFIX = "tire_"
PRINCIPAL = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")
_ENTRY = re.compile(r"sha256:([0-9a-f]{64})\s+(\S+)(?:\s+(\S+))?")
_BEARER = re.compile(r"bearer\s+(\S+)", re.IGNORECASE)
_MAX_TOKEN_CHARS = 512


@dataclass(frozen=True)
class Caller:
    """The principal a call was authenticated as; ``admin`` sees and manages every principal's jobs."""

    principal: str
    admin: bool = False


def new_token() -> str:
    """A fresh random token: ``tire_`` and 43 URL-safe characters (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_entry(token: str, principal: str, admin: bool = False) -> str:
    """The line that lets ``token`` in as ``principal``: what goes into the tokens file."""
    if not PRINCIPAL.fullmatch(principal):
        raise ValueError(f"a principal is 1 to 64 characters of [a-z0-9._@-], got {principal!r}")
    digest = hashlib.sha256(token.encode()).hexdigest()
    return f"sha256:{digest} {principal}" + (" admin" if admin else "")


def parse_entries(lines: Iterable[str], source: str) -> dict[str, Caller]:
    """Token hashes to callers, from entry lines (blank lines and ``#`` comments skipped).

    Raises:
        ConfigError: a line that is not an entry, naming ``source`` and the line number (never its hash).
    """
    entries: dict[str, Caller] = {}
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = _ENTRY.fullmatch(line)
        role = match.group(3) if match else None
        if match is None or not PRINCIPAL.fullmatch(match.group(2)) or role not in (None, "admin"):
            raise ConfigError(
                f"{source} entry {number} must read `sha256:<64 hex digits> <principal> [admin]`, "
                "the principal 1 to 64 characters of [a-z0-9._@-] (tire tokens new NAME prints one)."
            )
        entries[match.group(1)] = Caller(match.group(2), admin=role == "admin")
    return entries


class TokenBook:
    """The tokens the coordinator accepts: inline entries plus those of a file followed for changes.

    Args:
        path: the tokens file ("" for none); read now and again whenever it changes.
        inline: entries separated by commas.

    Raises:
        ConfigError: neither source holds a valid entry, or an entry is malformed.
    """

    def __init__(self, path: str = "", inline: str = ""):
        self._path = path
        self._inline = parse_entries(inline.split(","), "TIRE_COORDINATOR_TOKENS")
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._from_file: dict[str, Caller] = {}
        if path:
            try:
                self._seen = file_stamp(path)
                with open(path, encoding="utf-8") as file:
                    self._from_file = parse_entries(file, path)
            except OSError as exc:
                raise ConfigError(f"cannot read the tokens file {path}: {exc.strerror}.") from None
        if not self._inline and not self._from_file and not path:
            raise ConfigError(
                "the coordinator accepts calls only with a bearer token, and none is configured: set "
                "TIRE_COORDINATOR_TOKENS_FILE or TIRE_COORDINATOR_TOKENS (tire tokens new NAME makes one)."
            )

    def caller(self, metadata: Iterable[tuple[str, str | bytes]]) -> Caller:
        """The caller that ``metadata`` (a call's invocation metadata) authenticates.

        Raises:
            Unauthenticated: no ``authorization`` metadata, not ``Bearer <token>``, or an unknown token.
        """
        values = [value for key, value in metadata if key.lower() == "authorization"]
        if not values:
            raise Unauthenticated(
                "this call carries no credential: send the metadata `authorization: Bearer <token>` "
                "(tire reads TIRE_TOKEN or TIRE_TOKEN_FILE)."
            )
        value = values[0] if isinstance(values[0], str) else ""
        match = _BEARER.fullmatch(value.strip()) if len(value) <= _MAX_TOKEN_CHARS else None
        if match is None:
            raise Unauthenticated("the `authorization` metadata must read `Bearer <token>`.")
        digest = hashlib.sha256(match.group(1).encode()).hexdigest()
        found = self._inline.get(digest) or self._current().get(digest)
        if found is None:
            raise Unauthenticated(
                "the bearer token is not valid here: unknown, revoked or rotated out. Ask for a new one."
            )
        return found

    def identify(self, context: grpc.ServicerContext) -> Caller:
        """The caller of a gRPC call (see ``caller``)."""
        return self.caller(context.invocation_metadata() or ())

    def _current(self) -> dict[str, Caller]:
        """The file's entries, read again when the file is a different one or changed since."""
        if not self._path:
            return {}
        with self._lock:
            try:
                seen: tuple[int, int, int] | None = file_stamp(self._path)
            except OSError:
                seen = None
            if seen != self._seen:
                self._seen = seen  # tried once per change: a broken file is not re-read on every call
                try:
                    with open(self._path, encoding="utf-8") as file:
                        self._from_file = parse_entries(file, self._path)
                    log.info("tokens file read again: %d entries", len(self._from_file))
                except (OSError, ConfigError) as exc:
                    # Keep the entries read before: a half-written file must not lock everybody out.
                    log.error("tokens file %s unreadable, keeping the entries before: %s", self._path, exc)
            return self._from_file
