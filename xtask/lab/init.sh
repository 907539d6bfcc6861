#!/bin/busybox sh
# fastkexec lab init. The kernel command line says which round this is:
#   fklab.round=1      load the next kernel the way fklab.mode says, then execute it
#   fklab.round=2      the new kernel: report what it sees, then power off
#   fklab.round=probe  prove the VM boots (accelerator probe), then power off
#   anything else      an interactive shell (cargo xtask lab shell)
# Every line the host must act on starts with "FKLAB: "; the host timestamps
# each serial line, so these lines are the stopwatch's marks.
/bin/busybox mkdir -p /proc /sys /dev /tmp /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

arg() {
	for w in $(cat /proc/cmdline); do
		case "$w" in "$1"=*) echo "${w#*=}"; return ;; esac
	done
}
ROUND=$(arg fklab.round)
MODE=$(arg fklab.mode)
echo "FKLAB: init round=$ROUND mode=$MODE uptime=$(cut -d' ' -f1 /proc/uptime)"

fail() {
	echo "FKLAB: error $*"
	poweroff -f
}

# Cloud kernels build virtio_blk and virtio_net (and on some, virtio_pci) as
# modules; the host put them here in load order.
lab_modules() {
	[ -z "$MODULES_READY" ] || return 0
	for m in /lab/modules/*.ko; do
		[ -e "$m" ] || continue
		insmod "$m" || fail "insmod $m failed"
	done
	MODULES_READY=1
}

# A chained run (--reboots): vda is the state disk (a raw tar archive of the
# state directory), vdb the image every round boots. The rounds call this
# themselves: round 2 only after its first-command kmsg mark, so the traced
# timeline's end is not pushed back.
lab_disks() {
	[ "$(arg fklab.disk)" = 1 ] && [ -z "$DISKS_READY" ] || return 0
	lab_modules
	i=0
	until [ -b /dev/vda ] && [ -b /dev/vdb ]; do
		i=$((i + 1))
		[ $i -gt 100 ] && fail "no virtio disks (vda, vdb) appeared"
		sleep 0.1
	done
	DISKS_READY=1
	echo "FKLAB: disks ready"
}

# The server VM (fklab.server=1, round 1): the NIC and disks driven and the
# NIC up, so the kernel that kexec replaces has devices to shut down, and a
# quarter of the RAM in page cache (read from the scratch disk, else from the
# chained run's image disk), so the load allocates its pages beside a cache
# as on a server that has been running a while. The disk stays open until
# the reboot, as a mounted file system's does: the kernel drops a block
# device's cache when its last opener closes it.
lab_server() {
	[ "$(arg fklab.server)" = 1 ] || return 0
	lab_modules
	i=0
	until [ -e /sys/class/net/eth0 ]; do
		i=$((i + 1))
		[ $i -gt 100 ] && fail "no virtio NIC (eth0) appeared"
		sleep 0.1
	done
	ip link set eth0 up || fail "cannot bring eth0 up"
	FILL_DEV=
	i=0
	while [ -z "$FILL_DEV" ]; do
		for d in /sys/block/vd*; do
			[ "$(cat "$d/serial" 2>/dev/null)" = fklab-scratch ] && FILL_DEV=/dev/${d##*/}
		done
		[ "$(arg fklab.disk)" = 1 ] && [ -b /dev/vdb ] && FILL_DEV=/dev/vdb
		i=$((i + 1))
		[ $i -gt 100 ] && fail "no virtio disk to fill the page cache from appeared"
		[ -n "$FILL_DEV" ] || sleep 0.1
	done
	FILL_MIB=$(($(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo) / 4096))
	exec 7<"$FILL_DEV"
	dd if="$FILL_DEV" of=/dev/null bs=1M count="$FILL_MIB" 2>/dev/null || fail "cannot read $FILL_DEV"
	echo "FKLAB: server eth0=$(cat /sys/class/net/eth0/operstate) fill=$FILL_DEV" \
		"buffers_kb=$(sed -n 's/^Buffers: *\([0-9]*\) kB/\1/p' /proc/meminfo)" \
		"cached_kb=$(sed -n 's/^Cached: *\([0-9]*\) kB/\1/p' /proc/meminfo)" \
		"memfree_kb=$(sed -n 's/^MemFree: *\([0-9]*\) kB/\1/p' /proc/meminfo)"
}

case "$ROUND" in
1) . /lab/round1.sh ;;
2) . /lab/round2.sh ;;
probe)
	echo "FKLAB: probe ok"
	poweroff -f
	;;
*)
	echo "FKLAB: shell (poweroff -f to leave)"
	exec setsid cttyhack sh
	;;
esac
fail "init fell through"
