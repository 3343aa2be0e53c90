import json

import pytest

from clawpen.errors import AccessError, UsageError
from clawpen.tokens import TokenStore, role_allows


def test_token_is_stored_hashed_and_checks(tmp_path):
    store = TokenStore(tmp_path)
    token, secret = store.create("operator", name="ci")
    raw = (tmp_path / "tokens.json").read_text()
    assert secret not in raw and secret.split("_", 2)[2] not in raw
    assert (tmp_path / "tokens.json").stat().st_mode & 0o777 == 0o600
    assert store.check(secret).role == "operator"
    with pytest.raises(AccessError):
        store.check(secret + "x")
    with pytest.raises(AccessError):
        store.check("not-a-token")
    assert [t.id for t in store.list()] == [token.id]
    assert "hash" in json.loads(raw)[token.id]


def test_expiry_and_revoke(tmp_path):
    now = [1000.0]
    store = TokenStore(tmp_path, clock=lambda: now[0])
    token, secret = store.create("viewer", expires_in=60)
    assert store.check(secret).id == token.id
    now[0] += 61
    with pytest.raises(AccessError, match="expired"):
        store.check(secret)
    store.revoke(token.id)
    with pytest.raises(UsageError):
        store.revoke(token.id)
    with pytest.raises(UsageError):
        store.create("god")


def test_role_order():
    assert role_allows("admin", "operator") and role_allows("operator", "operator")
    assert not role_allows("viewer", "operator") and not role_allows("operator", "admin")
