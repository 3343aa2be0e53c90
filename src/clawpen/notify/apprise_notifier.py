"""The Apprise notifier: one Apprise URL (Telegram, Slack, Discord, email, ntfy, webhooks...)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import warnings

from clawpen.notify.base import Message, NotifyFailed


def redact_url(url: str, index: int) -> str:
    """``tgram://TOKEN/CHAT`` -> ``tgram:// #1``: the scheme only, since tokens live anywhere."""
    scheme = url.split("://", 1)[0] if "://" in url else "?"
    return f"{scheme}:// #{index}"


class AppriseNotifier:
    """Sends through Apprise in a worker thread (Apprise's calls block)."""

    def __init__(self, url: str, index: int = 1, timeout: float = 15.0) -> None:
        self._url = url
        self._name = redact_url(url, index)
        self.timeout = timeout
        with warnings.catch_warnings():  # Apprise's plugins import deprecated modules (imghdr)
            warnings.simplefilter("ignore", DeprecationWarning)
            import apprise

            self._apprise = apprise.Apprise()
            added = self._apprise.add(url)
        if not added:
            raise ValueError(f"{self._name} is not a URL Apprise understands")

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"AppriseNotifier({self._name})"

    def _send(self, message: Message) -> bool:
        import apprise

        kind = {
            "critical": apprise.NotifyType.FAILURE,
            "warning": apprise.NotifyType.WARNING,
        }.get(message.severity, apprise.NotifyType.INFO)
        if message.kind == "resolved":
            kind = apprise.NotifyType.SUCCESS
        return bool(self._apprise.notify(body=message.body, title=message.title, notify_type=kind))

    async def _in_thread(self, message: Message) -> bool:
        """:meth:`_send` in a daemon thread of its own, not the loop's executor: a send that
        hangs (an SMTP server that never answers, Apprise's throttling) then holds none of the
        workers that start sandboxes, and never keeps a stopping daemon from exiting."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()

        def settle(ok: bool | None, err: BaseException | None) -> None:
            if done.done():
                return
            if err is not None:
                done.set_exception(err)
            else:
                done.set_result(bool(ok))

        def work() -> None:
            try:
                ok, err = self._send(message), None
            except Exception as exc:
                ok, err = None, exc
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
                loop.call_soon_threadsafe(settle, ok, err)

        threading.Thread(target=work, name="clawpen-notify", daemon=True).start()
        return await done

    async def send(self, message: Message) -> None:
        try:
            ok = await asyncio.wait_for(self._in_thread(message), self.timeout)
        except TimeoutError:
            raise NotifyFailed(f"{self._name}: no answer within {self.timeout:g}s") from None
        if not ok:
            raise NotifyFailed(f"{self._name}: delivery failed")


def notifiers_for(urls: list[str]) -> tuple[list[AppriseNotifier], list[str]]:
    """Notifiers for ``urls``; plus a message (without the URL) for each one Apprise rejects."""
    found: list[AppriseNotifier] = []
    bad: list[str] = []
    for i, url in enumerate(urls, 1):
        try:
            found.append(AppriseNotifier(url, i))
        except ValueError as err:
            bad.append(str(err))
    return found, bad
