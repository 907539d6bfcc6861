use super::run::announce;
use super::*;

#[test]
fn record_size_follows_the_device_count() {
    assert_eq!(event_pages_for(0), 4);
    // 300 devices: 600 + 128 stamps → 23 pages of 32.
    assert_eq!(event_pages_for(300), 23);
    assert_eq!(event_pages_for(usize::MAX), MAX_EVENT_PAGES);
}

#[test]
fn the_kernel_steps_over_record_pages() {
    use crate::host::e820::E820Type;
    let ram = |addr: u64, size: u64| E820Entry {
        addr,
        size,
        kind: E820Type::Ram,
    };
    let map = [ram(0x10_0000, 0x7ff0_0000)];
    let fp = (0x100_0000u64, 0x280_0000u64);
    // Pages clear of it: no shift.
    assert_eq!(phys_delta_clear_of(fp, &[0x5000_0000], &map), Some(0));
    // A page inside: the smallest 2 MiB step past it.
    // (0x100_0000 + 0x120_0000 is the first 2 MiB step above 0x200_2000.)
    assert_eq!(
        phys_delta_clear_of(fp, &[0x5000_0000, 0x200_1000], &map),
        Some(0x120_0000)
    );
    // No RAM above: nowhere to go.
    let small = [ram(0x10_0000, 0x280_0000)];
    assert_eq!(phys_delta_clear_of(fp, &[0x200_0000], &small), None);
}

#[test]
fn events_format_with_names() {
    let mut e = Event::ZERO;
    e.kind = EventKind::DEVICE_ENTER.0;
    e.ts_ns = 3_500_000;
    e.name[..4].copy_from_slice(b"vda1");
    let l = format_event(&e, 1_000_000);
    assert!(l.contains("2.500 ms"), "{l}");
    assert!(l.contains("device_enter") && l.contains("vda1"), "{l}");
}

/// A writer whose every write fails, like stdout after the terminal closed (EPIPE).
struct ClosedStdout;

impl Write for ClosedStdout {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::ErrorKind::BrokenPipe.into())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Err(std::io::ErrorKind::BrokenPipe.into())
    }
}

/// Issue 13, defect 4: `run`'s steps after the load, in its order, with an injected
/// unload: an early `?` (stdout closed) must unload; a reboot under way must not.
#[test]
fn every_failure_after_the_load_unloads_and_a_reboot_under_way_does_not() {
    let unloads = std::cell::Cell::new(0);
    // `run`'s steps after the load: announce (best effort), seal, exec.
    let after_load = |out: &mut dyn Write, seal_ok: bool, reboot_ok: bool| -> Result<()> {
        let loaded = LoadedGuard::new(|| unloads.set(unloads.get() + 1));
        announce(out, &[], &["a note".into()], Some("FKLAB: exec"));
        if !seal_ok {
            return Err(Error::Tracer {
                problem: "sealing failed".into(),
            });
        }
        if !reboot_ok {
            return Err(Error::Systemctl {
                outcome: "failed".into(),
            });
        }
        loaded.disarm();
        Ok(())
    };
    assert!(after_load(&mut Vec::new(), false, true).is_err());
    assert_eq!(unloads.get(), 1, "sealing failed: unloaded once");
    assert!(after_load(&mut Vec::new(), true, false).is_err());
    assert_eq!(unloads.get(), 2, "the reboot failed: unloaded once");
    // A closed stdout is no failure (issue 17): the reboot goes ahead, still loaded.
    after_load(&mut ClosedStdout, true, true).unwrap();
    assert_eq!(
        unloads.get(),
        2,
        "stdout closed, reboot under way: still loaded"
    );
    after_load(&mut Vec::new(), true, true).unwrap();
    assert_eq!(unloads.get(), 2, "the reboot is under way: still loaded");
    let mut out = Vec::new();
    announce(&mut out, &[], &["n".into()], Some("m"));
    assert_eq!(String::from_utf8(out).unwrap(), "trace: note: n\nm\n");
}

#[test]
fn this_machine_has_devices() {
    // Every Linux system registers some devices (cpus, memory blocks...).
    assert!(count_devices(Path::new("/sys/devices"), 0) > 0);
}
