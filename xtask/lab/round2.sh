# Round 2: the new kernel's init. Report what this kernel sees, power off.
# First thing, before any fork: a kernel log line (debug level, not echoed on
# the console) that a traced run's report ends its timeline at.
echo "<7>FKLAB: new-init" >/dev/kmsg
TRACE=$(arg fklab.trace)
echo "FKLAB: kernel=$(uname -r)"
echo "FKLAB: cmdline=$(cat /proc/cmdline)"
echo "FKLAB: memtotal_kb=$(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo)"
if [ -e /lab/round2-marker ]; then echo "FKLAB: initrd=ok"; else echo "FKLAB: initrd=missing"; fi
# A chained run folds each boot into the state directory, which lives on
# vda between boots (see init.sh), and reboots again while any are left.
DISK=$(arg fklab.disk)
STATE=/var/lib/fastkexec
FOLD=--no-fold
if [ "$DISK" = 1 ]; then
	lab_disks
	mkdir -p "$STATE"
	tar -xf /dev/vda -C "$STATE" || fail "cannot restore the state directory from vda"
	FOLD=
fi
if [ "$TRACE" = 1 ]; then
	# Kernel messages on the console would land inside the table, the picture or the JSON
	# (seen: a late "tsc: Refined TSC clocksource" line under --icount); they still reach the
	# log `report` reads. The console level comes back before anything else runs.
	CONSOLE_LEVEL=$(cut -f1 /proc/sys/kernel/printk)
	dmesg -n 1
	fastkexec report --no-fold --until-kmsg "FKLAB: new-init" --svg /tmp/timeline.svg
	if [ -s /tmp/timeline.svg ]; then
		echo "FKLAB: svg-begin"
		cat /tmp/timeline.svg
		echo "FKLAB: svg-end"
	fi
	echo "FKLAB: report-begin"
	# stderr (the reason for a non-zero exit) went out with the table above.
	# This run folds the boot in (chained runs): once per boot id.
	# The initcall check compares ten; one listed initcall may be set aside (labinitcalls).
	[ "$(arg fklab.initcall_check)" = 1 ] && TOP="--top 12"
	fastkexec report --json $FOLD $TOP --state-dir "$STATE" --until-kmsg "FKLAB: new-init" 2>/tmp/report.err
	echo "FKLAB: report-end rc=$?"
	# What the JSON run said on stderr (e.g. why a fold failed), after the markers.
	sed 's/^/FKLAB: report-stderr /' /tmp/report.err
	if [ "$(arg fklab.initcall_check)" = 1 ]; then
		# The kernel's own initcall_debug lines and the raw events, for the host to compare.
		echo "FKLAB: initcall-debug-begin"
		dmesg | grep -E '\] (calling  |initcall .* returned |clocksource: Switched to)'
		echo "FKLAB: initcall-debug-end"
		mkdir -p /sys/kernel/tracing
		mount -t tracefs tracefs /sys/kernel/tracing
		echo "FKLAB: tracefs-begin"
		cat /sys/kernel/tracing/trace_clock
		cat /sys/kernel/tracing/trace
		echo "FKLAB: tracefs-end"
		umount /sys/kernel/tracing
	fi
	dmesg -n "$CONSOLE_LEVEL"
fi
if [ "$(arg fklab.unit)" = 1 ]; then
	# contrib/systemd/fastkexec-report.service's logic, as systemd would run it (labunit.rs).
	. /lab/unit.sh
	# What Debian's prometheus-node-exporter package creates.
	mkdir -p "$UNIT_TEXTFILE_DIR"
	run_unit
	echo "FKLAB: textfile-begin"
	cat "$UNIT_TEXTFILE_DIR/fastkexec.prom"
	echo "FKLAB: textfile-end"
fi
if [ "$DISK" = 1 ]; then
	tar -cf /dev/vda -C "$STATE" . || fail "cannot save the state directory to vda"
	sync
	echo "FKLAB: state saved files=$(ls "$STATE" | wc -l) reboots_left=$(arg fklab.reboots_left)"
	if [ "$(arg fklab.reboots_left)" -gt 0 ] 2>/dev/null; then
		. /lab/round1.sh
	fi
fi
echo "FKLAB: done"
poweroff -f
