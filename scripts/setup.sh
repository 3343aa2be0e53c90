#!/usr/bin/env bash
# Installs what clawpen needs on a Debian/Ubuntu host (as root) and builds .venv.
# Idempotent and quick when everything is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(bubblewrap libseccomp2 python3 python3-venv python3-pip ca-certificates procps util-linux iproute2
  nftables restic)
# For the test suite: systemd-analyze checks the daemon's hardened unit offline; iperf3 measures
# shaping; Prometheus (and promtool) scrapes /metrics and checks exported rules; Chromium is driven
# by Playwright for the dashboard.
# The container tier's tests: Docker Engine (the tests start dockerd; not here), debootstrap for
# the locally built base image (no registry), a static busybox (the start gate), gcc and libc6-dev
# (the static seccomp loader, built once), docker-compose for the exported file; Podman (the tests
# start its Docker-compatible API service) with catatonit, its --init. The VM tier's: QEMU.
# Failover (cluster) tests: etcd (the tests start a 3-member cluster in a network namespace).
# The login audit's tests: systemd-journal-remote writes a test journal from export format; the
# prepared-host audit's: openssh-client's ssh-keygen (the operator's key; the Debian root the
# tests build with debootstrap has its own sshd and Lynis). `clawpen report`'s: graphviz (dot draws
# the topology) and poppler-utils (pdftotext and pdfinfo check the printed PDF). Log shipping's:
# rsyslog with its GnuTLS driver (rsyslog-gnutls; a TLS listener the tests start) and
# systemd-journal-remote.
[ "${CLAWPEN_DEV:-0}" = 1 ] && APT_PACKAGES+=(systemd iperf3 prometheus chromium docker.io debootstrap busybox-static
  gcc libc6-dev docker-compose podman catatonit qemu-system-x86 etcd-server etcd-client keepalived
  systemd-journal-remote openssh-client graphviz poppler-utils rsyslog rsyslog-gnutls)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup: clawpen needs Python >= 3.11; found $("$PY" --version 2>&1)" >&2
  exit 1
fi

stamp=".venv/.clawpen-lock-$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -e "$stamp" ]; then
  echo "setup: building .venv from requirements.lock"
  rm -rf .venv
  "$PY" -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.lock
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
  touch "$stamp"
fi
# Byte-compile (a no-op when up to date): `clawpen run` should not compile its modules on every
# start, and PYTHONDONTWRITEBYTECODE may be set.
.venv/bin/python -m compileall -q src >/dev/null
