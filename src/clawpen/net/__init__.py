"""Networking for bots: per-bot network namespaces and links, the egress gateway (proxy,
transparent interception, DNS), published ports, bandwidth shaping and the host firewall."""
