#!/usr/bin/env bash
# The Debian guest kernel, unpacked for direct kernel boot (never installed on the host):
#   $CACHE/kernel/<VER>/{boot/vmlinuz-<VER>,lib/modules/<VER>/...}, depmod'ed,
#   $CACHE/kernel/current  -> one line: <VER>
# plus linux-headers-<VER> installed on the host, to build kmodule/ for the guest.
# The version is what linux-image-amd64 depends on today (resolved from apt, not hard-coded).
# Idempotent: a second run with the same version only checks the stamp.
set -euo pipefail
cache=${PCTELEPORT_CACHE:-/var/cache/pcteleport}

resolve_version() {
  apt-cache depends linux-image-amd64 2>/dev/null \
    | sed -n 's/^ *Depends: linux-image-\([0-9][^ ]*\)$/\1/p' | head -n1
}

ver=$(resolve_version)
if [ -z "$ver" ]; then
  apt-get update -qq
  ver=$(resolve_version)
fi
if [ -z "$ver" ]; then
  echo "10-guest-kernel: apt does not know linux-image-amd64; check /etc/apt/sources.list" >&2
  exit 1
fi

dir="$cache/kernel/$ver"
if [ ! -f "$dir/.complete" ]; then
  echo "setup: unpacking guest kernel $ver into $dir"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && apt-get -qq -o APT::Sandbox::User=root download "linux-image-$ver")
  rm -rf "$dir"
  mkdir -p "$dir"
  dpkg-deb -x "$work"/linux-image-"$ver"_*.deb "$dir"
  depmod -b "$dir" "$ver"
  touch "$dir/.complete"
fi

if ! dpkg-query -W -f='${Status}' "linux-headers-$ver" 2>/dev/null | grep -q "install ok installed"; then
  echo "setup: installing linux-headers-$ver (host side, to build kmodule/ for the guest)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "linux-headers-$ver" >/dev/null
fi

# Written last, so Python never finds a pointer to a half-unpacked kernel.
printf '%s\n' "$ver" > "$cache/kernel/current.tmp"
mv "$cache/kernel/current.tmp" "$cache/kernel/current"
