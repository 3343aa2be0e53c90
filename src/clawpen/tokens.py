"""API tokens with roles: ``viewer`` (read), ``operator`` (start/stop/restart), ``admin`` (all).

A token is shown once, when it is created (``cpt_<id>_<secret>``); only its SHA-256 is stored, in
``<state>/tokens.json`` (mode 0600, written atomically). Root on the daemon's Unix socket is
admin without a token; a caller that sends a token gets that token's role, root included.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from clawpen.errors import AccessError, UsageError
from clawpen.fsutil import write_atomic

ROLES = ("viewer", "operator", "admin")


class Token(NamedTuple):
    id: str
    role: str
    name: str
    created: float
    expires: float | None


def role_allows(role: str, needed: str) -> bool:
    return ROLES.index(role) >= ROLES.index(needed)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenStore:
    def __init__(self, state: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = state / "tokens.json"
        self.clock = clock

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            data: dict[str, dict[str, Any]] = json.loads(self.path.read_text())
            return data
        except FileNotFoundError:
            return {}

    def _save(self, data: dict[str, dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self.path, json.dumps(data, indent=1, sort_keys=True).encode(), mode=0o600)

    def create(self, role: str, *, name: str = "", expires_in: float | None = None) -> tuple[Token, str]:
        """A new token and its secret (shown once; only its hash is kept)."""
        if role not in ROLES:
            raise UsageError(f"unknown role {role!r}", where="--role", hint=f"use one of {', '.join(ROLES)}")
        data = self._load()
        token_id = secrets.token_hex(4)
        secret = f"cpt_{token_id}_{secrets.token_urlsafe(24)}"
        now = self.clock()
        expires = None if expires_in is None else now + expires_in
        data[token_id] = {
            "hash": _digest(secret),
            "role": role,
            "name": name,
            "created": now,
            "expires": expires,
        }
        self._save(data)
        return Token(token_id, role, name, now, expires), secret

    def list(self) -> list[Token]:
        return [
            Token(k, v["role"], v.get("name", ""), v["created"], v.get("expires"))
            for k, v in sorted(self._load().items())
        ]

    def revoke(self, token_id: str) -> None:
        data = self._load()
        if data.pop(token_id, None) is None:
            raise UsageError(
                f"no token {token_id}", where="clawpen token revoke", hint="see `clawpen token ls`"
            )
        self._save(data)

    def check(self, secret: str) -> Token:
        """The token behind ``secret``, or AccessError (unknown, malformed or expired)."""
        parts = secret.split("_")
        entry = self._load().get(parts[1]) if len(parts) >= 3 and parts[0] == "cpt" else None
        if entry is None or not hmac.compare_digest(entry["hash"], _digest(secret)):
            raise AccessError(
                "the token is not valid", where="token", hint="create one with `clawpen token create`"
            )
        if entry.get("expires") is not None and self.clock() >= entry["expires"]:
            raise AccessError(f"token {parts[1]} has expired", where="token", hint="create a new one")
        return Token(parts[1], entry["role"], entry.get("name", ""), entry["created"], entry.get("expires"))


def caller_token() -> str | None:
    """The token the CLI sends, from ``CLAWPEN_TOKEN``."""
    return os.environ.get("CLAWPEN_TOKEN") or None
