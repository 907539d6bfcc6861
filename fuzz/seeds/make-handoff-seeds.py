#!/usr/bin/env python3
"""Writes the handoff_report seeds: a 6.1-like traced reboot (the report unit tests'
figures: request at mono 5 ms, TSC = 10e6 + 2 * (mono - 5e6)) in the target's structured
layout (see fuzz_targets/handoff_report.rs), uncompressed and staged. Run from fuzz/."""
import struct

def u8(v): return struct.pack("<B", v)
def u32(v): return struct.pack("<I", v)
def u64(v): return struct.pack("<Q", v & (2**64 - 1))

def tsc(mono): return 10_000_000 + 2 * (mono - 5_000_000)

def event(kind, ts, arg, name=b"fastkexec", bus=b"", drv=b""):
    n = bytearray(64)
    n[:len(name)] = name
    if bus or drv:
        n[32:32 + len(bus)] = bus
        n[44:44 + len(drv)] = drv
    return u32(kind) + u32(0) + u64(ts) + u64(arg) + bytes(n)

ms = 1_000_000
EVENTS = [
    event(1, 6 * ms, 1), event(2, 6 * ms + 100_000, 1),
    event(12, 6 * ms + 200_000, 0xffff_ffff_8100_1004), event(13, 6 * ms + 700_000, 1),
    event(4, 7 * ms, 1),
    event(6, 7 * ms + 50_000, 0xa, b"0000:00:02.0", b"pci", b"virtio-pci"),
    event(6, 9 * ms, 0xb, b"serial8250", b"platform", b"serial8250"),
    event(6, 9 * ms + 500_000, 0xc, b"vda"),
    event(5, 10 * ms, 1), event(8, 10 * ms + 10_000, 1), event(14, 10 * ms + 20_000, 1),
    event(9, 10 * ms + 40_000, 1), event(15, 10 * ms + 60_000, 1),
    event(10, 11 * ms, 1), event(16, 12 * ms, 1), event(11, 12 * ms + 100_000, 1),
]

def seed(staged):
    zero = tsc(15 * ms)
    now = zero + 400 * 2 * ms
    ctl = 0x80 | 0x02 | 0x08 | 0x20
    b = u8(ctl) + u64(now)
    b += u64(now) + u64(400 * ms) + u64(20)                       # anchor
    b += u64(tsc(5 * ms)) + u64(5 * ms) + u64(tsc(6 * ms)) + u64(6 * ms) + u64(20)  # now fit
    b += u8(2)                                                    # top
    kmsg = [(0, b"Linux version 6.1.0"), (300_000, b"Run /init as init process"),
            (320_000, b"FKLAB: new-init")]
    b += u8(len(kmsg))
    for ts, text in kmsg:
        b += u64(ts) + u8(len(text)) + text
    flags = 1 | ((2 if staged else 1) << 3)                      # REQUEST_STAMPED | load mode
    b += u32(flags) + u64(0xffff) + u64(0) + u64(tsc(5 * ms)) + u64(5 * ms)
    b += u64(tsc(5 * ms)) + u64(5 * ms) + u64(tsc(6 * ms)) + u64(6 * ms) + u64(20)
    b += u8(1) + u64(0xffff_ffff_8100_1004)                       # one notifier
    b += u64(50_000) + u64(0) + u64(12 * ms + 150_000)            # probe_ns, state, last exit
    if staged:
        b += u8(3)
        b += u64(tsc(13 * ms)) + u64(tsc(13 * ms + 400_000)) + u64(0)
        b += u64(tsc(12 * ms + 500_000)) + u64(tsc(12 * ms + 900_000)) + u64(0)
    else:
        b += u8(1) + u64(tsc(13 * ms)) + u64(tsc(13 * ms + 500_000)) + u64(0)
    return b + b"".join(EVENTS)

open("seeds/handoff_report/uncompressed", "wb").write(seed(False))
open("seeds/handoff_report/staged", "wb").write(seed(True))
