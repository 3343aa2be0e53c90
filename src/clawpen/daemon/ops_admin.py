"""Secrets and tokens: the contracts and handlers of the admin operations behind
``clawpen secrets`` and ``clawpen token`` (see :mod:`clawpen.ops`)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from clawpen.errors import UsageError
from clawpen.ops import Call, Contract, Empty, Operation, Reply, Request, Role
from clawpen.tokens import TokenStore
from clawpen.vault.store import Vault, check_user_name


class SecretsSetRequest(Request):
    SECRET: ClassVar[frozenset[str]] = frozenset({"value_b64"})

    name: str = Field(max_length=200)
    value_b64: str = Field(description="the value, base64 (never audited)")


class SecretName(Request):
    name: str = Field(max_length=200)


class TokenCreateRequest(Request):
    role: Role
    name: str = Field(default="", max_length=200)
    expires_in: float | None = Field(default=None, gt=0)


class TokenId(Request):
    id: str = Field(max_length=64)


class SecretSet(Reply):
    set: str


class SecretInfo(Reply):
    name: str
    set_at: float


class SecretValue(Reply):
    name: str
    value_b64: str = Field(description="the value, base64 (never audited)")


class SecretRemoved(Reply):
    removed: str


class TokenInfo(Reply):
    id: str
    role: str
    name: str
    created: float
    expires: float | None


class NewToken(TokenInfo):
    token: str = Field(description="the secret, shown once")


class TokenRevoked(Reply):
    revoked: str


def _token_audit(reply: Any) -> dict[str, Any]:
    return {"id": reply.get("id")}


SECRETS_SET = Contract("secrets_set", "admin", SecretsSetRequest, SecretSet, "store a secret in the vault")
SECRETS_LS = Contract("secrets_ls", "admin", Empty, list[SecretInfo], "the vault's secret names")
SECRETS_GET = Contract(
    "secrets_get", "admin", SecretName, SecretValue, "read a secret's value (audited by name)"
)
SECRETS_RM = Contract("secrets_rm", "admin", SecretName, SecretRemoved, "remove a secret")
TOKEN_CREATE = Contract(
    "token_create", "admin", TokenCreateRequest, NewToken, "make an API token", audit=_token_audit
)
TOKEN_LS = Contract("token_ls", "admin", Empty, list[TokenInfo], "the API tokens (never their secrets)")
TOKEN_REVOKE = Contract("token_revoke", "admin", TokenId, TokenRevoked, "revoke an API token")

CONTRACTS: tuple[Contract[Any], ...] = (
    SECRETS_SET,
    SECRETS_LS,
    SECRETS_GET,
    SECRETS_RM,
    TOKEN_CREATE,
    TOKEN_LS,
    TOKEN_REVOKE,
)


def operations(state_dir: Callable[[], Path]) -> list[Operation[Any]]:
    """The admin operations on the vault and the token store of ``state_dir()``."""

    async def secrets_set(req: SecretsSetRequest, _call: Call) -> SecretSet:
        try:
            value = base64.b64decode(req.value_b64, validate=True)
        except (binascii.Error, ValueError):
            raise UsageError("the secret's value is not base64", where="secrets_set.value_b64") from None
        check_user_name(req.name)
        Vault(state_dir()).set(req.name, value)
        return SecretSet(set=req.name)

    async def secrets_ls(_req: Empty, _call: Call) -> list[dict[str, Any]]:
        return [e._asdict() for e in Vault(state_dir()).entries()]

    async def secrets_get(req: SecretName, _call: Call) -> SecretValue:
        check_user_name(req.name)
        value = Vault(state_dir()).get(req.name)
        return SecretValue(name=req.name, value_b64=base64.b64encode(value).decode())

    async def secrets_rm(req: SecretName, _call: Call) -> SecretRemoved:
        Vault(state_dir()).remove(req.name)
        return SecretRemoved(removed=req.name)

    async def token_create(req: TokenCreateRequest, _call: Call) -> dict[str, Any]:
        token, secret = TokenStore(state_dir()).create(req.role, name=req.name, expires_in=req.expires_in)
        return {**token._asdict(), "token": secret}

    async def token_ls(_req: Empty, _call: Call) -> list[dict[str, Any]]:
        return [t._asdict() for t in TokenStore(state_dir()).list()]

    async def token_revoke(req: TokenId, _call: Call) -> TokenRevoked:
        TokenStore(state_dir()).revoke(req.id)
        return TokenRevoked(revoked=req.id)

    return [
        SECRETS_SET.bind(secrets_set),
        SECRETS_LS.bind(secrets_ls),
        SECRETS_GET.bind(secrets_get),
        SECRETS_RM.bind(secrets_rm),
        TOKEN_CREATE.bind(token_create),
        TOKEN_LS.bind(token_ls),
        TOKEN_REVOKE.bind(token_revoke),
    ]
