#!/bin/sh
# telnetd's login program in the fastkexec-hangup lab mode (see hangup.sh): the leader of a
# new session whose controlling terminal is the connection's pseudo-terminal.
HU=/tmp/hangup
echo "session ready"
until [ -e $HU/go ]; do sleep 0.1; done
# The command runs as the leader of a session of its own whose controlling terminal is this
# one (setsid -c takes it over): the terminal's controlling process, to which the kernel's
# hangup sends SIGHUP before it wakes the blocked writers with EIO, as for a login shell or a
# service run on a tty. This shell, left without a terminal, waits and records its status.
eval "setsid -c $(cat $HU/cmd)"
echo $? >$HU/rc
