# Round 2: the new kernel's init. Report what this kernel sees, power off.
echo "FKLAB: kernel=$(uname -r)"
echo "FKLAB: cmdline=$(cat /proc/cmdline)"
echo "FKLAB: memtotal_kb=$(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo)"
if [ -e /lab/round2-marker ]; then echo "FKLAB: initrd=ok"; else echo "FKLAB: initrd=missing"; fi
echo "FKLAB: done"
poweroff -f
