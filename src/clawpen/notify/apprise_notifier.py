"""The Apprise notifier: one Apprise URL (Telegram, Slack, Discord, email, ntfy, webhooks...)."""

from __future__ import annotations

import asyncio
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

    async def send(self, message: Message) -> None:
        loop = asyncio.get_running_loop()
        try:
            ok = await asyncio.wait_for(loop.run_in_executor(None, self._send, message), self.timeout)
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
