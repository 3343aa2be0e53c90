"""Shipping the bots' logs off the host (``[logs.ship]``, docs/logs.md): at least once, in order per
bot, to syslog over TLS (RFC 5424/5425) or systemd-journal-remote."""
