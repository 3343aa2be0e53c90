"""Notifications: a Notifier protocol, the Apprise notifier, retries and a delivery record."""
