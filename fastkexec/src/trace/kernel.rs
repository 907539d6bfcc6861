//! What the tracer reads from the running kernel: kallsyms, ftrace's filter list, tracefs,
//! the device count that sizes the record, the boot id, and the one-shot notifier walk.

use super::*;

/// What one pass over `/proc/kallsyms` found.
#[derive(Debug, Default)]
pub(super) struct Ksyms {
    /// Addresses of the wanted names (any symbol type).
    pub(super) names: HashMap<String, u64>,
    /// Text symbols at the wanted addresses.
    pub(super) at: HashMap<u64, String>,
    /// How many text symbols share each name (by hash: no string per symbol).
    pub(super) counts: HashMap<u64, u32>,
}

pub(super) fn name_hash(name: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    h.finish()
}

impl Ksyms {
    /// Text symbols named `name`.
    pub(super) fn count(&self, name: &str) -> u32 {
        self.counts.get(&name_hash(name)).copied().unwrap_or(0)
    }
}

/// Reads `/proc/kallsyms` once: addresses of the wanted names, the text
/// symbols at the wanted addresses, and name multiplicities.
pub(super) fn kallsyms(want_names: &[&str], want_addrs: &HashSet<u64>) -> Result<Ksyms> {
    let path = Path::new("/proc/kallsyms");
    let f = fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut k = Ksyms::default();
    let mut line = String::new();
    let mut r = BufReader::with_capacity(1 << 16, f);
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(Error::io(path, e)),
        }
        let mut it = line.split_whitespace();
        let (Some(addr), Some(kind), Some(name)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        if want_names.contains(&name) {
            if let Ok(a) = u64::from_str_radix(addr, 16) {
                k.names.insert(name.to_string(), a);
            }
        }
        if !want_addrs.is_empty() && matches!(kind, "t" | "T") {
            *k.counts.entry(name_hash(name)).or_default() += 1;
            if let Ok(a) = u64::from_str_radix(addr, 16) {
                if want_addrs.contains(&a) {
                    k.at.insert(a, name.to_string());
                }
            }
        } else if want_addrs.is_empty() && k.names.len() == want_names.len() {
            break;
        }
    }
    Ok(k)
}

/// Names listed in ftrace's available_filter_functions (fentry needs them);
/// `None` when tracefs is not mounted (then fentry is simply tried).
pub(super) fn filter_functions(wanted: &[&str]) -> Option<HashSet<String>> {
    for p in [
        "/sys/kernel/tracing/available_filter_functions",
        "/sys/kernel/debug/tracing/available_filter_functions",
    ] {
        let Ok(f) = fs::File::open(p) else { continue };
        let mut out = HashSet::new();
        for line in BufReader::new(f).lines().map_while(|l| l.ok()) {
            let name = line.split_whitespace().next().unwrap_or("");
            if wanted.contains(&name) {
                out.insert(name.to_string());
            }
        }
        return Some(out);
    }
    None
}

/// Mounts tracefs at /sys/kernel/tracing when no tracefs is visible: the
/// syscall tracepoint's id and available_filter_functions live there (systemd
/// mounts it at boot; a bare initramfs does not).
pub(super) fn ensure_tracefs(notes: &mut Vec<String>) {
    let target = Path::new("/sys/kernel/tracing");
    if target.join("events").exists() || Path::new("/sys/kernel/debug/tracing/events").exists() {
        return;
    }
    let (Ok(src), Ok(dst), Ok(fs_type)) = (
        std::ffi::CString::new("tracefs"),
        std::ffi::CString::new("/sys/kernel/tracing"),
        std::ffi::CString::new("tracefs"),
    ) else {
        return;
    };
    // SAFETY: mount(2) with NUL-terminated strings that outlive the call and no data.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            fs_type.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        notes.push("mounted tracefs at /sys/kernel/tracing (for the syscall tracepoint)".into());
    } else {
        notes.push(format!(
            "tracefs is not mounted and mounting it failed ({}): reboot(2) is probed by kprobe",
            std::io::Error::last_os_error()
        ));
    }
}

/// Counts the registered devices (`uevent` files under /sys/devices).
pub(super) fn count_devices(dir: &Path, depth: u32) -> usize {
    if depth > 32 {
        return 0;
    }
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    let mut n = 0;
    for e in rd.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            n += count_devices(&e.path(), depth + 1);
        } else if ft.is_file() && e.file_name() == "uevent" {
            n += 1;
        }
    }
    n
}

/// Event pages for a machine with `devices` devices: a stamp per device
/// (twice over, for devices `device_shutdown` meets more than once), the
/// notifiers and the phase stamps, and room to spare.
pub fn event_pages_for(devices: usize) -> u32 {
    let events = devices
        .saturating_mul(2)
        .saturating_add(4 * NOTIFIER_MAX + 64);
    let pages = events.div_ceil(EVENTS_PER_PAGE);
    u32::try_from(pages)
        .unwrap_or(u32::MAX)
        .clamp(4, MAX_EVENT_PAGES)
}

pub(super) fn uname_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub(super) fn this_boot_id() -> Result<[u8; 16]> {
    let path = Path::new("/proc/sys/kernel/random/boot_id");
    let s = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    handoff::parse_uuid(&s).ok_or_else(|| Error::Parse {
        path: path.to_path_buf(),
        what: "boot id",
        content: s.trim().to_string(),
    })
}

/// `BPF_PROG_TEST_RUN` of a raw tracepoint program with an 8-byte context.
pub(super) fn test_run(prog_fd: i32) -> Result<()> {
    #[repr(C)]
    #[derive(Default)]
    struct TestRun {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        _pad: u32,
    }
    pub(super) const BPF_PROG_TEST_RUN: libc::c_long = 10;
    let ctx = [0u64; 1];
    let attr = TestRun {
        prog_fd: prog_fd as u32,
        ctx_size_in: 8,
        ctx_in: ctx.as_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: bpf(BPF_PROG_TEST_RUN) with a fully initialised attr whose
    // pointers (ctx) outlive the call; the kernel only reads ctx.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &attr as *const TestRun,
            std::mem::size_of::<TestRun>(),
        )
    };
    if rc != 0 {
        return Err(Error::Tracer {
            problem: format!(
                "BPF_PROG_TEST_RUN of the notifier walk failed: {}",
                std::io::Error::last_os_error()
            ),
        });
    }
    Ok(())
}
