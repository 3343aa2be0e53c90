"""``clawpen validate``: hostile actions against a bot's policy, and a bot's release checks."""
