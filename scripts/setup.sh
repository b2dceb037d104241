#!/usr/bin/env bash
# Installs everything pcteleport needs on Debian 12 (as root), idempotently:
# Debian packages, a virtualenv in .venv with the project and its test tools,
# then every step in scripts/setup.d/ (guest kernel, guest image, ...).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

# gnutls-bin: certtool, which makes the lab's TLS migration certificates (console/lab/tls.py);
# tcpdump: the lab test that looks for guest memory on the WAN (tests/test_wan_tls_lab.py)
APT_PACKAGES=(
  python3 python3-venv python3-dev python3-pip gcc make pkg-config dnsmasq-base
  busybox-static cpio kmod e2fsprogs dosfstools fdisk xfsprogs btrfs-progs
  openssh-server openssh-client iproute2 nftables iputils-ping
  tmux gnutls-bin tcpdump
)
# The engine. By default QEMU 10.0 / libvirt 11.3 from bookworm-backports: Debian 12's own QEMU
# 7.2 loses dirty pages when it migrates TCG guests (fixed upstream in 9.0, commit 03bfc2188f),
# and the lab runs TCG. PCTELEPORT_ENGINE=debian12 keeps Debian 12's QEMU 7.2 / libvirt 9.0
# (fine for KVM hosts; the console warns before migrating a TCG guest on it).
ENGINE_PACKAGES=(
  qemu-system-x86 qemu-system-common qemu-system-data qemu-utils
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev
)
engine=${PCTELEPORT_ENGINE:-backports}
case "$engine" in
  backports|debian12) ;;
  *) echo "setup: PCTELEPORT_ENGINE must be backports or debian12, not '$engine'" >&2; exit 2 ;;
esac

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
apt_updated=
apt_update() { [ -n "$apt_updated" ] || { apt-get update -qq; apt_updated=1; }; }

# apt_install WHAT PKG...: install the packages named (none: nothing to do), saying what they are
apt_install() {
  local what=$1; shift
  [ $# -gt 0 ] || return 0
  echo "setup: installing $what: $*"
  apt_update
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
missing_of() { for p in "$@"; do installed "$p" || echo "$p"; done; }

# shellcheck disable=SC2046 # package names have no spaces
apt_install "Debian packages" $(missing_of "${APT_PACKAGES[@]}")

if [ "$engine" = backports ]; then
  # The backports suite from the same mirror as the machine's bookworm entry. Only the engine's
  # packages are named with their suite, so their dependencies still come from bookworm
  # (-t bookworm-backports would pull systemd, udev and mesa from backports onto the host).
  src=/etc/apt/sources.list.d/pcteleport-backports.sources
  if [ ! -f "$src" ]; then
    uri=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null \
      | awk '$2 == "bookworm" {print $1; exit}')
    [ -n "$uri" ] || uri=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources \
      2>/dev/null | head -n1)
    [ -n "$uri" ] || { echo "setup: no bookworm apt source to take the mirror from" >&2; exit 1; }
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: %s\n' \
      "$uri" /usr/share/keyrings/debian-archive-keyring.gpg > "$src"
    apt_updated=
  fi
  want=()
  for p in "${ENGINE_PACKAGES[@]}"; do
    v=$(dpkg-query -W -f='${Version}' "$p" 2>/dev/null || true)
    case "$v" in *bpo12*) installed "$p" && continue ;; esac
    want+=("$p/bookworm-backports")
  done
  # seabios >= 1.16.3: QEMU 10's BIOS. It and qemu-system-common/-data are named because apt's
  # resolver keeps bookworm's candidates for them and then gives up ("held broken packages").
  case "$(dpkg-query -W -f='${Version}' seabios 2>/dev/null || true)" in
    *bpo12*) ;; *) want+=("seabios/bookworm-backports") ;;
  esac
  apt_install "QEMU 10 / libvirt 11 from bookworm-backports" "${want[@]}"
else
  # shellcheck disable=SC2046
  apt_install "Debian 12's QEMU 7.2 / libvirt 9.0" $(missing_of "${ENGINE_PACKAGES[@]}")
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
