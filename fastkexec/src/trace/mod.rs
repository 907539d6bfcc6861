//! `fastkexec trace`: probes on the old kernel's reboot path, and the trace
//! record they fill, handed to the next kernel (DESIGN.md §1–§3).
//!
//! Steps:
//! 1. load the eBPF object with the `EVENTS` map sized from the device count;
//!    tell the probes the `struct device` offsets (from BTF) and the address
//!    of `reboot_notifier_list` (from /proc/kallsyms);
//! 2. map `EVENTS`, touch every page and read its physical address from
//!    /proc/self/pagemap; write a setup_data header at the start of each page,
//!    chaining them;
//! 3. attach every probe point as fentry/fexit when BTF has the function and
//!    ftrace can patch it (available_filter_functions), else as a
//!    kprobe/kretprobe; a probe that attaches neither way is reported and its
//!    phase marked unseen. Reboot notifier callbacks are found by walking
//!    the notifier list from a never-attached eBPF program run once
//!    (`BPF_PROG_TEST_RUN`) and get a kprobe and a kretprobe each;
//! 4. load the kernel like `fastkexec load`, with the pages reserved, chained
//!    into boot_params and given to the purgatory for its TSC stamps, and
//!    `fastkexec.boot_id=<this boot>` on the new command line;
//! 5. calibrate the TSC against CLOCK_MONOTONIC (pairs at start and right
//!    before the request: the fit spans the whole run), stamp the request,
//!    seal the header, and (with `--exec`) reboot; without `--exec` follow a
//!    reboot started by something else, printing the events seen before this
//!    process stops running (few: the kexec path is one syscall).
//!
//! The pages must stay allocated until `machine_kexec`: with `--exec --force`
//! this process holds them (it is inside `reboot(2)`). Otherwise (following,
//! or `systemctl kexec`, which kills every process) the links are pinned in
//! bpffs, which keeps the programs and their map alive after this process is
//! gone. If the tracer stops without a reboot (Ctrl-C, a failed reboot), it
//! unloads the kernel it loaded: that kernel's boot_params point at pages
//! that are about to be freed.

pub mod btf;
pub mod ebpf;
pub mod preflight;
pub mod support;
pub mod units;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use aya::maps::{Array, MapData};
use aya::programs::{
    kprobe::KProbeLinkId, links::FdLink, trace_point::TracePointLinkId, FEntry, FExit, KProbe,
    RawTracePoint, TracePoint,
};
use aya::{Ebpf, EbpfLoader};
use fastkexec_common::{
    config, flags, state, Event, EventKind, ProbeConfig, EVENTS_PER_PAGE, MAX_EVENT_PAGES,
    NOTIFIER_MAX, NOTIFIER_WALK_SLOTS, OFF_CLAIMED, OFF_PURGATORY, OFF_STATE, OFF_TRAMPOLINE,
    PAGE_SIZE,
};
use serde::Serialize;

use crate::files::lock::KexecLock;
use crate::host::e820::{self, E820Entry, PhysRange};
use crate::ops::load::{self, LoadExtras, LoadMode, LoadOptions, LoadReport, Mode};
use crate::plan::segments::PlanExtras;
use crate::record::clock::{self, Fit, Sample};
use crate::record::handoff::{self, HeaderInfo, CMDLINE_BOOT_ID};
use crate::trace::btf::Btf;
use crate::{host::hostinfo, ops::exec, Error, Result};
use ebpf::ProbePoint;

/// Where follow mode pins the links (bpffs).
pub const PIN_DIR: &str = "/sys/fs/bpf/fastkexec";

/// A deliberate defect for lab tests of the record checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// Flip one byte of the sealed header page (the new kernel must say "torn").
    HeaderByte,
    /// Seal the record with another boot id than the one on the next command
    /// line (the new kernel must say "stale").
    OtherBoot,
}

/// Options of `fastkexec trace`.
#[derive(Debug, Clone)]
pub struct TraceOptions {
    /// How to load the next kernel (as `fastkexec load`).
    pub load: LoadOptions,
    /// Reboot into it once loaded.
    pub exec: bool,
    /// With `exec`: `reboot(2)` at once instead of `systemctl kexec`.
    pub force: bool,
    /// Log every stamp through aya-log.
    pub verbose: bool,
    /// Only the phase-boundary probes: no per-device, no per-notifier stamps.
    pub lean: bool,
    /// Printed on stdout right before the reboot request (a stopwatch mark).
    pub mark: Option<String>,
    pub damage: Option<Damage>,
}

/// How one probe point was attached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attachment {
    pub function: String,
    pub kind: String,
    /// `fentry`, `fexit`, `kprobe`, `kretprobe`, `tracepoint`, or `none`.
    pub how: &'static str,
    /// Why the preferred way (or every way) failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// The pages of the `EVENTS` map, mapped into this process.
struct MappedPages {
    ptr: *mut u8,
    len: usize,
}

impl MappedPages {
    fn map(fd: std::os::fd::BorrowedFd<'_>, pages: usize) -> Result<Self> {
        let len = pages * PAGE_SIZE;
        // SAFETY: mapping a BPF array map fd (BPF_F_MMAPABLE) shared, at a
        // kernel-chosen address, for exactly its value area; the result is
        // checked against MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::Tracer {
                problem: format!(
                    "mmap of the EVENTS map failed: {} (needs a kernel with BPF_F_MMAPABLE, 5.5+)",
                    std::io::Error::last_os_error()
                ),
            });
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }

    fn write(&self, off: usize, bytes: &[u8]) {
        if off.checked_add(bytes.len()).is_some_and(|e| e <= self.len) {
            // SAFETY: the range is inside the mapping (checked above); the
            // probes never write these bytes (user-space fields only).
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(off), bytes.len())
            };
        }
    }

    fn read_u64(&self, off: usize) -> u64 {
        if off.is_multiple_of(8) && off + 8 <= self.len {
            // SAFETY: aligned and inside the mapping; volatile because the
            // probes write it concurrently.
            unsafe { std::ptr::read_volatile(self.ptr.add(off).cast::<u64>()) }
        } else {
            0
        }
    }

    fn read(&self, off: usize, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        if off.checked_add(len).is_some_and(|e| e <= self.len) {
            // SAFETY: inside the mapping; a racing probe write yields a stale
            // or half-written copy, which is only ever displayed.
            unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(off), v.as_mut_ptr(), len) };
        }
        v
    }

    /// Faults every page in so it has a physical page behind it.
    fn touch(&self) {
        for off in (0..self.len).step_by(PAGE_SIZE) {
            // SAFETY: inside the mapping.
            unsafe { std::ptr::read_volatile(self.ptr.add(off)) };
        }
    }
}

impl Drop for MappedPages {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Physical address of each page of `pages` (from /proc/self/pagemap; root only).
fn physical_addresses(pages: &MappedPages) -> Result<Vec<u64>> {
    let path = Path::new("/proc/self/pagemap");
    let f = fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for i in 0..pages.len / PAGE_SIZE {
        let va = pages.ptr as usize + i * PAGE_SIZE;
        let mut entry = [0u8; 8];
        let off = (va / PAGE_SIZE * 8) as u64;
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut entry, off)
            .map_err(|e| Error::io(path, e))?;
        let e = u64::from_le_bytes(entry);
        let pfn = e & ((1 << 55) - 1);
        if e >> 63 == 0 || pfn == 0 {
            return Err(Error::Tracer {
                problem: format!(
                    "{}: page {i} of the trace record has no visible physical address (needs \
                     CAP_SYS_ADMIN: run as root)",
                    path.display()
                ),
            });
        }
        out.push(pfn * PAGE_SIZE as u64);
    }
    Ok(out)
}

fn render(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

/// What one pass over `/proc/kallsyms` found.
#[derive(Debug, Default)]
struct Ksyms {
    /// Addresses of the wanted names (any symbol type).
    names: HashMap<String, u64>,
    /// Text symbols at the wanted addresses.
    at: HashMap<u64, String>,
    /// How many text symbols share each name (by hash: no string per symbol).
    counts: HashMap<u64, u32>,
}

fn name_hash(name: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    h.finish()
}

impl Ksyms {
    /// Text symbols named `name`.
    fn count(&self, name: &str) -> u32 {
        self.counts.get(&name_hash(name)).copied().unwrap_or(0)
    }
}

/// Reads `/proc/kallsyms` once: addresses of the wanted names, the text
/// symbols at the wanted addresses, and name multiplicities.
fn kallsyms(want_names: &[&str], want_addrs: &HashSet<u64>) -> Result<Ksyms> {
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
fn filter_functions(wanted: &[&str]) -> Option<HashSet<String>> {
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
fn ensure_tracefs(notes: &mut Vec<String>) {
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
fn count_devices(dir: &Path, depth: u32) -> usize {
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

fn uname_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn this_boot_id() -> Result<[u8; 16]> {
    let path = Path::new("/proc/sys/kernel/random/boot_id");
    let s = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    handoff::parse_uuid(&s).ok_or_else(|| Error::Parse {
        path: path.to_path_buf(),
        what: "boot id",
        content: s.trim().to_string(),
    })
}

/// `BPF_PROG_TEST_RUN` of a raw tracepoint program with an 8-byte context.
fn test_run(prog_fd: i32) -> Result<()> {
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
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
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

/// Loads the eBPF object (which creates the `EVENTS` map of `pages` pages),
/// maps the map and finds the physical address of every page.
fn allocate_record(pages: usize) -> Result<(Ebpf, MappedPages, Vec<u64>)> {
    let object = ebpf::object().ok_or_else(|| Error::Tracer {
        problem: ebpf::NO_PROBES.into(),
    })?;
    let ebpf = EbpfLoader::new()
        .map_max_entries(ebpf::MAP_EVENTS, pages as u32)
        .load(object)
        .map_err(|e| Error::Tracer {
            problem: format!("loading the eBPF object failed: {}", render(&e)),
        })?;
    let mapped = {
        let Some(aya::maps::Map::Array(data)) = ebpf.map(ebpf::MAP_EVENTS) else {
            return Err(Error::Tracer {
                problem: "the eBPF object has no EVENTS array".into(),
            });
        };
        let data: &MapData = data;
        MappedPages::map(data.fd().as_fd(), pages)?
    };
    mapped.touch();
    let phys = physical_addresses(&mapped)?;
    Ok((ebpf, mapped, phys))
}

/// Where the next kernel can go: its image goes to a fixed physical range in
/// uncompressed mode, but the record's pages come from anywhere in RAM, and
/// the buddy allocator likes the low memory where kernels sit. Returns the
/// smallest shift (a multiple of 2 MiB, what a relocatable x86 kernel
/// accepts) that keeps `footprint` clear of every page and inside RAM.
pub fn phys_delta_clear_of(
    footprint: (u64, u64),
    pages: &[u64],
    memmap: &[E820Entry],
) -> Option<i64> {
    const STEP: u64 = 2 << 20;
    let (start, end) = footprint;
    let clear = |d: u64| {
        let r = PhysRange::new(start.saturating_add(d), end.saturating_add(d));
        !pages
            .iter()
            .any(|&p| r.overlaps(&PhysRange::from_len(p, PAGE_SIZE as u64)))
            && (d == 0 || e820::is_ram(memmap, &r))
    };
    (0..=4096u64)
        .map(|k| k * STEP)
        .find(|&d| clear(d))
        .and_then(|d| i64::try_from(d).ok())
}

/// The next kernel's fixed physical range `[start, end)` in uncompressed
/// mode (its PT_LOADs, bss included), `None` in file mode.
pub fn kernel_footprint(opts: &LoadOptions) -> Result<Option<(u64, u64)>> {
    if opts.mode == Mode::File {
        return Ok(None);
    }
    let mut head = [0u8; 4096];
    {
        use std::io::Read;
        // A regular file under the size limit, opened without blocking (a FIFO would hang).
        let mut f = crate::files::input::open(
            &opts.kernel,
            "the kernel image",
            crate::files::input::MAX_KERNEL_SIZE,
            crate::files::input::MAX_KERNEL_WHY,
        )?
        .file;
        let n = f.read(&mut head).map_err(|e| Error::io(&opts.kernel, e))?;
        head[n..].fill(0);
    }
    if crate::image::bzimage::is_bzimage(&head) {
        // Extracts into the cache now (the load then hits it) unless cached.
        let p = crate::image::prepare::prepare(&opts.kernel, &opts.cache_dir)?;
        return Ok(Some(p.elf.phys_span()));
    }
    if crate::image::vmlinux::is_elf(&head) {
        let bytes = crate::files::input::read(
            &opts.kernel,
            "the kernel image",
            crate::files::input::MAX_KERNEL_SIZE,
            crate::files::input::MAX_KERNEL_WHY,
        )?;
        let v = crate::image::vmlinux::parse_vmlinux(&opts.kernel, &bytes)?;
        return Ok(Some(v.phys_span()));
    }
    Ok(None)
}

/// A loaded, attached tracer with its record pages.
pub struct Tracer {
    ebpf: Ebpf,
    pages: MappedPages,
    phys: Vec<u64>,
    pub attachments: Vec<Attachment>,
    /// Notifier callbacks attached to: (address, symbol).
    pub notifiers: Vec<(u64, String)>,
    attached: u64,
    fentry: u64,
    device_names: bool,
    boot_id: [u8; 16],
    release: String,
    samples: Vec<Sample>,
    /// fentry/fexit links, taken from their programs (always bpf links).
    links: Vec<FdLink>,
    /// Perf-event links left inside their programs (kprobes, the tracepoint):
    /// taken only to pin, since a legacy perf link cannot become an `FdLink`
    /// and would be detached by a failed conversion.
    perf_links: Vec<PerfLink>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    /// Notes for the user (decisions, degraded features).
    pub notes: Vec<String>,
    /// How the next kernel was loaded: `flags::LOAD_*` for the header.
    load_flags: u32,
    /// The unit probes are attached (see `units`).
    units: bool,
}

impl Tracer {
    /// Loads the programs, maps and chains the record pages, attaches the probes.
    pub fn start(verbose: bool, lean: bool) -> Result<Self> {
        let t0 = Instant::now();
        let samples = clock::calibrate_monotonic(32);
        let boot_id = this_boot_id()?;
        let mut notes = Vec::new();

        let btf_path = Path::new("/sys/kernel/btf/vmlinux");
        let btf = if btf_path.exists() {
            match Btf::from_file(btf_path) {
                Ok(b) => Some(b),
                Err(e) => {
                    notes.push(format!(
                        "kernel BTF unusable ({e}): kprobes only, no device names"
                    ));
                    None
                }
            }
        } else {
            notes.push(format!(
                "{} missing: kprobes only, no device names",
                btf_path.display()
            ));
            None
        };
        log::info!("BTF parsed at {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);
        let aya_btf = if btf.is_some() {
            aya::Btf::from_sys_fs().ok()
        } else {
            None
        };

        let devices = count_devices(Path::new("/sys/devices"), 0);
        let pages =
            event_pages_for(devices).saturating_add(if lean { 0 } else { units::record_pages() });
        let (mut ebpf, mapped, phys) = allocate_record(1 + pages as usize)?;
        log::info!(
            "record: {} pages at {:.1} ms",
            phys.len(),
            t0.elapsed().as_secs_f64() * 1e3
        );

        // --- what the probes need to know about this kernel ---
        let syms = kallsyms(&["reboot_notifier_list"], &HashSet::new())?.names;
        log::info!("kallsyms at {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);
        let mut cfg = ProbeConfig {
            flags: if verbose { config::VERBOSE } else { 0 },
            ..ProbeConfig::default()
        };
        let mut device_names = false;
        if let Some(b) = &btf {
            let off = |s: &str, m: &str| b.member_offset(s, m);
            if let (Some(kobj), Some(name), Some(drv), Some(bus), Some(dn), Some(bn)) = (
                off("device", "kobj"),
                off("kobject", "name"),
                off("device", "driver"),
                off("device", "bus"),
                off("device_driver", "name"),
                off("bus_type", "name"),
            ) {
                cfg.dev_name_off = kobj + name;
                cfg.dev_driver_off = drv;
                cfg.dev_bus_off = bus;
                cfg.drv_name_off = dn;
                cfg.bus_name_off = bn;
                cfg.flags |= config::DEVICE_NAMES;
                device_names = true;
            } else {
                notes.push(
                    "BTF lacks a struct device member: devices are stamped without names".into(),
                );
            }
            if !lean {
                if let Err(e) = units::offsets(b, &mut cfg) {
                    notes.push(format!("systemd units are not traced: {e}"));
                }
            }
            let nb_ok = off("notifier_block", "notifier_call") == Some(0)
                && off("notifier_block", "next") == Some(8);
            match (
                syms.get("reboot_notifier_list"),
                off("blocking_notifier_head", "head"),
                nb_ok,
            ) {
                (Some(&list), Some(head), true) if list != 0 => {
                    cfg.reboot_list_head = list + u64::from(head)
                }
                (Some(0), _, _) => notes.push(
                    "/proc/kallsyms hides addresses (kptr_restrict): reboot notifiers are not \
                     traced"
                        .into(),
                ),
                _ => notes.push(
                    "reboot_notifier_list or its layout not found: reboot notifiers are not traced"
                        .into(),
                ),
            }
        }
        Array::<_, ProbeConfig>::try_from(ebpf.map_mut(ebpf::MAP_CONFIG).ok_or_else(|| {
            Error::Tracer {
                problem: "the eBPF object has no CONFIG map".into(),
            }
        })?)
        .and_then(|mut a| a.set(0, cfg, 0))
        .map_err(|e| Error::Tracer {
            problem: format!("writing the probe configuration failed: {}", render(&e)),
        })?;

        // --- chain the record pages ---
        let pages_total = phys.len();
        for (i, _) in phys.iter().enumerate() {
            let next = phys.get(i + 1).copied().unwrap_or(0);
            mapped.write(i * PAGE_SIZE, &next.to_le_bytes());
            if i == 0 {
                // type and len; the rest of the header page is sealed later.
                mapped.write(8, &handoff::event_page_prefix(0)[..8]);
            } else {
                mapped.write(i * PAGE_SIZE + 8, &handoff::event_page_prefix(i as u32));
            }
        }

        let mut tracer = Tracer {
            ebpf,
            pages: mapped,
            phys,
            attachments: Vec::new(),
            notifiers: Vec::new(),
            attached: 0,
            fentry: 0,
            device_names,
            boot_id,
            release: uname_release(),
            samples,
            links: Vec::new(),
            perf_links: Vec::new(),
            logger: None,
            notes,
            load_flags: 0,
            units: false,
        };

        // --- probes ---
        ensure_tracefs(&mut tracer.notes);
        let wanted: Vec<&str> = ebpf::PHASE_PROBES
            .iter()
            .chain([&ebpf::REBOOT_FALLBACK, &ebpf::DEVICE_PROBE])
            .map(|p| p.function)
            .collect();
        let ftrace = filter_functions(&wanted);
        if tracer.attach_tracepoint().is_err() {
            tracer.attach_point(
                &ebpf::REBOOT_FALLBACK,
                btf.as_ref(),
                aya_btf.as_ref(),
                ftrace.as_ref(),
            );
        }
        for p in &ebpf::PHASE_PROBES {
            tracer.attach_point(p, btf.as_ref(), aya_btf.as_ref(), ftrace.as_ref());
        }
        if lean {
            tracer
                .notes
                .push("--lean: no per-device, per-notifier or per-unit stamps".into());
        } else {
            if cfg.flags & config::UNIT_OFFSETS != 0 {
                tracer.attach_units();
            }
            tracer.attach_point(
                &ebpf::DEVICE_PROBE,
                btf.as_ref(),
                aya_btf.as_ref(),
                ftrace.as_ref(),
            );
        }
        log::info!(
            "probes attached at {:.1} ms",
            t0.elapsed().as_secs_f64() * 1e3
        );
        if cfg.reboot_list_head != 0 && !lean {
            if let Err(e) = tracer.attach_notifiers() {
                tracer
                    .notes
                    .push(format!("reboot notifiers are not traced: {e}"));
            }
        }
        if verbose {
            match aya_log::EbpfLogger::init(&mut tracer.ebpf) {
                Ok(l) => tracer.logger = Some(l),
                Err(e) => tracer
                    .notes
                    .push(format!("aya-log unavailable: {}", render(&e))),
            }
        }
        log::info!(
            "tracer ready in {:.1} ms: {} record pages ({} devices), {} probe points",
            t0.elapsed().as_secs_f64() * 1e3,
            pages_total,
            devices,
            tracer.attachments.len()
        );
        Ok(tracer)
    }

    fn attach_tracepoint(&mut self) -> std::result::Result<(), String> {
        let r = (|| -> std::result::Result<TracePointLinkId, String> {
            let p: &mut TracePoint = self
                .ebpf
                .program_mut(ebpf::PROG_TP_REBOOT)
                .ok_or("missing program")?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| render(&e))?;
            p.load().map_err(|e| render(&e))?;
            p.attach("syscalls", "sys_enter_reboot")
                .map_err(|e| render(&e))
        })();
        match r {
            Ok(id) => {
                self.perf_links.push(PerfLink::TracePoint(id));
                self.attached |= EventKind::REBOOT_ENTER.bit();
                self.attachments.push(Attachment {
                    function: "syscalls/sys_enter_reboot".into(),
                    kind: "reboot_enter".into(),
                    how: "tracepoint",
                    why: None,
                });
                Ok(())
            }
            Err(e) => {
                log::info!("tracepoint syscalls/sys_enter_reboot: {e}; trying __do_sys_reboot");
                Err(e)
            }
        }
    }

    /// Attaches one probe point, fentry/fexit first where allowed, else kprobe.
    fn attach_point(
        &mut self,
        p: &ProbePoint,
        btf: Option<&Btf>,
        aya_btf: Option<&aya::Btf>,
        ftrace: Option<&HashSet<String>>,
    ) {
        // The same rule `status` states (tracing_support), applied for real here.
        let mut why = match aya_btf {
            Some(_) => support::fentry_blocker(btf, ftrace, p.function),
            None => Some("no kernel BTF".into()),
        };
        let fentry_ok = why.is_none();
        if let (true, Some(aya_btf)) = (fentry_ok, aya_btf) {
            match self.attach_fentry(p, aya_btf) {
                Ok(link) => {
                    self.links.push(link);
                    self.attached |= p.kind.bit();
                    self.fentry |= p.kind.bit();
                    self.attachments.push(Attachment {
                        function: p.function.into(),
                        kind: p.kind.name().unwrap_or("?").into(),
                        how: if p.exit { "fexit" } else { "fentry" },
                        why: None,
                    });
                    log::info!(
                        "{} {}: {}",
                        if p.exit { "fexit" } else { "fentry" },
                        p.function,
                        p.fentry
                    );
                    return;
                }
                Err(e) => why = Some(format!("fentry/fexit failed: {e}")),
            }
        }
        match self.attach_kprobe(p.kprobe, p.function) {
            Ok(id) => {
                self.perf_links.push(PerfLink::KProbe(p.kprobe, id));
                self.attached |= p.kind.bit();
                log::info!(
                    "{} {} ({})",
                    if p.exit { "kretprobe" } else { "kprobe" },
                    p.function,
                    why.as_deref().unwrap_or("")
                );
                self.attachments.push(Attachment {
                    function: p.function.into(),
                    kind: p.kind.name().unwrap_or("?").into(),
                    how: if p.exit { "kretprobe" } else { "kprobe" },
                    why,
                });
            }
            Err(e) => {
                let why = format!("{}; kprobe failed: {e}", why.unwrap_or_default());
                log::warn!("cannot probe {}: {why}", p.function);
                self.attachments.push(Attachment {
                    function: p.function.into(),
                    kind: p.kind.name().unwrap_or("?").into(),
                    how: "none",
                    why: Some(why),
                });
            }
        }
    }

    fn attach_fentry(
        &mut self,
        p: &ProbePoint,
        btf: &aya::Btf,
    ) -> std::result::Result<FdLink, String> {
        let prog = self.ebpf.program_mut(p.fentry).ok_or("missing program")?;
        if p.exit {
            let f: &mut FExit = prog
                .try_into()
                .map_err(|e: aya::programs::ProgramError| render(&e))?;
            f.load(p.function, btf).map_err(|e| render(&e))?;
            let id = f.attach().map_err(|e| render(&e))?;
            let link = f.take_link(id).map_err(|e| render(&e))?;
            Ok(link.into())
        } else {
            let f: &mut FEntry = prog
                .try_into()
                .map_err(|e: aya::programs::ProgramError| render(&e))?;
            f.load(p.function, btf).map_err(|e| render(&e))?;
            let id = f.attach().map_err(|e| render(&e))?;
            let link = f.take_link(id).map_err(|e| render(&e))?;
            Ok(link.into())
        }
    }

    /// Attaches a kprobe program (loading it the first time); the link stays
    /// in the program (see `perf_links`).
    fn attach_kprobe(
        &mut self,
        prog: &str,
        function: &str,
    ) -> std::result::Result<KProbeLinkId, String> {
        let p: &mut KProbe = self
            .ebpf
            .program_mut(prog)
            .ok_or("missing program")?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| render(&e))?;
        if p.fd().is_err() {
            p.load().map_err(|e| render(&e))?;
        }
        p.attach(function, 0).map_err(|e| render(&e))
    }

    /// Walks `reboot_notifier_list` and probes every callback on it.
    fn attach_notifiers(&mut self) -> std::result::Result<(), String> {
        let fd = {
            let p: &mut RawTracePoint = self
                .ebpf
                .program_mut(ebpf::PROG_WALK_NOTIFIERS)
                .ok_or("missing program")?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| render(&e))?;
            p.load().map_err(|e| render(&e))?;
            p.fd().map_err(|e| render(&e))?.as_fd().as_raw_fd()
        };
        test_run(fd).map_err(|e| e.to_string())?;
        let walk = Array::<_, u64>::try_from(
            self.ebpf
                .map(ebpf::MAP_NOTIFIER_WALK)
                .ok_or("no NOTIFIER_WALK map")?,
        )
        .map_err(|e| render(&e))?;
        let raw = walk.get(&0, 0).map_err(|e| render(&e))?;
        let truncated = raw >> 63 != 0;
        let count = (raw & !(1 << 63)).min(u64::from(NOTIFIER_WALK_SLOTS - 1)) as u32;
        let mut addrs = Vec::new();
        for i in 1..=count {
            addrs.push(walk.get(&i, 0).map_err(|e| render(&e))?);
        }
        if truncated {
            self.notes.push(format!(
                "more than {} reboot notifiers: only the first are traced",
                NOTIFIER_WALK_SLOTS - 1
            ));
        }
        let want: HashSet<u64> = addrs.iter().copied().collect();
        let ksyms = kallsyms(&[], &want).map_err(|e| e.to_string())?;
        let names = &ksyms.at;
        let mut attached_any = false;
        for a in addrs {
            let Some(name) = names.get(&a) else {
                self.notes.push(format!(
                    "reboot notifier at {a:#x} has no symbol: not traced"
                ));
                continue;
            };
            if ksyms.count(name) > 1 {
                self.notes.push(format!(
                    "reboot notifier {name} shares its name with other functions: not traced"
                ));
                continue;
            }
            if self.notifiers.len() >= NOTIFIER_MAX {
                self.notes.push(format!(
                    "more than {NOTIFIER_MAX} reboot notifiers: {name} not traced"
                ));
                continue;
            }
            let enter = self.attach_kprobe(ebpf::PROG_NOTIFIER_ENTER, name);
            let exit = self.attach_kprobe(ebpf::PROG_NOTIFIER_EXIT, name);
            match (enter, exit) {
                (Ok(a1), Ok(a2)) => {
                    self.perf_links
                        .push(PerfLink::KProbe(ebpf::PROG_NOTIFIER_ENTER, a1));
                    self.perf_links
                        .push(PerfLink::KProbe(ebpf::PROG_NOTIFIER_EXIT, a2));
                    self.notifiers.push((a, name.clone()));
                    attached_any = true;
                    log::info!("kprobe+kretprobe on reboot notifier {name}");
                }
                (e1, e2) => {
                    let why = [e1.err(), e2.err()]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>();
                    self.notes.push(format!(
                        "reboot notifier {name} not traced: {}",
                        why.join("; ")
                    ));
                }
            }
        }
        if attached_any {
            self.attached |= EventKind::NOTIFIER_ENTER.bit() | EventKind::NOTIFIER_EXIT.bit();
        }
        self.attachments.push(Attachment {
            function: "reboot notifier callbacks".into(),
            kind: "notifier_enter".into(),
            how: if attached_any { "kprobe" } else { "none" },
            why: Some(format!(
                "{} on reboot_notifier_list",
                self.notifiers
                    .iter()
                    .map(|(_, n)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        });
        Ok(())
    }

    /// Physical ranges of the record pages (no kexec segment may touch them).
    pub fn reserved(&self) -> Vec<(u64, u64)> {
        self.phys.iter().map(|&p| (p, PAGE_SIZE as u64)).collect()
    }

    /// What the load must add: reserved pages, the chain, the TSC target,
    /// and the boot id on the command line.
    pub fn load_extras(&self) -> LoadExtras {
        let head = self.phys.first().copied().unwrap_or(0);
        LoadExtras {
            reserved: self.reserved(),
            plan: PlanExtras {
                setup_data: Vec::new(),
                setup_data_tail: head,
                tsc_out: head + OFF_PURGATORY as u64,
            },
            trampoline_tsc_out: head + OFF_TRAMPOLINE as u64,
            cmdline_append: Some(format!(
                "{CMDLINE_BOOT_ID}={}",
                handoff::format_uuid(&self.boot_id)
            )),
            phys_delta: 0,
        }
    }

    /// Writes the header page: calibration (over every sample since `start`),
    /// probe set, notifier symbols, the request stamp; then the checksum.
    pub fn seal(&mut self, request: Option<(u64, u64)>, damage: Option<Damage>) -> Result<()> {
        self.samples.extend(clock::calibrate_monotonic(32));
        let calib = Fit::from_samples(&self.samples).ok_or_else(|| Error::Tracer {
            problem: "the TSC does not advance against CLOCK_MONOTONIC: no clock to put the \
                      trace on"
                .into(),
        })?;
        let mut fl = self.load_flags;
        if self.device_names {
            fl |= flags::DEVICE_NAMES;
        }
        let (request_tsc, request_mono_ns) = match request {
            Some(r) => {
                fl |= flags::REQUEST_STAMPED;
                r
            }
            None => {
                fl |= flags::FOLLOW;
                (0, 0)
            }
        };
        let mut boot_id = self.boot_id;
        if damage == Some(Damage::OtherBoot) {
            boot_id[0] ^= 0xff;
        }
        let info = HeaderInfo {
            page_count: self.phys.len() as u32,
            flags: fl,
            boot_id,
            kernel_release: self.release.clone(),
            attached: self.attached,
            fentry: self.fentry,
            request_tsc,
            request_mono_ns,
            calib,
            notifiers: self.notifiers.clone(),
        };
        let page = handoff::encode_header(&info);
        // Everything from the setup_data type up to the probe counters.
        self.pages.write(8, page.get(8..OFF_CLAIMED).unwrap_or(&[]));
        if damage == Some(Damage::HeaderByte) {
            let b = page.get(100).copied().unwrap_or(0) ^ 0x01;
            self.pages.write(100, &[b]);
        }
        log::info!(
            "record sealed: TSC {:.6} MHz (fit over {} pairs, worst residual {} ns)",
            calib.tsc_hz() / 1e6,
            self.samples.len(),
            calib.err_ns
        );
        Ok(())
    }

    /// Events stored so far and the number claimed.
    pub fn events(&self) -> (u64, Vec<Event>) {
        let claimed = self.pages.read_u64(OFF_CLAIMED);
        let cap = (self.phys.len() as u64 - 1) * EVENTS_PER_PAGE as u64;
        let mut out = Vec::new();
        for slot in 0..claimed.min(cap) {
            let (page, off) = handoff::slot_place(slot);
            let bytes = self.pages.read(
                page as usize * PAGE_SIZE + off,
                std::mem::size_of::<Event>(),
            );
            let mut e = Event::ZERO;
            e.kind = u32::from_le_bytes(bytes[0..4].try_into().unwrap_or_default());
            e.cpu = u32::from_le_bytes(bytes[4..8].try_into().unwrap_or_default());
            e.ts_ns = u64::from_le_bytes(bytes[8..16].try_into().unwrap_or_default());
            e.arg = u64::from_le_bytes(bytes[16..24].try_into().unwrap_or_default());
            e.name.copy_from_slice(&bytes[24..88]);
            out.push(e);
        }
        (claimed, out)
    }

    /// The probes' state bits.
    pub fn state(&self) -> u64 {
        self.pages.read_u64(OFF_STATE)
    }

    /// Drains aya-log records (with `-v`) into the log.
    pub fn flush_log(&mut self) {
        if let Some(l) = &mut self.logger {
            l.flush();
        }
    }

    /// Pins every link under `dir` (bpffs) so the probes, and the record
    /// pages their programs hold, outlive this process.
    pub fn pin(&mut self, dir: &Path) -> Result<()> {
        let unpinnable = || Error::Tracer {
            problem: "this kernel's kprobe/tracepoint links cannot be pinned (no BPF perf links \
                      before 5.15): use --exec --force, so this process holds the probes until \
                      the reboot"
                .into(),
        };
        for l in std::mem::take(&mut self.perf_links) {
            let link = match l {
                PerfLink::KProbe(prog, id) => {
                    let p: &mut KProbe = self
                        .ebpf
                        .program_mut(prog)
                        .and_then(|p| p.try_into().ok())
                        .ok_or_else(unpinnable)?;
                    let link = p.take_link(id).map_err(|_| unpinnable())?;
                    FdLink::try_from(link).map_err(|_| unpinnable())?
                }
                PerfLink::TracePoint(id) => {
                    let p: &mut TracePoint = self
                        .ebpf
                        .program_mut(ebpf::PROG_TP_REBOOT)
                        .and_then(|p| p.try_into().ok())
                        .ok_or_else(unpinnable)?;
                    let link = p.take_link(id).map_err(|_| unpinnable())?;
                    FdLink::try_from(link).map_err(|_| unpinnable())?
                }
            };
            self.links.push(link);
        }
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        for (i, link) in std::mem::take(&mut self.links).into_iter().enumerate() {
            let path = dir.join(format!("link{i}"));
            link.pin(&path).map_err(|e| Error::Tracer {
                problem: format!(
                    "pinning {} failed: {} (is bpffs mounted at /sys/fs/bpf?)",
                    path.display(),
                    render(&e)
                ),
            })?;
        }
        Ok(())
    }
}

/// A perf-event link still owned by its program.
#[derive(Debug)]
enum PerfLink {
    KProbe(&'static str, KProbeLinkId),
    TracePoint(TracePointLinkId),
}

/// Removes pins a previous follow-mode tracer left in this boot.
pub fn unpin(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let _ = fs::remove_file(e.path());
        }
    }
    let _ = fs::remove_dir(dir);
}

/// One event as a line, relative to `base_ns` (CLOCK_MONOTONIC).
pub fn format_event(e: &Event, base_ns: u64) -> String {
    let t = e.ts_ns.saturating_sub(base_ns) as f64 / 1e6;
    let kind = e.kind().name().unwrap_or("?");
    let what = match e.kind() {
        EventKind::DEVICE_ENTER | EventKind::DEVICE_EXIT => format!(
            "{} ({}, {})",
            String::from_utf8_lossy(e.device_name()),
            String::from_utf8_lossy(e.bus_name()),
            String::from_utf8_lossy(e.driver_name())
        ),
        EventKind::NOTIFIER_ENTER => format!("{:#x}", e.arg),
        _ => format!("{} cpu {}", String::from_utf8_lossy(e.name_bytes()), e.cpu),
    };
    format!("{t:>10.3} ms  {kind:<28} {what}")
}

/// Set by the signal handler: the signal that asked follow mode to stop.
static STOP: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    STOP.store(sig, Ordering::SeqCst);
}

/// SIGHUP is not among them: a terminal that hangs up (an SSH session dropped by the very
/// shutdown being followed) must not detach the probes or unload the kernel. The CLI ignores
/// it (see [`exec::ignore_hangup`]).
fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installing an async-signal-safe handler (one atomic store).
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// Undoes a load of `trace` when dropped armed: the loaded kernel's boot_params point at the
/// trace pages, which die with this process (or with the pins), so a later `systemctl kexec`
/// must not find it. Every way out of [`run`] after the load (an error from `?`, a failed
/// reboot, Ctrl-C) drops it; only a reboot that is under way disarms it.
pub struct LoadedGuard<F: FnMut()> {
    undo: Option<F>,
}

impl<F: FnMut()> LoadedGuard<F> {
    pub fn new(undo: F) -> Self {
        Self { undo: Some(undo) }
    }

    /// The reboot is under way: the kernel must stay loaded.
    pub fn disarm(mut self) {
        self.undo = None;
    }
}

impl<F: FnMut()> Drop for LoadedGuard<F> {
    fn drop(&mut self) {
        if let Some(mut undo) = self.undo.take() {
            undo();
        }
    }
}

/// What the probes are, printed before this process disappears into reboot(2).
fn announce(out: &mut dyn Write, attachments: &[Attachment], notes: &[String], mark: Option<&str>) {
    for a in attachments {
        say(
            out,
            format_args!(
                "trace: {:<10} {}{}",
                if a.how == "none" { "UNSEEN" } else { a.how },
                a.function,
                a.why
                    .as_deref()
                    .map(|w| format!(" ({w})"))
                    .unwrap_or_default()
            ),
        );
    }
    for n in notes {
        say(out, format_args!("trace: note: {n}"));
    }
    if let Some(m) = mark {
        say(out, format_args!("{m}"));
    }
}

/// What `run` did, for the caller to print.
#[derive(Debug, Serialize)]
pub struct TraceSummary {
    pub load: LoadReport,
    /// What stamps each phase's boundaries, given the probes that attached.
    pub phases: Vec<preflight::PhaseSource>,
    pub attachments: Vec<Attachment>,
    pub notifiers: Vec<String>,
    pub record_pages: usize,
    pub notes: Vec<String>,
}

/// One line of progress on `out`, best effort: a terminal that hangs up or a reader that goes
/// away must not stop the trace half-way (the loaded kernel points at this process's pages).
fn say(out: &mut dyn Write, line: std::fmt::Arguments<'_>) {
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// Runs `fastkexec trace`. With `exec` it returns only if the reboot failed. What it writes
/// on `out` is progress for a human: a failed write is ignored.
/// With `opts.load.dry_run` (a preflight): every probe is attached for real and
/// the load is planned, then everything is detached and nothing is loaded.
pub fn run(opts: &TraceOptions, out: &mut dyn Write) -> Result<TraceSummary> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::NotPrivileged {
            action: "tracing the reboot",
            detail: "the probes, /proc/self/pagemap and kexec all need root".into(),
        });
    }
    // Every mode but file carries the record; auto decides as `load` does.
    let lopts = opts.load.clone();
    let footprint = kernel_footprint(&lopts)?;
    let mut tracer = Tracer::start(opts.verbose, opts.lean)?;
    let mut extras = tracer.load_extras();
    if let Some(fp) = footprint {
        let host = hostinfo::read(&lopts.root)?;
        // A staged load ignores this: its kernel goes into the crashkernel
        // reservation, where no page of ours can be.
        extras.phys_delta =
            phys_delta_clear_of(fp, &tracer.phys, &host.memmap).ok_or_else(|| Error::Tracer {
                problem: "no 2 MiB-aligned place in RAM for the next kernel clear of the trace \
                          record's pages"
                    .into(),
            })?;
    }
    // One lock from the load to the reboot (or the unload): nothing else changes kexec state
    // in between. Follow mode lets go once loaded (see below).
    let lock = if lopts.dry_run {
        None
    } else {
        Some(KexecLock::acquire(&lopts.root, "trace")?)
    };
    let report = match &lock {
        Some(l) => load::load_locked(&lopts, &extras, l)?,
        None => load::load_with(&lopts, &extras)?,
    };
    tracer.load_flags = handoff::load_mode_flags(report.mode);
    if extras.phys_delta != 0 && report.mode == LoadMode::Uncompressed {
        tracer.notes.push(format!(
            "a trace page lay in the next kernel's physical range: the kernel is loaded {:#x} \
             higher",
            extras.phys_delta
        ));
    }
    let summary = |t: &Tracer, load: LoadReport| TraceSummary {
        phases: preflight::phase_sources(&t.attachments, load.mode),
        load,
        attachments: t.attachments.clone(),
        notifiers: t.notifiers.iter().map(|(_, n)| n.clone()).collect(),
        record_pages: t.phys.len(),
        notes: t.notes.clone(),
    };
    let Some(lock) = lock else {
        // A dry run: dropping the tracer detaches every probe; the plan loaded nothing.
        return Ok(summary(&tracer, report));
    };
    // From here on every way out but a reboot under way unloads (issue 13, defect 4).
    let root = lopts.root.clone();
    let lock = std::cell::RefCell::new(Some(lock));
    let loaded = LoadedGuard::new(|| {
        unpin(Path::new(PIN_DIR));
        // Follow mode has let go of the lock while it waited: take it again.
        let held = match lock.borrow_mut().take() {
            Some(l) => Ok(l),
            None => KexecLock::acquire(&root, "trace (unloading)"),
        };
        if let Err(e) = held.and_then(|l| exec::unload_locked(&l)) {
            log::warn!(
                "could not unload the kernel trace loaded ({e}); run `fastkexec unload` before \
                 any `systemctl kexec`: its boot_params point at freed trace pages"
            );
        }
    });

    if opts.exec {
        let path = exec::choose_path(Path::new("/"), opts.force);
        if path == exec::ExecPath::Systemctl {
            // systemd kills every process before the reboot: keep the probes
            // and pages alive in bpffs.
            unpin(Path::new(PIN_DIR));
            tracer.pin(Path::new(PIN_DIR))?;
        }
        // Best effort: a terminal gone now must not stop the reboot (issue 17).
        announce(out, &tracer.attachments, &tracer.notes, None);
        // The request is stamped once exec's checks have passed: the blackout starts there.
        let mut go = || {
            if let Some(m) = opts.mark.as_deref() {
                say(out, format_args!("{m}"));
            }
            tracer.arm_units()?;
            let request = (clock::rdtsc(), clock::monotonic_ns());
            tracer.seal(Some(request), opts.damage)
        };
        match lock.borrow().as_ref() {
            Some(l) => exec::exec_locked(opts.force, l, &mut go)?,
            None => exec::exec(opts.force, &mut go)?,
        }
        // systemd accepted `systemctl kexec`: the shutdown is under way.
        loaded.disarm();
        return Ok(summary(&tracer, report));
    }

    // Follow mode.
    tracer.arm_units()?;
    unpin(Path::new(PIN_DIR));
    tracer.pin(Path::new(PIN_DIR))?;
    tracer.seal(None, opts.damage)?;
    // Waiting may take hours, and the reboot may be started by `fastkexec exec`, which takes
    // the lock: let go of it now (the guard takes it again to unload).
    drop(lock.borrow_mut().take());
    install_signal_handlers();
    say(
        out,
        format_args!(
            "trace: attached ({} probe points), kernel loaded ({}); waiting for a kexec reboot \
             (e.g. `systemctl kexec`); Ctrl-C detaches and unloads",
            tracer
                .attachments
                .iter()
                .filter(|a| a.how != "none")
                .count(),
            report.mode
        ),
    );
    let base = clock::monotonic_ns();
    let mut shown = 0usize;
    let mut last_seal = Instant::now();
    loop {
        tracer.flush_log();
        let (_, events) = tracer.events();
        for e in events.iter().skip(shown) {
            say(out, format_args!("{}", format_event(e, base)));
        }
        shown = events.len();
        // Refresh the calibration while nothing happens (NTP slews
        // CLOCK_MONOTONIC); once the reboot runs, leave the header alone.
        if tracer.state() & state::KEXEC == 0 && last_seal.elapsed() > Duration::from_secs(1) {
            tracer.seal(None, opts.damage)?;
            last_seal = Instant::now();
        }
        match STOP.load(Ordering::SeqCst) {
            0 => {}
            libc::SIGTERM if tracer.state() != 0 || exec::ensure_loaded(Path::new("/")).is_ok() => {
                // Most likely the shutdown that ends in the kexec: the pins
                // keep everything alive. Disarmed first: only Ctrl-C unloads.
                loaded.disarm();
                say(
                    out,
                    format_args!("trace: terminated; the probes stay pinned for the reboot"),
                );
                return Ok(summary(&tracer, report));
            }
            _ => {
                drop(loaded);
                say(
                    out,
                    format_args!(
                        "trace: detached; the loaded kernel was unloaded (its boot_params \
                         pointed at the trace pages)"
                    ),
                );
                return Ok(summary(&tracer, report));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
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
}
