"""The container tier: bots in Docker Engine or Podman containers, with clawpen's policy."""
