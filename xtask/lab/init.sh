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
