# Round 1: load the next kernel per $MODE and execute it.
# The next kernel gets this command line with round 2 instead of round 1.
NEXT=$(sed -e 's/fklab.round=1/fklab.round=2/' /proc/cmdline)
INITRD=/lab/round2.cpio
echo "FKLAB: loading mode=$MODE"
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
	kexec -s /lab/vmlinuz --initrd="$INITRD" --append="$NEXT" || fail "kexec -s failed rc=$?"
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
*)
	fail "unknown mode $MODE"
	;;
esac
echo "FKLAB: loaded"
sync
echo "FKLAB: exec"
$EXEC
fail "$EXEC returned rc=$?"
