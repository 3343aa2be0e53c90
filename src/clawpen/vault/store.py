"""The secret store: values encrypted with Fernet in ``<state>/secrets.json``.

The file maps each NAME to ``{"token": <Fernet token>, "set_at": <unix time>}`` and is replaced
atomically (mode 0600) on every change. The master key comes from, in order:

1. ``$CREDENTIALS_DIRECTORY/clawpen.key`` (a systemd credential, ``LoadCredential=``),
2. ``$CLAWPEN_MASTER_KEY`` (one Fernet key, or several separated by commas, newest first),
3. ``<state>/master.key``, created on first use with mode 0600; it may hold several keys, one a
   line, newest first. A key file readable or writable by group or other is refused.

Several keys form a :class:`~cryptography.fernet.MultiFernet`: the first encrypts, any decrypts.
A key that does not decrypt the stored secrets is an error that changes nothing on disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from clawpen.errors import ClawpenError, ConfigError, UsageError
from clawpen.fsutil import write_atomic

if TYPE_CHECKING:  # cryptography (OpenSSL, ~5 MB) is imported when a secret is read or written
    from cryptography.fernet import MultiFernet

SECRETS_FILE = "secrets.json"
KEY_FILE = "master.key"
LOCK_FILE = "secrets.lock"
CREDENTIAL_NAME = "clawpen.key"
ENV_KEY = "CLAWPEN_MASTER_KEY"
NAME_RE = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")
_GENERATE = "python3 -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"


class SecretInfo(NamedTuple):
    """A stored secret as ``secrets ls`` shows it: its name and when it was set (no value)."""

    name: str
    set_at: float


class _Keys(NamedTuple):
    fernet: MultiFernet
    raw: list[bytes]
    source: str  # for messages: where the key came from
    path: Path | None  # the key file, when the key comes from one clawpen manages


RESERVED_PREFIX = "CLAWPEN_"  # clawpen's own secrets (the snapshot repository's password)


def check_user_name(name: str) -> str:
    """:func:`check_name`, and not one of clawpen's own names: a user may not set, remove or
    hand a bot a ``CLAWPEN_*`` secret."""
    check_name(name)
    if name.startswith(RESERVED_PREFIX):
        raise UsageError(
            f"secret names starting with {RESERVED_PREFIX} are clawpen's own ({name})",
            where="secret name",
            hint="choose another name; clawpen keeps e.g. the snapshot repository's password there",
        )
    return name


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid secret name (``^[A-Z_][A-Z0-9_]{0,63}$``), else raise."""
    if not NAME_RE.fullmatch(name):
        raise UsageError(
            f"{name!r} is not a valid secret name",
            where="secret name",
            hint="use 1-64 upper-case letters, digits and _, not starting with a digit (e.g. API_TOKEN)",
        )
    return name


def _split_keys(text: str) -> list[bytes]:
    parts = (
        p.strip() for line in text.splitlines() if not line.lstrip().startswith("#") for p in line.split(",")
    )
    return [p.encode() for p in parts if p]


class Vault:
    """Encrypted secrets under one state directory. Holds no secret values itself."""

    def __init__(
        self,
        state_dir: Path,
        *,
        environ: Mapping[str, str] = os.environ,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / SECRETS_FILE
        self.key_path = self.state_dir / KEY_FILE
        self._environ = environ
        self._clock = clock

    def __repr__(self) -> str:
        return f"Vault({str(self.state_dir)!r})"

    # -- public API -------------------------------------------------------------------------

    def set(self, name: str, value: bytes) -> None:
        """Encrypt and store ``value`` under ``name``, replacing any earlier value."""
        check_name(name)
        if not isinstance(value, bytes):
            raise TypeError("secret values are bytes")
        with self._locked():
            data = self._load()
            keys = self._keys(create=not data)
            self._check_all(keys, data)
            token = keys.fernet.encrypt(value).decode()
            data[name] = {"token": token, "set_at": self._clock()}
            self._save(data)

    def get(self, name: str) -> bytes:
        """The value stored under ``name``; a :class:`ConfigError` when there is none."""
        return self.values_for([name])[name]

    def names(self) -> list[str]:
        """Every stored secret's name, sorted. Needs no key."""
        return sorted(self._load())

    def entries(self) -> list[SecretInfo]:
        """Every stored secret's name and set time, sorted by name. Needs no key."""
        return [SecretInfo(n, float(e["set_at"])) for n, e in sorted(self._load().items())]

    def remove(self, name: str) -> None:
        """Forget ``name``. Needs no key, so a secret set under a lost key can still be removed.
        clawpen's own secrets (``CLAWPEN_*``) are never removed."""
        check_user_name(name)
        with self._locked():
            data = self._load()
            if name not in data:
                raise UsageError(
                    f"no secret named {name}", where=str(self.path), hint="see `clawpen secrets ls`"
                )
            del data[name]
            self._save(data)

    def values_for(self, names: Iterable[str]) -> dict[str, bytes]:
        """Decrypt the named secrets; a :class:`ConfigError` names every one that is not set."""
        wanted = [check_name(n) for n in names]
        data = self._load()
        missing = [n for n in wanted if n not in data]
        if missing:
            raise ConfigError(
                f"secret{'s' if len(missing) > 1 else ''} not set: {', '.join(missing)}",
                where=str(self.path),
                hint="; ".join(f"clawpen secrets set {n}" for n in missing),
            )
        if not wanted:
            return {}
        keys = self._keys(create=False)
        return {n: self._decrypt(keys, n, data[n]["token"]) for n in wanted}

    def rotate_key(self) -> int:
        """Put a new key in the key file, re-encrypt every secret with it, drop the old keys.

        Every step leaves each secret readable: the key file first gets the new key *and* the old
        ones, then the secrets are rewritten under the new key, then the old keys are dropped.
        Returns how many secrets were re-encrypted.
        """
        with self._locked():
            data = self._load()
            keys = self._keys(create=not data)
            if keys.path is None:
                raise UsageError(
                    f"the master key comes from {keys.source}, which clawpen cannot rewrite",
                    where="clawpen secrets rotate-key",
                    hint=f"rotate-key manages {self.key_path}; to rotate an external key, put a new key "
                    f"first (NEW,OLD), re-set the secrets, then drop OLD",
                )
            self._check_all(keys, data)
            from cryptography.fernet import Fernet, MultiFernet

            new = Fernet.generate_key()
            both = [new, *keys.raw]
            self._write_keys(both)
            multi = MultiFernet([Fernet(k) for k in both])
            for entry in data.values():
                entry["token"] = multi.rotate(entry["token"].encode()).decode()
            self._save(data)
            self._write_keys([new])
            return len(data)

    # -- keys -------------------------------------------------------------------------------

    def _keys(self, *, create: bool) -> _Keys:
        cred_dir = self._environ.get("CREDENTIALS_DIRECTORY")
        if cred_dir and (Path(cred_dir) / CREDENTIAL_NAME).is_file():
            path = Path(cred_dir) / CREDENTIAL_NAME
            return self._fernet(_split_keys(path.read_text()), f"the systemd credential {path}", None)
        env = self._environ.get(ENV_KEY)
        if env:
            return self._fernet(_split_keys(env), f"${ENV_KEY}", None)
        if not self.key_path.exists():
            if not create:
                raise ClawpenError(
                    f"the master key file {self.key_path} is missing, so stored secrets cannot be decrypted",
                    where=str(self.path),
                    hint=f"restore {self.key_path} from a backup, or set ${ENV_KEY} to the key",
                )
            self._create_key_file()
        return self._fernet(self._read_key_file(), f"the key file {self.key_path}", self.key_path)

    def _fernet(self, raw: list[bytes], source: str, path: Path | None) -> _Keys:
        try:
            if not raw:
                raise ValueError("empty")
            from cryptography.fernet import Fernet, MultiFernet

            fernet = MultiFernet([Fernet(k) for k in raw])
        except ValueError:
            raise ConfigError(
                f"the master key from {source} is not a valid Fernet key",
                where=source,
                hint=f"a key is 32 url-safe base64-encoded bytes; make one with: {_GENERATE}",
            ) from None
        return _Keys(fernet, raw, source, path)

    def _create_key_file(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            return  # another process made it first; read theirs
        try:
            from cryptography.fernet import Fernet

            os.write(fd, Fernet.generate_key() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)

    def _read_key_file(self) -> list[bytes]:
        fd = os.open(self.key_path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_IMODE(mode) & 0o077:
                raise ClawpenError(
                    "the master key file is open to group or other "
                    f"(mode {stat.S_IMODE(mode):04o}); refusing to use it",
                    where=str(self.key_path),
                    hint=f"chmod 600 {self.key_path}",
                )
            with os.fdopen(os.dup(fd), "r") as f:
                return _split_keys(f.read())
        finally:
            os.close(fd)

    def _write_keys(self, keys: list[bytes]) -> None:
        write_atomic(self.key_path, b"".join(k + b"\n" for k in keys), mode=0o600)

    # -- secrets.json -----------------------------------------------------------------------

    def _decrypt(self, keys: _Keys, name: str, token: str) -> bytes:
        from cryptography.fernet import InvalidToken

        try:
            return keys.fernet.decrypt(token.encode())
        except InvalidToken:
            raise ClawpenError(
                f"cannot decrypt secret {name}: the master key does not match",
                where=str(self.path),
                hint=f"the key comes from {keys.source}; use the key the secrets were set with "
                f"(order: $CREDENTIALS_DIRECTORY/{CREDENTIAL_NAME}, ${ENV_KEY}, {self.key_path})",
            ) from None

    def _check_all(self, keys: _Keys, data: dict[str, dict[str, Any]]) -> None:
        """Refuse to write under a key that cannot read what is already stored."""
        for name, entry in data.items():
            self._decrypt(keys, name, entry["token"])

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(raw)
            ok = isinstance(data, dict) and all(
                isinstance(e, dict)
                and isinstance(e.get("token"), str)
                and isinstance(e.get("set_at"), int | float)
                for e in data.values()
            )
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(
                f"{self.path} is not a valid secret store",
                where=str(self.path),
                hint="restore it from a backup; it maps NAME to {token, set_at}",
            )
        return dict(data)

    def _save(self, data: dict[str, dict[str, Any]]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        text = json.dumps(data, indent=1, sort_keys=True) + "\n"
        write_atomic(self.path, text.encode(), mode=0o600)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
