"""Who may call the API: the tokens file, read once at start and refused when anyone but its
owner could read or change it, the constant-time check of a presented token, and the browser
sessions a token opens for the review pages."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: 32 characters of a random token (e.g. `openssl rand -hex 32` gives 64) are beyond guessing.
TOKEN_MIN_CHARS = 32
_TOKEN_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_TOKEN = re.compile(r"[\x21-\x7e]+")


class TokensFileError(ValueError):
    """The tokens file is unsafe or unusable: the API does not start."""


@dataclass(frozen=True)
class Caller:
    """Who asked: the name of the token presented."""

    token_name: str

    @property
    def operator(self) -> str:
        """Where the command line names the OS user, the API names the token."""
        return f"api:{self.token_name}"

    def actor(self, tool: str) -> str:
        """A custody actor as the command line writes it, `qarina-<tool>@<operator>`."""
        return f"qarina-{tool}@{self.operator}"


@dataclass(frozen=True)
class ApiToken:
    name: str
    #: SHA-256 of the token: every comparison is of equal lengths, so timing cannot even
    #: tell a token's length.
    digest: bytes


def load_tokens(path: Path) -> tuple[ApiToken, ...]:
    """Read the tokens file, refusing one that anyone but its owner could read or change.

    Raises:
        TokensFileError: the file is open to group or others, owned by another user, empty,
            or holds a malformed line, a short token, or a name or token twice.
    """
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            if info.st_mode & 0o077:
                raise TokensFileError(
                    f"tokens file {path} is open to group or others"
                    f" (mode {info.st_mode & 0o777:o}): chmod 600 it"
                )
            if info.st_uid not in (os.geteuid(), 0):
                raise TokensFileError(
                    f"tokens file {path} belongs to another user: whoever owns it can add tokens"
                )
            text = handle.read().decode("utf-8")
    except OSError as error:
        raise TokensFileError(f"cannot read tokens file {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise TokensFileError(f"tokens file {path} is not UTF-8 text") from None
    tokens: dict[str, ApiToken] = {}
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if len(words) != 2 or not _TOKEN_NAME.fullmatch(words[0]) or not _TOKEN.fullmatch(words[1]):
            raise TokensFileError(
                f"tokens file {path}, line {number}: expected `name token` (name of letters,"
                " digits, `._-`; token of printable ASCII)"
            )
        name, token = words
        if len(token) < TOKEN_MIN_CHARS:
            raise TokensFileError(
                f"tokens file {path}, line {number}: the token of {name} is shorter than"
                f" {TOKEN_MIN_CHARS} characters"
            )
        digest = hashlib.sha256(token.encode("ascii")).digest()
        if name in tokens or any(known.digest == digest for known in tokens.values()):
            raise TokensFileError(f"tokens file {path}, line {number}: name or token repeated")
        tokens[name] = ApiToken(name, digest)
    if not tokens:
        raise TokensFileError(f"tokens file {path} holds no token")
    return tuple(tokens.values())


def token_owner(presented: bytes, tokens: Sequence[ApiToken]) -> str | None:
    """The name of the token presented, or None: every known token is compared, in constant
    time, whether or not an earlier one matched."""
    digest = hashlib.sha256(presented).digest()
    owner = None
    for token in tokens:
        if hmac.compare_digest(digest, token.digest):
            owner = token.name
    return owner


#: A browser's sign-in lasts a working day: long enough not to break off a review, short
#: enough that a session left open on a shared machine ends by itself.
SESSION_LIFETIME_S = 12 * 3600
#: Sessions held at once, the oldest dropped first: a token holder signing in without end
#: cannot make the service hold more than this (about 100 bytes each).
SESSIONS_MAX = 10_000


class BrowserSessions:
    """Sign-ins of reviewers' browsers to the review pages, which cannot send a bearer token.

    A sign-in is a random id (32 bytes, the cookie's value) mapped to the name of the token
    that opened it, until it expires or is closed. Only the id's SHA-256 is kept, so even
    this process's memory holds nothing a browser could present, and the memory alone holds
    them: a restart signs every browser out.
    """

    def __init__(
        self,
        lifetime_s: float = SESSION_LIFETIME_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lifetime_s = lifetime_s
        self._clock = clock
        self._lock = threading.Lock()
        #: SHA-256 of the id -> (owner, expiry on `clock`), oldest first.
        self._open: OrderedDict[bytes, tuple[str, float]] = OrderedDict()

    def open(self, owner: str) -> str:
        """A new session for `owner`: its id, for the cookie."""
        session_id = secrets.token_urlsafe(32)
        now = self._clock()
        with self._lock:
            for digest, (_, expires) in list(self._open.items()):
                if expires <= now:
                    del self._open[digest]
            while len(self._open) >= SESSIONS_MAX:
                self._open.popitem(last=False)
            self._open[_digest(session_id)] = (owner, now + self.lifetime_s)
        return session_id

    def owner(self, session_id: str) -> str | None:
        """Who the session is for; None for an unknown, closed or expired one."""
        with self._lock:
            found = self._open.get(_digest(session_id))
        if found is None or found[1] <= self._clock():
            return None
        return found[0]

    def close(self, session_id: str) -> None:
        with self._lock:
            self._open.pop(_digest(session_id), None)


def _digest(session_id: str) -> bytes:
    return hashlib.sha256(session_id.encode()).digest()
