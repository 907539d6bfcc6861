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

# A chained run (--reboots): vda is the state disk (a raw tar archive of the
# state directory), vdb the image every round boots. Cloud kernels build
# virtio_blk (and on some, virtio_pci) as modules; the host put them here in
# load order. The rounds call this themselves: round 2 only after its
# first-command kmsg mark, so the traced timeline's end is not pushed back.
lab_disks() {
	[ "$(arg fklab.disk)" = 1 ] && [ -z "$DISKS_READY" ] || return 0
	for m in /lab/modules/*.ko; do
		[ -e "$m" ] || continue
		insmod "$m" || fail "insmod $m failed"
	done
	i=0
	until [ -b /dev/vda ] && [ -b /dev/vdb ]; do
		i=$((i + 1))
		[ $i -gt 100 ] && fail "no virtio disks (vda, vdb) appeared"
		sleep 0.1
	done
	DISKS_READY=1
	echo "FKLAB: disks ready"
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
