"""One typed contract per daemon operation, and the registry that runs them.

An operation is declared once, as a :class:`Contract` next to the code of its area (the daemon's
bot operations in ``daemon/ops_bots.py``, secrets and tokens in ``daemon/ops_admin.py``, the
API's views in ``daemon/ops_views.py``, ``metrics/ops.py``, ``net/ops.py``): its name, the least
role it needs, a pydantic ``Request`` model of its arguments and the type of its reply. The part
of clawpen that serves it binds a handler (``contract.bind(handler)`` -> :class:`Operation`) and
adds it to the daemon's :class:`Registry`. Everything else derives from that one declaration:

* the Unix socket and the HTTP API both run operations through ``Daemon.dispatch``, which
  looks the operation up here, checks the caller's role against ``role``, validates the
  arguments (a bad one is a :class:`~clawpen.errors.UsageError` naming its field: exit 2,
  HTTP 400), runs the handler, checks its reply against ``response`` and audits what changes;
* any exception a handler did not raise on purpose (not a ``ClawpenError``) is a bug: its
  traceback goes to the daemon's log (stderr, ``<state>/daemon.log``) and the caller gets a
  short :class:`~clawpen.errors.InternalError` (exit 1, HTTP 500), never "bad request";
* the HTTP routes (api/routes.py) take their ``response_model`` and role from the contract.

This module is a leaf (pydantic and clawpen.errors only), so every area may declare contracts.
"""

from __future__ import annotations

import asyncio
import sys
import traceback
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, Generic, Literal, NamedTuple, TextIO, TypeVar

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from clawpen.errors import ClawpenError, InternalError, UsageError

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")


class Request(BaseModel):
    """The arguments of an operation. A key the operation does not know is refused, so a typo
    names its field instead of being ignored."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    # fields never written to the audit log (a secret's value)
    SECRET: ClassVar[frozenset[str]] = frozenset()


class Reply(BaseModel):
    """A reply's declared fields are checked; a key beyond them still travels, so a newer
    daemon's reply never breaks an older client's reading of it."""

    model_config = ConfigDict(extra="allow")


class Empty(Request):
    """No arguments."""


class Call(NamedTuple):
    """Who runs an operation, and (on the Unix socket only) the connection its streamed items
    go to: ``writer`` is None for the HTTP API and for calls inside the daemon."""

    who: str
    writer: asyncio.StreamWriter | None = None


Req = TypeVar("Req", bound=Request)
Handler = Callable[[Req, Call], Awaitable[Any]]


def _field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "arguments"


def bad_request(op: str, err: ValidationError) -> UsageError:
    """A UsageError naming each field of ``op``'s arguments that failed (the first three)."""
    problems = err.errors(include_url=False)
    first = _field_path(tuple(problems[0]["loc"]))
    text = "; ".join(f"{_field_path(tuple(p['loc']))}: {p['msg']}" for p in problems[:3])
    more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
    return UsageError(
        f"bad argument for operation {op}: {text}{more}",
        where=f"{op}.{first}",
        hint="are the CLI and the daemon the same clawpen version?",
    )


@dataclass(frozen=True, eq=False)
class Contract(Generic[Req]):
    """What an operation is, independent of who serves it.

    ``response``: a type pydantic validates (a :class:`Reply` model, ``list[Model]``,
    ``dict[str, ...]``). ``streaming``: with a socket connection the handler sends items
    (``rpc.item``) before its reply (``events --follow``, ``up``'s progress). ``audit``: extra
    detail for the audit log, taken from the reply (the release of an ``up``)."""

    name: str
    role: Role
    request: type[Req]
    response: Any
    summary: str
    streaming: bool = False
    audit: Callable[[Any], Mapping[str, Any]] | None = None

    @cached_property
    def adapter(self) -> TypeAdapter[Any]:
        return TypeAdapter(self.response)

    def parse(self, args: Mapping[str, Any]) -> Req:
        """The validated arguments; UsageError (exit 2) naming the field otherwise."""
        if not isinstance(args, Mapping):
            raise UsageError(f"the arguments of operation {self.name} are not an object", where=self.name)
        try:
            return self.request.model_validate(dict(args))
        except ValidationError as err:
            raise bad_request(self.name, err) from None

    def reply(self, result: Any) -> Any:
        """``result`` checked against ``response``, as JSON-ready data (raises ValidationError
        on a reply that breaks the contract: a bug of the handler)."""
        return self.adapter.dump_python(self.adapter.validate_python(result), mode="json")

    def audit_detail(self, request: Request, reply: Any) -> dict[str, Any]:
        """What the audit log keeps of a call: its arguments but secrets, and ``audit``'s extra."""
        detail = request.model_dump(
            mode="json", by_alias=True, exclude_unset=True, exclude=set(request.SECRET)
        )
        if self.audit is not None:
            detail.update(self.audit(reply))
        return detail

    def bind(self, handler: Handler[Req]) -> Operation[Req]:
        return Operation(self, handler)


@dataclass(frozen=True, eq=False)
class Operation(Generic[Req]):
    """A contract with the handler that serves it."""

    contract: Contract[Req]
    handler: Handler[Req]

    @property
    def name(self) -> str:
        return self.contract.name

    @property
    def role(self) -> Role:
        return self.contract.role


class Registry:
    """The operations a daemon serves, by name (one set for the socket and the HTTP API)."""

    def __init__(self, log: TextIO | None = None) -> None:
        self._ops: dict[str, Operation[Any]] = {}
        self.log = log  # where tracebacks go (None: stderr, which is daemon.log for a started daemon)

    def add(self, ops: Iterable[Operation[Any]]) -> None:
        """Register operations; a name registered twice is a bug (ValueError)."""
        ops = list(ops)
        names = [op.name for op in ops]
        clash = {n for n in names if n in self._ops or names.count(n) > 1}
        if clash:
            raise ValueError(f"operations registered twice: {sorted(clash)}")
        self._ops.update((op.name, op) for op in ops)

    def get(self, name: str) -> Operation[Any] | None:
        return self._ops.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._ops

    def names(self) -> list[str]:
        return sorted(self._ops)

    def require(self, name: str) -> Operation[Any]:
        op = self._ops.get(name)
        if op is None:
            raise UsageError(
                f"unknown operation {name!r}",
                where="daemon",
                hint="are the CLI and the daemon the same clawpen version?",
            )
        return op

    async def run(self, op: Operation[Req], request: Req, call: Call) -> Any:
        """Run ``op``'s handler and check its reply. A ClawpenError passes as it is; any other
        exception (in the handler, or a reply that breaks the contract) is logged with its
        traceback and raised as a short InternalError."""
        try:
            return op.contract.reply(await op.handler(request, call))
        except ClawpenError:
            raise
        except Exception as err:
            raise self.internal(op.name, call.who, err) from None

    def internal(self, name: str, who: str, err: BaseException) -> InternalError:
        """Log ``err``'s traceback and return what the caller is told instead."""
        out = self.log or sys.stderr
        text = "".join(traceback.format_exception(err))
        print(
            f"clawpen daemon: internal error in operation {name} (called by {who}):\n{text}",
            file=out,
            flush=True,
        )
        return InternalError(
            f"internal error in operation {name}: {type(err).__name__} (a bug in clawpen, not your input)",
            where="daemon",
            hint="the traceback is in the daemon's log (<state>/daemon.log, or `journalctl -u clawpen`); "
            "please report it",
        )
