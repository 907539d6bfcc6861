# Round 1: load the next kernel per $MODE and execute it.
# The next kernel gets this command line with round 2 instead of round 1.
# A chained run: fklab.reboots_left counts the reboots still to do, this one
# included; the next kernel boots the chain image again (from vdb).
LEFT=$(arg fklab.reboots_left)
NEXT=$(sed -e 's/fklab.round=1/fklab.round=2/' \
	-e "s/fklab.reboots_left=[0-9]*/fklab.reboots_left=$((${LEFT:-1} - 1))/" /proc/cmdline)
INITRD=/lab/round2.cpio
if [ "$(arg fklab.disk)" = 1 ]; then
	lab_disks
	INITRD=/tmp/chain.cpio
	cat /dev/vdb >"$INITRD" || fail "cannot read the chain image from vdb"
fi
lab_server
echo "FKLAB: cold memtotal_kb=$(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo)"
# A panic with the staged kernel loaded: the crash path must boot it the kdump-safe way.
lab_panic() {
	echo c >/proc/sysrq-trigger
}
staged_status() {
	fastkexec status | grep -E '^(staged kernel|kernel-native route|crash image loaded)'
}
# In fastkexec-staged (what bench times) the status is shown after "FKLAB: loaded", so that
# the load span holds the load alone, as it does for kexec-tools.
staged_load() {
	fastkexec load --mode staged --kernel /lab/vmlinuz --cache-dir /lab/cache \
		--initrd "$INITRD" --append "$NEXT" || fail "fastkexec load --mode staged failed rc=$?"
	[ "$MODE" = fastkexec-staged ] || staged_status
}
# Units stopping, the way PID 1 stops them (the traced follow run): two "services" in
# cgroup2 groups of their own, signalled by this script, which is PID 1, like systemd with
# KillMode=mixed (SIGTERM to the main process, SIGKILL to what is left once it exited), their
# groups removed once empty. slow-stop.service exits 1.5 s after SIGTERM (the sleep is its
# workload). Not systemd: which signals, in which order, and when the groups go are this
# script's choices.
lab_units() {
	mkdir -p /sys/fs/cgroup
	mount -t cgroup2 none /sys/fs/cgroup || { echo "FKLAB: units none (no cgroup2)"; return 0; }
	set -- slow-stop "sleep 1.5; exit 0" fast-stop "exit 0"
	PIDS=
	while [ $# -gt 0 ]; do
		mkdir "/sys/fs/cgroup/$1.service" || fail "cannot create the cgroup of $1"
		# The service moves itself into its group before it starts anything.
		sh -c "echo \$\$ >/sys/fs/cgroup/$1.service/cgroup.procs && exec sh -c 'trap \"$2\" TERM; while :; do sleep 3600 & wait \$!; done'" &
		PIDS="$PIDS $1=$!"
		shift 2
	done
	# Both services up (their groups populated) before the stop starts.
	for p in $PIDS; do
		u=${p%%=*}
		i=0
		until grep -q '^populated 1' "/sys/fs/cgroup/$u.service/cgroup.events"; do
			i=$((i + 1))
			[ $i -gt 500 ] && fail "$u.service did not start"
			sleep 0.01
		done
	done
	echo "FKLAB: units stop"
	for p in $PIDS; do kill -TERM "${p#*=}"; done
	LEFT=$PIDS
	while [ -n "$LEFT" ]; do
		NOW=
		for p in $LEFT; do
			g=/sys/fs/cgroup/${p%%=*}.service
			if grep -q '^populated 0' "$g/cgroup.events"; then
				rmdir "$g" || fail "cannot remove $g"
				echo "FKLAB: unit gone ${p%%=*}.service"
				continue
			fi
			# The main process is gone: what is left gets SIGKILL.
			if ! grep -qx "${p#*=}" "$g/cgroup.procs"; then
				for t in $(cat "$g/cgroup.procs"); do kill -KILL "$t"; done
			fi
			NOW="$NOW $p"
		done
		LEFT=$NOW
		sleep 0.01
	done
	# Reaped here: the tracer in the background is a child too.
	for p in $PIDS; do wait "${p#*=}"; done
}
# The host prepared the cache, as `fastkexec prepare` does at kernel install time; this machine
# verifies the copy in full once (its files have new identities here), so that the load below
# is a cheap hit, as on a server whose install hook ran prepare.
if [ -d /lab/cache ]; then
	fastkexec prepare --kernel /lab/vmlinuz --cache-dir /lab/cache >/dev/null ||
		fail "fastkexec prepare failed rc=$?"
fi
echo "FKLAB: loading mode=$MODE"
# --trace: `fastkexec trace --exec` attaches the probes, loads and executes;
# it prints "FKLAB: exec" itself right before it stamps the reboot request.
if [ "$(arg fklab.trace)" = 1 ]; then
	case "$MODE" in
	fastkexec-uncompressed) TMODE=uncompressed ;;
	fastkexec-file) TMODE=file ;;
	fastkexec-staged) TMODE=staged ;;
	*) fail "--trace needs a fastkexec mode, not $MODE" ;;
	esac
	DAMAGE=$(arg fklab.damage)
	LEAN=$(arg fklab.lean)
	NOINIT=$(arg fklab.no_initcalls)
	if [ -z "$DAMAGE" ]; then
		# The preflight: attach every probe, say what times each phase, detach, load nothing.
		fastkexec trace --dry-run ${LEAN:+--lean} ${NOINIT:+--no-initcalls} --mode "$TMODE" --kernel /lab/vmlinuz \
			--cache-dir /lab/cache --initrd "$INITRD" --append "$NEXT" >/tmp/preflight.out 2>&1
		rc=$?
		sed 's/^/FKLAB: preflight | /' /tmp/preflight.out
		echo "FKLAB: preflight rc=$rc"
		fastkexec status | sed -n 's/^image loaded: *\(.*\)$/FKLAB: preflight image-loaded=\1/p'
		fastkexec status | sed -n 's/^crash image loaded: *\(.*\)$/FKLAB: preflight crash-image-loaded=\1/p'
	fi
	if [ "$(arg fklab.follow)" = 1 ]; then
		# Follow mode: the tracer loads and waits (links pinned in bpffs);
		# something else starts the reboot, as `systemctl kexec` would.
		mkdir -p /sys/fs/bpf
		mount -t bpf bpf /sys/fs/bpf || fail "cannot mount bpffs"
		(RUST_LOG_STYLE=never fastkexec trace ${LEAN:+--lean} ${NOINIT:+--no-initcalls} --mode "$TMODE" --kernel /lab/vmlinuz \
			--cache-dir /lab/cache --initrd "$INITRD" --append "$NEXT" 2>&1 | tee /tmp/trace.out) &
		i=0
		until grep -q 'waiting for a kexec reboot' /tmp/trace.out 2>/dev/null; do
			grep -q 'fastkexec: error' /tmp/trace.out 2>/dev/null && fail "fastkexec trace (follow) failed"
			i=$((i + 1))
			[ $i -gt 1200 ] && fail "fastkexec trace (follow) did not get ready"
			sleep 0.1
		done
		ls /sys/fs/bpf/fastkexec | wc -l | sed 's/^/FKLAB: pinned links=/'
		lab_units
		sync
		fastkexec exec --force --mark "FKLAB: exec"
		fail "fastkexec exec returned rc=$?"
	fi
	sync
	RUST_LOG=info RUST_LOG_STYLE=never fastkexec trace --exec --force --mark "FKLAB: exec" ${DAMAGE:+--damage "$DAMAGE"} ${LEAN:+--lean} ${NOINIT:+--no-initcalls} \
		--mode "$TMODE" --kernel /lab/vmlinuz --cache-dir /lab/cache \
		--initrd "$INITRD" --append "$NEXT" || fail "fastkexec trace failed rc=$?"
	fail "fastkexec trace --exec returned"
fi
case "$MODE" in
kexec-tools-l)
	kexec -l /lab/vmlinuz --initrd="$INITRD" --append="$NEXT" || fail "kexec -l failed rc=$?"
	EXEC="kexec -e"
	;;
kexec-tools-l-i)
	kexec -l -i /lab/vmlinuz --initrd="$INITRD" --append="$NEXT" || fail "kexec -l -i failed rc=$?"
	EXEC="kexec -e"
	;;
kexec-tools-s)
	kexec -s -l /lab/vmlinuz --initrd="$INITRD" --append="$NEXT" || fail "kexec -s -l failed rc=$?"
	EXEC="kexec -e"
	;;
fastkexec-file)
	fastkexec load --mode file --kernel /lab/vmlinuz --initrd "$INITRD" --append "$NEXT" ||
		fail "fastkexec load --mode file failed rc=$?"
	EXEC="fastkexec exec --force"
	;;
fastkexec-uncompressed)
	fastkexec load --mode uncompressed --kernel /lab/vmlinuz --cache-dir /lab/cache \
		--initrd "$INITRD" --append "$NEXT" || fail "fastkexec load --mode uncompressed failed rc=$?"
	EXEC="fastkexec exec --force"
	;;
fastkexec-staged)
	staged_load
	# exec's complete check of the staged image, timed in its log line.
	EXEC="env RUST_LOG=info RUST_LOG_STYLE=never fastkexec exec --force"
	;;
fastkexec-uncompressed-verify)
	fastkexec load --mode uncompressed --verify --kernel /lab/vmlinuz --cache-dir /lab/cache \
		--initrd "$INITRD" --append "$NEXT" ||
		fail "fastkexec load --mode uncompressed --verify failed rc=$?"
	EXEC="fastkexec exec --force"
	;;
fastkexec-verify-mismatch)
	# A wrong checksum recorded for one segment: the purgatory must print its mismatch
	# and halt (the host stops the run at its last line).
	fastkexec load --mode uncompressed --verify --test-wrong-verify-sum --kernel /lab/vmlinuz \
		--cache-dir /lab/cache --initrd "$INITRD" --append "$NEXT" ||
		fail "fastkexec load --verify --test-wrong-verify-sum failed rc=$?"
	EXEC="fastkexec exec --force"
	;;
fastkexec-staged-panic)
	# auto stages when the reservation is idle; unload removes both images.
	fastkexec load --dry-run --kernel /lab/vmlinuz --initrd "$INITRD" --append "$NEXT" |
		grep -q '^mode: *staged' || fail "auto did not pick staged with an idle reservation"
	staged_load
	fastkexec unload || fail "fastkexec unload failed rc=$?"
	[ "$(cat /sys/kernel/kexec_loaded)$(cat /sys/kernel/kexec_crash_loaded)" = 00 ] ||
		fail "fastkexec unload left an image loaded"
	echo "FKLAB: unloaded both images"
	# A load of another mode over a staged one clears the staged crash image and its record.
	staged_load
	fastkexec load --mode uncompressed --kernel /lab/vmlinuz --cache-dir /lab/cache \
		--initrd "$INITRD" --append "$NEXT" | grep -E 'staged earlier|earlier staged load' ||
		fail "an uncompressed load over a staged one did not say it cleared it"
	[ "$(cat /sys/kernel/kexec_loaded)$(cat /sys/kernel/kexec_crash_loaded)" = 10 ] ||
		fail "an uncompressed load over a staged one left the staged crash image loaded"
	[ -e /run/fastkexec/staged.json ] && fail "an uncompressed load left staged.json"
	echo "FKLAB: staged load reconciled"
	staged_load
	EXEC=lab_panic
	;;
fastkexec-hangup)
	# Loads and executes itself, each on a terminal that hangs up mid-way.
	. /lab/hangup.sh
	;;
fastkexec-staged-replaced)
	staged_load
	# What a kdump service would do: load its crash kernel over the staged one.
	kexec -p /lab/vmlinuz --initrd="$INITRD" --append="$NEXT" || fail "kexec -p failed rc=$?"
	# auto must not displace that kdump kernel.
	fastkexec load --dry-run --kernel /lab/vmlinuz --initrd "$INITRD" --append "$NEXT" |
		grep -q '^mode: *uncompressed' || fail "auto would displace a loaded kdump kernel"
	if fastkexec exec --force; then
		fail "fastkexec exec did not refuse the replaced staged kernel"
	fi
	echo "FKLAB: exec refused"
	# Forced past the check: the trampoline must reset instead of booting.
	EXEC="kexec -e"
	;;
*)
	fail "unknown mode $MODE"
	;;
esac
echo "FKLAB: loaded"
[ "$MODE" = fastkexec-staged ] && staged_status
sync
case "$EXEC" in
*"fastkexec exec"*)
	# fastkexec prints the mark itself once its checks have passed (a staged image is read
	# back in full first): the blackout starts there, as it does on a server.
	$EXEC --mark "FKLAB: exec"
	;;
*)
	echo "FKLAB: exec"
	$EXEC
	;;
esac
fail "$EXEC returned rc=$?"
