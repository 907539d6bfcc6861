# Round 2: the new kernel's init. Report what this kernel sees, power off.
# First thing, before any fork: a kernel log line (debug level, not echoed on
# the console) that a traced run's report ends its timeline at.
echo "<7>FKLAB: new-init" >/dev/kmsg
TRACE=$(arg fklab.trace)
echo "FKLAB: kernel=$(uname -r)"
echo "FKLAB: cmdline=$(cat /proc/cmdline)"
echo "FKLAB: memtotal_kb=$(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo)"
if [ -e /lab/round2-marker ]; then echo "FKLAB: initrd=ok"; else echo "FKLAB: initrd=missing"; fi
if [ "$TRACE" = 1 ]; then
	fastkexec report --no-fold --until-kmsg "FKLAB: new-init"
	echo "FKLAB: report-begin"
	# stderr (the reason for a non-zero exit) went out with the table above.
	fastkexec report --json --no-fold --until-kmsg "FKLAB: new-init" 2>/dev/null
	echo "FKLAB: report-end rc=$?"
fi
echo "FKLAB: done"
poweroff -f
