"""The secret store: encrypted at rest, key file guarded, a wrong key changes nothing, rotation
keeps every secret readable."""

import base64
import json
import os
import stat

import pytest
from cryptography.fernet import Fernet, InvalidToken

from clawpen.errors import ClawpenError, ConfigError, UsageError
from clawpen.vault.store import Vault

VALUE = b"s3cr3t-value-xyz"


@pytest.fixture
def vault(tmp_path):
    return Vault(tmp_path, environ={})


def test_set_get_names_remove(vault):
    vault.set("API_TOKEN", VALUE)
    vault.set("DB_PASS", b"hunter22")
    assert vault.get("API_TOKEN") == VALUE
    assert vault.names() == ["API_TOKEN", "DB_PASS"]
    assert [e.name for e in vault.entries()] == ["API_TOKEN", "DB_PASS"]
    vault.set("API_TOKEN", b"replaced")
    assert vault.get("API_TOKEN") == b"replaced"
    vault.remove("DB_PASS")
    assert vault.names() == ["API_TOKEN"]
    with pytest.raises(UsageError):
        vault.remove("DB_PASS")


def test_values_for_names_every_missing_secret(vault):
    vault.set("A_KEY", VALUE)
    assert vault.values_for(["A_KEY"]) == {"A_KEY": VALUE}
    with pytest.raises(ConfigError) as err:
        vault.values_for(["A_KEY", "B_KEY", "C_KEY"])
    assert "B_KEY, C_KEY" in err.value.what
    assert "clawpen secrets set B_KEY" in (err.value.hint or "")


@pytest.mark.parametrize("name", ["lower", "1ABC", "A-B", "", "A" * 65])
def test_bad_names_are_usage_errors(vault, name):
    with pytest.raises(UsageError):
        vault.set(name, VALUE)


def test_values_are_not_stored_in_plaintext(vault, tmp_path):
    vault.set("API_TOKEN", VALUE)
    raw = (tmp_path / "secrets.json").read_bytes()
    for form in (VALUE, base64.b64encode(VALUE), base64.urlsafe_b64encode(VALUE).rstrip(b"=")):
        assert form not in raw
    assert set(json.loads(raw)["API_TOKEN"]) == {"token", "set_at"}
    assert stat.S_IMODE((tmp_path / "secrets.json").stat().st_mode) == 0o600


def test_key_file_created_0600(vault, tmp_path):
    vault.set("API_TOKEN", VALUE)
    key = tmp_path / "master.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    Fernet(key.read_bytes().strip())  # a valid key


def test_open_key_file_is_refused(vault, tmp_path):
    vault.set("API_TOKEN", VALUE)
    os.chmod(tmp_path / "master.key", 0o644)
    with pytest.raises(ClawpenError) as err:
        vault.get("API_TOKEN")
    assert "chmod 600" in (err.value.hint or "")
    assert VALUE.decode() not in str(err.value)


def test_wrong_key_is_a_clear_error_and_changes_nothing(vault, tmp_path):
    vault.set("API_TOKEN", VALUE)
    before = (tmp_path / "secrets.json").read_bytes()
    wrong = Vault(tmp_path, environ={"CLAWPEN_MASTER_KEY": Fernet.generate_key().decode()})
    with pytest.raises(ClawpenError) as err:
        wrong.get("API_TOKEN")
    assert "cannot decrypt secret API_TOKEN: the master key does not match" in err.value.what
    assert "CLAWPEN_MASTER_KEY" in (err.value.hint or "")
    with pytest.raises(ClawpenError):
        wrong.set("OTHER", b"other-value")
    with pytest.raises(ClawpenError):
        wrong.rotate_key()
    assert (tmp_path / "secrets.json").read_bytes() == before
    assert vault.get("API_TOKEN") == VALUE


def test_missing_key_file_loses_nothing(vault, tmp_path):
    vault.set("API_TOKEN", VALUE)
    before = (tmp_path / "secrets.json").read_bytes()
    (tmp_path / "master.key").unlink()
    for call in (lambda: vault.get("API_TOKEN"), lambda: vault.set("OTHER", b"other-value")):
        with pytest.raises(ClawpenError, match="master key file"):
            call()
    assert (tmp_path / "secrets.json").read_bytes() == before
    assert not (tmp_path / "master.key").exists()


def test_env_and_systemd_credential_keys(tmp_path):
    key = Fernet.generate_key()
    env_vault = Vault(tmp_path, environ={"CLAWPEN_MASTER_KEY": key.decode()})
    env_vault.set("API_TOKEN", VALUE)
    assert not (tmp_path / "master.key").exists()
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "clawpen.key").write_bytes(key + b"\n")
    cred_vault = Vault(tmp_path, environ={"CREDENTIALS_DIRECTORY": str(creds)})
    assert cred_vault.get("API_TOKEN") == VALUE
    with pytest.raises(UsageError):
        env_vault.rotate_key()


def test_invalid_env_key_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not a valid Fernet key"):
        Vault(tmp_path, environ={"CLAWPEN_MASTER_KEY": "nope"}).set("A_KEY", VALUE)


def test_rotate_key_keeps_secrets_and_retires_the_old_key(vault, tmp_path):
    secrets = {"API_TOKEN": VALUE, "DB_PASS": b"hunter22", "EMPTYISH": b"x"}
    for name, value in secrets.items():
        vault.set(name, value)
    old_key = (tmp_path / "master.key").read_bytes().strip()
    assert vault.rotate_key() == 3
    assert vault.values_for(secrets) == secrets
    keys = (tmp_path / "master.key").read_bytes().split()
    assert keys != [old_key]
    assert len(keys) == 1
    assert stat.S_IMODE((tmp_path / "master.key").stat().st_mode) == 0o600
    token = json.loads((tmp_path / "secrets.json").read_bytes())["API_TOKEN"]["token"]
    with pytest.raises(InvalidToken):
        Fernet(old_key).decrypt(token.encode())


def test_multi_key_file_decrypts_with_older_keys(vault, tmp_path):
    vault.set("API_TOKEN", VALUE)
    old = (tmp_path / "master.key").read_bytes()
    (tmp_path / "master.key").write_bytes(Fernet.generate_key() + b"\n" + old)
    assert vault.get("API_TOKEN") == VALUE


def test_value_never_in_repr(vault):
    vault.set("API_TOKEN", VALUE)
    assert VALUE.decode() not in repr(vault)


def test_clawpens_own_secrets_cannot_be_removed_set_by_users_or_given_to_a_bot(vault, tmp_path):
    from clawpen.spec.loader import load_spec
    from clawpen.vault.store import check_user_name

    vault.set("CLAWPEN_SNAPSHOT_PASSWORD", b"repo password")  # clawpen itself may
    with pytest.raises(UsageError, match="clawpen's own"):
        vault.remove("CLAWPEN_SNAPSHOT_PASSWORD")
    assert vault.get("CLAWPEN_SNAPSHOT_PASSWORD") == b"repo password"
    with pytest.raises(UsageError, match="clawpen's own"):
        check_user_name("CLAWPEN_ANYTHING")
    assert check_user_name("OPENAI_API_KEY") == "OPENAI_API_KEY"  # positive control
    vault.set("MY_KEY", b"x")
    vault.remove("MY_KEY")
    spec = tmp_path / "clawpen.toml"
    spec.write_text('[bots.a]\ncommand = ["true"]\nsecrets = ["CLAWPEN_SNAPSHOT_PASSWORD"]\n')
    with pytest.raises(ClawpenError) as err:
        load_spec(spec)
    assert "bots.a" in str(err.value.where) and "clawpen's own" in err.value.what
    spec.write_text('[bots.a]\ncommand = ["true"]\nsecrets = ["OPENAI_API_KEY"]\n')
    assert load_spec(spec) is not None
