"""The shell programs that run first inside a pcteleport guest (busybox `sh`, as text).

Three pieces, shared by the stage-1 initramfs and the Debian root filesystem:
- FUNCTIONS: helpers both inits source (udev-like /dev links, virtio-serial ports by name,
  the command shell on the `pcteleport.shell` port).
- STAGE1_INIT: /init of the initramfs: loads the virtio/ext4 modules (the Debian kernel has them
  as modules), then runs /scenario or switch_roots into the root disk.
- ROOT_INIT: /sbin/pcteleport-init, PID 1 of the Debian root: loads the pcteleport kernel module,
  starts the guest agent on its virtio-serial port, runs the scenario hook.

Lines the host waits for on the serial console (see MARKERS) all start with "PCTELEPORT-".
"""

from __future__ import annotations

# Marker lines printed on the serial console, for harnesses and the lab to wait on.
MARKERS = {
    "ready": "PCTELEPORT-READY",  # agent and shell (if their ports exist) are being served
    "scenario_exit": "PCTELEPORT-SCENARIO-EXIT",  # followed by the hook's exit status
    "failed": "PCTELEPORT-FAILED",  # followed by the reason; the guest powers off
    "module": "PCTELEPORT-MODULE",  # "loaded" or "missing ..."
    "agent": "PCTELEPORT-AGENT",  # "started PORT" or "absent"
}

# Names of the virtio-serial ports the guest looks for (the host decides which exist).
AGENT_PORT = "pcteleport.agent"
SHELL_PORT = "pcteleport.shell"

# The command-shell protocol on SHELL_PORT: the host writes "<id> <base64 script>\n"; the guest
# runs the script with sh, writes its stdout+stderr, then "\n__PCT_DONE__ <id> <status>\n".
SHELL_DONE = "__PCT_DONE__"

FUNCTIONS = r"""
# Sourced by /init (stage 1) and /sbin/pcteleport-init (root).

pct_arg() {  # value of "name=value" on the kernel command line, or $2
	for a in $(cat /proc/cmdline); do
		case "$a" in "$1="*) echo "${a#*=}"; return 0;; esac
	done
	[ -n "$2" ] && echo "$2"
	return 0
}

pct_dev_links() {  # what udev would make: /dev/disk/by-id/virtio-SERIAL[-partN], virtio-ports
	mkdir -p /dev/disk/by-id /dev/virtio-ports
	for b in /sys/block/vd*; do
		[ -e "$b" ] || continue
		d=${b##*/}
		s=$(cat "$b/serial" 2>/dev/null)
		[ -n "$s" ] || continue
		ln -sf "../../$d" "/dev/disk/by-id/virtio-$s"
		for p in "$b/$d"*; do
			[ -e "$p/partition" ] || continue
			ln -sf "../../${p##*/}" "/dev/disk/by-id/virtio-$s-part$(cat "$p/partition")"
		done
	done
	for p in /sys/class/virtio-ports/*; do
		[ -e "$p/name" ] || continue
		n=$(cat "$p/name")
		[ -n "$n" ] && ln -sf "../${p##*/}" "/dev/virtio-ports/$n"
	done
}

pct_wait_disk() {  # pct_wait_disk SPEC -> device path; SPEC is serial:NAME or /dev/...
	case "$1" in
	serial:*) want="/dev/disk/by-id/virtio-${1#serial:}";;
	*) want="$1";;
	esac
	i=0
	while [ ! -b "$want" ] && [ $i -lt 50 ]; do
		sleep 0.1; pct_dev_links; i=$((i + 1))
	done
	[ -b "$want" ] && echo "$want"
}

pct_port() {  # device of the virtio-serial port named $1, if the host gave us one
	for p in /sys/class/virtio-ports/*; do
		[ -e "$p/name" ] || continue
		[ "$(cat "$p/name")" = "$1" ] && { echo "/dev/${p##*/}"; return 0; }
	done
	return 1
}

pct_shell_serve() {  # run the host's scripts from port $1 (see guestinit.py); never returns
	exec 3<>"$1"
	while :; do
		if IFS= read -r line <&3; then
			id=${line%% *}
			echo "${line#* }" | base64 -d >/tmp/.pct-cmd 2>/dev/null
			sh /tmp/.pct-cmd </dev/null >&3 2>&1
			rc=$?
			echo "" >&3
			echo "__PCT_DONE__ $id $rc" >&3
		else
			sleep 0.2  # host not connected: reads return EOF at once
		fi
	done
}

pct_fail() {
	echo "PCTELEPORT-FAILED $*"
	sync
	poweroff -f
}
"""

STAGE1_INIT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /newroot /usr/bin /usr/sbin /sbin
/bin/busybox --install -s
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r m; do
	insmod "/modules/$m" 2>/dev/null || case "$m" in
		*-intel.ko) ;;  # CPU-specific accelerations may not fit the emulated CPU
		*) echo "pcteleport stage-1: insmod $m failed";;
	esac
done </modules/order
. /lib/pcteleport/functions.sh
pct_dev_links

root=$(pct_arg pct.root)
if [ -n "$root" ] && [ ! -x /scenario ]; then
	dev=$(pct_wait_disk "$root")
	[ -n "$dev" ] || pct_fail "root disk $root not found"
	opts=ro
	[ "$(pct_arg pct.rootrw 0)" = 1 ] && opts=rw
	mount -t "$(pct_arg pct.rootfstype ext4)" -o "$opts" "$dev" /newroot \
		|| pct_fail "cannot mount root $dev"
	init=$(pct_arg pct.init /sbin/pcteleport-init)
	for d in dev proc sys; do
		mount --move "/$d" "/newroot/$d" || pct_fail "cannot move /$d into the root"
	done
	exec switch_root /newroot "$init"
fi

# Stage-1 only: a command shell (if the host gave us the port), then the scenario script.
shell=$(pct_port pcteleport.shell)
[ -n "$shell" ] && (pct_shell_serve "$shell") &
echo "PCTELEPORT-READY"
if [ -x /scenario ]; then
	/scenario
	echo "PCTELEPORT-SCENARIO-EXIT $?"
fi
if [ -z "$shell" ] || [ "$(pct_arg pct.halt 0)" = 1 ]; then
	sync
	poweroff -f
fi
while :; do sleep 3600; done
"""

ROOT_INIT = r"""#!/bin/busybox sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8
# Stage 1 moves its /proc, /sys and /dev here; mount them only if it did not.
[ -e /proc/self ] || mount -t proc proc /proc
[ -d /sys/kernel ] || mount -t sysfs sysfs /sys
[ -e /dev/null ] || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=755 tmpfs /var/log
mount -t tmpfs -o mode=1777 tmpfs /var/tmp
mount -t tmpfs -o mode=755 tmpfs /mnt  # mount points for scenarios (the root is read-only)
. /lib/pcteleport/functions.sh
hostname "$(pct_arg pct.hostname guest)"
ip link set lo up 2>/dev/null
ko=/lib/modules/$(uname -r)/extra/pcteleport.ko
pct_dev_links

if [ ! -e "$ko" ]; then
	echo "PCTELEPORT-MODULE missing (not in this image)"
elif err=$(insmod "$ko" 2>&1); then
	echo "PCTELEPORT-MODULE loaded"
else
	echo "PCTELEPORT-MODULE missing ($err)"
fi

agent=$(pct_port pcteleport.agent)
if [ -n "$agent" ] && [ -e /usr/lib/pcteleport/agent.py ]; then
	python3 /usr/lib/pcteleport/agent.py serve --port "$agent" \
		$(pct_arg pct.agentargs | tr , ' ') >/var/log/pcteleport-agent.log 2>&1 &
	echo "PCTELEPORT-AGENT started $agent"
else
	echo "PCTELEPORT-AGENT absent"
fi
shell=$(pct_port pcteleport.shell)
[ -n "$shell" ] && (pct_shell_serve "$shell") &
echo "PCTELEPORT-READY"

hook=$(pct_arg pct.scenario /etc/pcteleport/scenario)
if [ -x "$hook" ]; then
	"$hook"
	echo "PCTELEPORT-SCENARIO-EXIT $?"
fi
if [ "$(pct_arg pct.halt 0)" = 1 ]; then
	sync
	poweroff -f
fi
# PID 1 must never exit; reap orphans while waiting.
while :; do sleep 3600 & wait; done
"""
