#!/bin/sh
# The lab's driver in the Debian system image (xtask/lab/system/fklab.sh, installed by
# xtask/src/system.rs as /usr/local/lib/fklab/fklab.sh). fklab.service runs it once per boot,
# after the default target: its first line is the mark the host reads as "default target
# reached". It prints what this boot sees (FKLAB: lines on the serial console, read by
# xtask/src/labsystem.rs) and, while reboots are left, starts the next one the way the
# scenario says.
exec >/dev/ttyS0 2>&1 </dev/null
# The unit is stopped by the very shutdown this script may start: a clean exit then.
trap 'exit 0' TERM
# First thing, before any fork: the kernel log line `report` ends its timeline at.
echo "<7>FKLAB: default-target" >/dev/kmsg
arg() {
	v=
	for w in $(cat /proc/cmdline); do
		case "$w" in "$1="*) v=${w#*=} ;; esac
	done
	echo "$v"
}
ROUND=$(arg fklab.round)
SCENARIO=$(arg fklab.scenario)
# The loader of each reboot, in order (comma-separated lab modes): round N starts the Nth.
MODES=$(arg fklab.modes)
REBOOTS=$(echo "$MODES" | tr ',' '\n' | grep -c .)
# How this boot came about: the previous round's reboot, or a cold boot.
VIA=cold
[ "$ROUND" -gt 1 ] && VIA=$(echo "$MODES," | cut -d, -f$((ROUND - 1)))
echo "FKLAB: up round=$ROUND scenario=$SCENARIO via=$VIA uptime=$(cut -d' ' -f1 /proc/uptime)"
fail() {
	echo "FKLAB: error $*"
	echo "FKLAB: done"
	systemctl poweroff
	exit 0
}
echo "FKLAB: kernel=$(uname -r)"
echo "FKLAB: cmdline=$(cat /proc/cmdline)"
echo "FKLAB: memtotal_kb=$(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo)"
# systemd's own clock of this boot (µs, CLOCK_MONOTONIC).
systemctl show -P UserspaceTimestampMonotonic | sed 's/^/FKLAB: systemd userspace_us=/'
systemctl show -P FinishTimestampMonotonic | sed 's/^/FKLAB: systemd finish_us=/'
systemctl show -P ActiveEnterTimestampMonotonic default.target | sed 's/^/FKLAB: systemd default_target_us=/'
systemctl list-units --state=failed --plain --no-legend | sed 's/^/FKLAB: failed-unit /'
# The boot-time unit (contrib/systemd/fastkexec-report.service), as systemd ran it.
systemctl show -P Result fastkexec-report.service | sed 's/^/FKLAB: report-unit result=/'
systemctl show -P ExecMainStatus fastkexec-report.service | sed 's/^/FKLAB: report-unit status=/'
systemctl show -P ExecMainExitTimestampMonotonic fastkexec-report.service |
	sed 's/^/FKLAB: report-unit exited_us=/'
# The root file system's mount in this boot: a journal recovery shows here.
journalctl -k -b 0 -o cat --no-pager | grep 'EXT4-fs (vda)' | sed 's/^/FKLAB: ext4 /'
if [ "$ROUND" -gt 1 ]; then
	# The previous boot's shutdown as its journal kept it: every stop job of PID 1 with its
	# result, and any unit failure (systemd's message ids: unit stopping/stopped, unit failed,
	# unit result).
	journalctl -b -1 -o json --no-pager _PID=1 JOB_TYPE=stop \
		--output-fields=MESSAGE_ID,UNIT,JOB_TYPE,JOB_RESULT | sed 's/^/FKLAB: prev-stop /'
	for id in be02cf6855d2428ba40df7e9d022f03d d9b373ed55a64feb8242e02dbe79a49c; do
		journalctl -b -1 -o json --no-pager MESSAGE_ID=$id \
			--output-fields=MESSAGE_ID,UNIT,UNIT_RESULT,MESSAGE | sed 's/^/FKLAB: prev-failure /'
	done
	journalctl -b -1 -o cat --no-pager -n 1 _PID=1 | sed 's/^/FKLAB: prev-last /'
fi
case "$SCENARIO" in
follow | report-unit)
	if [ "$VIA" != cold ] && [ "$VIA" != kexec-tools-l ]; then
		echo "FKLAB: report-begin"
		fastkexec report --json --no-fold --until-kmsg "FKLAB: default-target" 2>/tmp/report.err
		echo "FKLAB: report-end rc=$?"
		sed 's/^/FKLAB: report-stderr /' /tmp/report.err
	fi
	;;
esac
case "$SCENARIO" in
report-unit)
	echo "FKLAB: textfile-begin"
	cat /var/lib/prometheus/node-exporter/fastkexec.prom
	echo "FKLAB: textfile-end"
	# The host scrapes node_exporter through its forwarded port, then says so on the serial
	# line (the only way in: the console has no getty).
	stty -F /dev/ttyS0 -echo 2>/dev/null
	echo "FKLAB: scrape round=$ROUND"
	read -r _ </dev/ttyS0 || fail "no word from the host after the scrape"
	echo "FKLAB: scraped round=$ROUND"
	;;
slow-units)
	if [ "$ROUND" -gt 1 ]; then
		# The traced reboot's report, ending where systemd reached its default target (no
		# --until-kmsg): the units stopping and starting, and where to look next.
		fastkexec report --no-fold --top 5 2>&1 | sed 's/^/FKLAB: report-text | /'
		echo "FKLAB: report-begin"
		fastkexec report --json --no-fold --top 5 2>/tmp/report.err
		echo "FKLAB: report-end rc=$?"
		sed 's/^/FKLAB: report-stderr /' /tmp/report.err
		# systemd's own answers over D-Bus, as report read them (unit-test fixtures).
		busctl --json=short get-property org.freedesktop.systemd1 /org/freedesktop/systemd1 \
			org.freedesktop.systemd1.Manager UserspaceTimestampMonotonic FinishTimestampMonotonic |
			sed 's/^/FKLAB: dbus manager /'
		for u in fklab-slow-start.service fklab-slow-stop.service graphical.target; do
			p=$(busctl --json=short call org.freedesktop.systemd1 /org/freedesktop/systemd1 \
				org.freedesktop.systemd1.Manager GetUnit s "$u" | sed 's/.*"data":\["\([^"]*\)".*/\1/')
			busctl --json=short get-property org.freedesktop.systemd1 "$p" org.freedesktop.systemd1.Unit \
				InactiveExitTimestampMonotonic ActiveEnterTimestampMonotonic | sed "s/^/FKLAB: dbus unit $u /"
		done
		# The reference our start figures must match: systemd-analyze's own blame.
		systemd-analyze blame --no-pager 2>&1 | head -n 8 | sed 's/^ */FKLAB: blame /'
		# Both units' own start/stop entries: Starting/Started, Stopping/Stopped.
		for b in -1 0; do
			journalctl -b $b -o json --no-pager -u fklab-slow-stop.service -u fklab-slow-start.service \
				--output-fields=MESSAGE_ID,UNIT,JOB_TYPE,JOB_RESULT | sed "s/^/FKLAB: slow boot=$b /"
		done
	fi
	;;
esac
if [ "$ROUND" -gt "$REBOOTS" ]; then
	echo "FKLAB: done"
	systemctl poweroff
	exit 0
fi
NEXT=$(sed -e "s/fklab.round=[0-9]*/fklab.round=$((ROUND + 1))/" /proc/cmdline)
MODE=$(echo "$MODES," | cut -d, -f"$ROUND")
KERNEL=/boot/vmlinuz-$(uname -r)
# A split (sid) kernel package keeps its image with its modules.
[ -e "$KERNEL" ] || KERNEL=/usr/lib/modules/$(uname -r)/vmlinuz.unsigned
INITRD=/boot/initrd.img-$(uname -r)
[ -e "$INITRD" ] || fail "no $INITRD"
echo "FKLAB: loading mode=$MODE"
case "$SCENARIO:$MODE" in
follow:*)
	# fastkexec trace without --exec, as a service; the reboot comes from elsewhere.
	mkdir -p /run/fklab
	printf 'KERNEL=%s\nINITRD=%s\nNEXT=%s\n' "$KERNEL" "$INITRD" "$NEXT" >/run/fklab/trace.env
	systemctl start fklab-trace.service || fail "systemctl start fklab-trace.service failed"
	i=0
	until journalctl -b 0 -o cat --no-pager -u fklab-trace.service | grep -q 'waiting for a kexec reboot'; do
		systemctl is-failed -q fklab-trace.service && fail "fklab-trace.service failed"
		i=$((i + 1))
		[ $i -gt 600 ] && fail "fastkexec trace (follow) did not get ready"
		sleep 0.2
	done
	echo "FKLAB: pinned links=$(ls /sys/fs/bpf/fastkexec | wc -l)"
	echo "FKLAB: loaded"
	echo "FKLAB: exec"
	systemctl kexec || fail "systemctl kexec failed rc=$?"
	;;
*:kexec-tools-l)
	kexec -l "$KERNEL" --initrd="$INITRD" --append="$NEXT" || fail "kexec -l failed rc=$?"
	echo "FKLAB: loaded"
	echo "FKLAB: exec"
	systemctl kexec || fail "systemctl kexec failed rc=$?"
	;;
report-unit:fastkexec-uncompressed | slow-units:fastkexec-uncompressed)
	# A traced reboot, as a user starts one: trace --exec (clean path under systemd). It
	# prints the mark itself (stdout: the console) right before it stamps the request.
	echo "FKLAB: loaded"
	fastkexec trace --exec --mark "FKLAB: exec" --mode uncompressed --kernel "$KERNEL" \
		--initrd "$INITRD" --append "$NEXT" 2>/tmp/trace.err ||
		{ sed 's/^/FKLAB: trace | /' /tmp/trace.err; fail "fastkexec trace --exec failed"; }
	;;
*:fastkexec-uncompressed | *:fastkexec-staged)
	fastkexec load --mode "${MODE#fastkexec-}" --kernel "$KERNEL" --initrd "$INITRD" \
		--append "$NEXT" || fail "fastkexec load --mode ${MODE#fastkexec-} failed rc=$?"
	echo "FKLAB: loaded"
	# exec prints the mark itself once its checks have passed, then runs `systemctl kexec`.
	fastkexec exec --mark "FKLAB: exec" || fail "fastkexec exec failed rc=$?"
	;;
*)
	fail "unknown scenario/mode $SCENARIO/$MODE"
	;;
esac
echo "FKLAB: shutdown-queued"
exit 0
