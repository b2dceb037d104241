#!/usr/bin/env bash
# Installs everything pcteleport needs on Debian 12 (as root), idempotently:
# Debian packages, a virtualenv in .venv with the project and its test tools,
# then every step in scripts/setup.d/ (guest kernel, guest image, ...).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

APT_PACKAGES=(
  python3 python3-venv python3-dev python3-pip gcc make pkg-config
  qemu-system-x86 qemu-utils
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev dnsmasq-base
  busybox-static cpio kmod e2fsprogs dosfstools fdisk xfsprogs btrfs-progs
  openssh-server openssh-client iproute2 nftables iputils-ping
  tmux
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# A virtualenv of our own: the host's python3 (>= 3.11) with the project installed editable.
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.pcteleport-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing Python packages into .venv"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test]'
  touch "$stamp"
fi

for step in scripts/setup.d/*.sh; do
  [ -e "$step" ] || continue
  bash "$step"
done
