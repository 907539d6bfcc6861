# fastkexec-hangup (sourced by round1.sh): `fastkexec load` and `fastkexec exec --force`
# with their output on a terminal that hangs up while they run, as an SSH session does when
# the network drops or when the shutdown stops sshd.
#
# The terminal is a telnet session over the loopback: busybox telnetd gives each connection
# a pseudo-terminal and runs /lab/hangup-session on it, which starts the command as the
# terminal's controlling process (a session leader with the pty as its controlling
# terminal); the client is nc. Each command runs with -v, so it writes log lines to the
# terminal as it works. Before it starts, the client sends ^S (XOFF): the terminal stops
# taking output, so the command blocks in its first write, which /proc/PID/syscall shows.
# That is the "mid-way": past its start, its work under way. Then the client goes away:
# telnetd closes the pty's master, and the kernel hangs the terminal up: SIGHUP to the
# controlling process first, then the blocked write and every later one fail with EIO.
HU=/tmp/hangup

hangup_setup() {
	mkdir -p /dev/pts $HU
	mount -t devpts devpts /dev/pts || fail "cannot mount devpts"
	ip link set lo up || fail "cannot bring the loopback up"
	telnetd -F -b 127.0.0.1:2323 -f /dev/null -l /lab/hangup-session &
}

# hangup_run NAME COMMAND: runs COMMAND (a fastkexec command line, for eval) in a new telnet
# session and hangs the terminal up once the command is blocked writing to it.
hangup_run() {
	name=$1
	rm -f $HU/cmd $HU/go $HU/rc $HU/client.out $HU/in
	printf '%s\n' "$2" >$HU/cmd
	mkfifo $HU/in
	nc 127.0.0.1 2323 <$HU/in >$HU/client.out 2>&1 &
	NC=$!
	# Holding the fifo open keeps the client's input open (EOF would end the session).
	exec 7>$HU/in
	i=0
	until grep -q 'session ready' $HU/client.out 2>/dev/null; do
		i=$((i + 1))
		[ $i -gt 300 ] && fail "hangup $name: the telnet session did not start"
		sleep 0.1
	done
	printf '\023' >&7
	# The ^S travels nc → telnetd → the pty's line discipline, which stops the output.
	sleep 1
	touch $HU/go
	i=0
	while :; do
		FK=$(pidof fastkexec)
		SC=$(cat /proc/$FK/syscall 2>/dev/null)
		# write(2) or writev(2), on the stopped terminal.
		case "$FK:$SC" in [0-9]*:"1 "* | [0-9]*:"20 "*) break ;; esac
		[ -e $HU/rc ] && fail "hangup $name: fastkexec ended (rc=$(cat $HU/rc)) without blocking on the stopped terminal"
		i=$((i + 1))
		[ $i -gt 1200 ] && fail "hangup $name: fastkexec never blocked writing to the stopped terminal"
		sleep 0.1
	done
	set -- $SC
	BLOCKED="syscall=$1 fd=$2"
	# Fields 6 and 7: its session and controlling terminal (0: none).
	set -- $(cat /proc/$FK/stat)
	[ "$6" = "$FK" ] && [ "$7" != 0 ] && CONTROLLING=1 || CONTROLLING=0
	echo "FKLAB: hangup $name blocked pid=$FK $BLOCKED controlling=$CONTROLLING"
	[ $CONTROLLING = 1 ] || fail "hangup $name: fastkexec is not the terminal's controlling process (no SIGHUP would reach it)"
	[ "$name" = exec ] && echo "FKLAB: exec"
	kill $NC
	exec 7>&-
}

# hangup_wait NAME: waits for the command of the session to end; its status in $RC.
hangup_wait() {
	i=0
	until [ -s $HU/rc ]; do
		i=$((i + 1))
		[ $i -gt 1800 ] && fail "hangup $1: fastkexec did not end"
		sleep 0.1
	done
	RC=$(cat $HU/rc)
}

hangup_setup
hangup_run load "fastkexec -v load --mode uncompressed --kernel /lab/vmlinuz --cache-dir /lab/cache --initrd '$INITRD' --append '$NEXT'"
hangup_wait load
echo "FKLAB: hangup load rc=$RC loaded=$(cat /sys/kernel/kexec_loaded)"
[ "$RC" = 0 ] || fail "fastkexec load on a terminal that hung up exited rc=$RC"
[ "$(cat /sys/kernel/kexec_loaded)" = 1 ] || fail "fastkexec load on a terminal that hung up loaded nothing"
echo "FKLAB: loaded"
sync
hangup_run exec "fastkexec -v exec --force"
hangup_wait exec
fail "fastkexec exec --force on a terminal that hung up returned rc=$RC"
