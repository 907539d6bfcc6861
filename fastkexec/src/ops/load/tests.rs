use super::*;
use crate::host::status::{Availability, Modes};
use std::fs;

fn st(file_blockers: &[&str], unc_blockers: &[&str]) -> Status {
    let av = |b: &[&str]| Availability {
        allowed: b.is_empty(),
        blockers: b.iter().map(|s| s.to_string()).collect(),
        caveats: vec![],
    };
    Status {
        modes: Modes {
            file: av(file_blockers),
            uncompressed: av(unc_blockers),
            staged: av(&["no crashkernel reservation"]),
        },
        ..Status::default()
    }
}

#[test]
fn auto_prefers_uncompressed_and_names_the_blocker_otherwise() {
    let (m, why, _) = choose_mode(Mode::Auto, &st(&[], &[]), true, false).unwrap();
    assert_eq!(m, LoadMode::Uncompressed);
    assert!(why.contains("allows kexec_load"), "{why}");

    let locked = st(&[], &["lockdown is 'integrity'"]);
    let (m, why, _) = choose_mode(Mode::Auto, &locked, true, false).unwrap();
    assert_eq!(m, LoadMode::File);
    assert!(why.contains("lockdown is 'integrity'"), "{why}");

    // A vmlinux under lockdown has no way in.
    let e = choose_mode(Mode::Auto, &locked, false, false).unwrap_err();
    assert!(e.to_string().contains("cannot load a vmlinux"), "{e}");

    let disabled = st(&["kexec_load_disabled=1"], &["kexec_load_disabled=1"]);
    let e = choose_mode(Mode::Auto, &disabled, true, false).unwrap_err();
    assert!(e.to_string().contains("kexec_load_disabled"), "{e}");
}

#[test]
fn explicit_modes_are_checked() {
    let locked = st(&[], &["lockdown is 'integrity'"]);
    let e = choose_mode(Mode::Uncompressed, &locked, true, false).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("uncompressed mode is not possible"),
        "{e}"
    );
    let e = choose_mode(Mode::File, &st(&[], &[]), false, false).unwrap_err();
    assert!(e.to_string().contains("only bzImages"), "{e}");
    let (m, _, _) = choose_mode(Mode::File, &locked, true, false).unwrap();
    assert_eq!(m, LoadMode::File);
}

#[test]
fn dry_run_plans_anyway_and_says_why_it_would_fail() {
    let none = st(&["no kexec support"], &["no kexec support"]);
    let (m, _, notes) = choose_mode(Mode::Auto, &none, true, true).unwrap();
    assert_eq!(m, LoadMode::Uncompressed);
    assert!(notes[0].contains("no kexec support"), "{notes:?}");
    let (m, _, notes) = choose_mode(Mode::File, &none, true, true).unwrap();
    assert_eq!(m, LoadMode::File);
    assert!(notes[0].contains("file mode would fail"), "{notes:?}");
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            fs::create_dir_all(&dest).unwrap();
            copy_tree(&entry.path(), &dest);
        } else {
            fs::copy(entry.path(), dest).unwrap();
        }
    }
}

/// A machine tree: the kexec/proc side of a status fixture plus a QEMU guest's firmware
/// memory map and zero page.
fn machine(status_case: &str) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    copy_tree(&fixtures().join("status").join(status_case), t.path());
    copy_tree(&fixtures().join("host/qemu-seabios"), t.path());
    t
}

fn opts(root: &Path, kernel: &str, mode: Mode, cache: &Path) -> LoadOptions {
    LoadOptions {
        kernel: fixtures().join(kernel),
        initrd: None,
        cmdline: CmdlineSource::ReuseCmdline {
            append: Some("initcall_debug".into()),
        },
        mode,
        dry_run: true,
        verify: false,
        verify_wrong_sum_for_test: false,
        cache_dir: cache.to_path_buf(),
        root: root.to_path_buf(),
    }
}

fn files_under(dir: &Path) -> usize {
    fs::read_dir(dir).map_or(0, |d| d.count())
}

/// A machine tree and an empty cache directory, for dry-run loads of a fixture kernel.
struct Machine {
    root: tempfile::TempDir,
    cache: tempfile::TempDir,
}

impl Machine {
    fn new(root: tempfile::TempDir) -> Self {
        let cache = tempfile::tempdir().unwrap();
        Self { root, cache }
    }

    fn opts(&self, kernel: &str, mode: Mode) -> LoadOptions {
        opts(self.root.path(), kernel, mode, self.cache.path())
    }

    fn load(&self, kernel: &str, mode: Mode) -> Result<LoadReport> {
        load(&self.opts(kernel, mode))
    }

    /// Not a dry run: what a real load on this machine would do first.
    fn load_for_real(&self, kernel: &str, mode: Mode) -> Result<LoadReport> {
        let mut o = self.opts(kernel, mode);
        o.dry_run = false;
        load(&o)
    }
}

#[test]
fn dry_run_uncompressed_from_bzimage_plans_and_writes_nothing() {
    // The "unprivileged" tree has no CAP_SYS_BOOT: a dry run must not care.
    let m = Machine::new(machine("unprivileged"));
    let mut o = m.opts("bzImage-tiny.zstd", Mode::Auto);
    o.initrd = Some(fixtures().join("pattern-600k.lzo"));
    let r = load(&o).unwrap();
    assert_eq!(r.mode, LoadMode::Uncompressed);
    assert!(r.dry_run && !r.loaded);
    assert_eq!(r.kernel_format, "bzImage");
    assert_eq!(r.compression.as_deref(), Some("zstd"));
    assert_eq!(r.cmdline, "root=/dev/sda2 quiet initcall_debug");
    assert_eq!(
        r.initrd_size,
        Some(fs::metadata(o.initrd.unwrap()).unwrap().len())
    );
    let plan = r.plan.as_deref().unwrap();
    assert!(!plan.is_empty());
    assert!(r.syscall.starts_with("kexec_load(entry="), "{}", r.syscall);
    assert!(r.notes.iter().any(|n| n.contains("KASLR")), "{:?}", r.notes);
    assert_eq!(
        files_under(m.cache.path()),
        0,
        "a dry run must not fill the cache"
    );
    let text = r.to_string();
    assert!(text.contains("dry run, nothing loaded"), "{text}");
    assert!(text.contains("plan:"), "{text}");
}

#[test]
fn dry_run_file_mode_describes_the_syscall() {
    let m = Machine::new(machine("lockdown"));
    let r = m.load("bzImage-tiny.gzip", Mode::Auto).unwrap();
    assert_eq!(r.mode, LoadMode::File);
    assert!(
        r.mode_reason.contains("lockdown is 'integrity'"),
        "{}",
        r.mode_reason
    );
    assert!(r.plan.is_none());
    assert!(
        r.syscall.contains("initrd=-1") && r.syscall.contains("flags=0x4"),
        "{}",
        r.syscall
    );
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["mode"], "file");
    assert_eq!(json["loaded"], false);
}

#[test]
fn dry_run_accepts_a_vmlinux_directly() {
    let m = Machine::new(machine("plain"));
    let r = m.load("vmlinux-tiny.elf", Mode::Uncompressed).unwrap();
    assert_eq!(r.kernel_format, "vmlinux ELF");
    assert_eq!(
        r.vmlinux.as_deref(),
        Some(fixtures().join("vmlinux-tiny.elf").as_path())
    );
    assert!(r.plan.is_some());
}

/// Special files are refused by name before anything is read: a FIFO would block `load`
/// forever, /dev/zero would grow until the OOM killer ends it.
#[test]
fn special_files_are_refused_by_name_without_blocking() {
    let m = Machine::new(machine("plain"));
    let d = tempfile::tempdir().unwrap();
    let fifo = d.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let zero = PathBuf::from("/dev/zero");
    let base = |mode| m.opts("bzImage-tiny.zstd", mode);
    let mut cases = Vec::new();
    for (kernel, initrd, mode) in [
        (Some(&fifo), None, Mode::Uncompressed),
        (Some(&zero), None, Mode::Uncompressed),
        (None, Some(&fifo), Mode::Uncompressed),
        (None, Some(&fifo), Mode::File),
        (None, Some(&zero), Mode::Uncompressed),
    ] {
        let mut o = base(mode);
        if let Some(k) = kernel {
            o.kernel = k.clone();
        }
        o.initrd = initrd.cloned();
        let named = kernel.or(initrd).unwrap().clone();
        cases.push((o, named));
    }
    for (o, named) in cases {
        let (tx, rx) = std::sync::mpsc::channel();
        let what = format!("{:?} kernel {:?} initrd {:?}", o.mode, o.kernel, o.initrd);
        std::thread::spawn(move || {
            let _ = tx.send(load(&o).map(|_| ()).map_err(|e| e.to_string()));
        });
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("{what}: still blocked after 10 s"));
        let err = got.expect_err(&what);
        assert!(err.contains(&*named.to_string_lossy()), "{what}: {err}");
        assert!(err.contains("not a regular file"), "{what}: {err}");
    }
}

#[test]
fn refusals_happen_before_any_syscall() {
    let m = Machine::new(machine("plain"));
    // File mode cannot take a vmlinux.
    let e = m.load("vmlinux-tiny.elf", Mode::File).unwrap_err();
    assert!(matches!(e, Error::ModeUnavailable { .. }), "{e}");
    // Not a kernel at all.
    let e = m.load("pattern-600k.lzo", Mode::Auto).unwrap_err();
    assert!(matches!(e, Error::UnsupportedImage { .. }), "{e}");
    // A missing initrd is named.
    let mut o = m.opts("bzImage-tiny.gzip", Mode::File);
    o.initrd = Some(fixtures().join("no-such-initrd"));
    let e = load(&o).unwrap_err();
    assert!(e.to_string().contains("no-such-initrd"), "{e}");
    // Without privilege a real load stops before touching the kernel.
    let unpriv = Machine::new(machine("unprivileged"));
    let e = unpriv.load_for_real("bzImage-tiny.gzip", Mode::File);
    assert!(matches!(e, Err(Error::NotPrivileged { .. })), "{e:?}");
    // kexec_load_disabled stops a real load, with the reason.
    let disabled = Machine::new(machine("disabled"));
    let e = disabled
        .load_for_real("bzImage-tiny.gzip", Mode::Auto)
        .unwrap_err();
    assert!(e.to_string().contains("kexec_load_disabled"), "{e}");
}

/// A QEMU guest tree with a 256 MiB crashkernel reservation at 0x65000000, idle or
/// holding someone's crash kernel.
fn machine_with_reservation(crash_loaded: bool) -> tempfile::TempDir {
    let t = machine("plain");
    let iomem = fs::read_to_string(t.path().join("proc/iomem")).unwrap();
    let ram = "00100000-7ffdffff : System RAM\n";
    assert!(iomem.contains(ram));
    let iomem = iomem.replace(ram, &format!("{ram}  65000000-74ffffff : Crash kernel\n"));
    fs::write(t.path().join("proc/iomem"), iomem).unwrap();
    let flag = if crash_loaded { "1\n" } else { "0\n" };
    fs::write(t.path().join("sys/kernel/kexec_crash_loaded"), flag).unwrap();
    t
}

#[test]
fn auto_stages_into_an_idle_reservation() {
    let m = Machine::new(machine_with_reservation(false));
    let r = m.load("bzImage-tiny.zstd", Mode::Auto).unwrap();
    assert_eq!(r.mode, LoadMode::Staged);
    assert!(r.mode_reason.contains("idle"), "{}", r.mode_reason);
    let st = r.staged.as_ref().unwrap();
    assert_eq!(st.reservation_start, 0x6500_0000);
    assert_eq!(st.reservation_end, 0x7500_0000);
    assert!(!st.displaced_crash_kernel);
    assert!(
        r.syscall.contains("flags=0x3e0001") && r.syscall.contains("then kexec_load"),
        "{}",
        r.syscall
    );
    assert!(r.notes.iter().any(|n| n.contains("kdump is displaced")));
    let text = r.to_string();
    assert!(text.contains("KEXEC_ON_CRASH"), "{text}");
    assert!(text.contains("trampoline"), "{text}");
    assert_eq!(serde_json::to_value(&r).unwrap()["mode"], "staged");
    assert_eq!(files_under(m.cache.path()), 0);
}

/// Issue 12: one load reads the bzImage once, parses its setup header once and the vmlinux
/// ELF once, in uncompressed and staged mode, dry run (extracted in memory) or through the
/// cache (a miss, then a hit), and when the caller (`trace`) made the vmlinux first.
#[test]
fn one_load_reads_and_parses_the_kernel_once() {
    use crate::image::{count, Extract, KernelImage};
    let counted = |f: &mut dyn FnMut()| {
        let before = count::get();
        f();
        let after = count::get();
        (after.0 - before.0, after.1 - before.1, after.2 - before.2)
    };
    let cache = tempfile::tempdir().unwrap();
    let plain = machine("plain");
    let staged = machine_with_reservation(false);
    for (root, mode) in [
        (&plain, Mode::Uncompressed),
        (&staged, Mode::Staged),
        (&staged, Mode::Auto),
    ] {
        let o = opts(root.path(), "bzImage-tiny.zstd", mode, cache.path());
        let n = counted(&mut || {
            load(&o).unwrap();
        });
        assert_eq!(n, (1, 1, 1), "dry run, {mode:?}: (reads, headers, ELFs)");
        // As `trace` does: the vmlinux made from the cache first (a miss, then a hit),
        // the load then uses it.
        for hit in [false, true] {
            let n = counted(&mut || {
                let mut image = KernelImage::open(&o.kernel).unwrap();
                let k = image.loadable(Extract::Cache(cache.path())).unwrap();
                assert_eq!(
                    k.origin,
                    crate::image::Origin::Cache {
                        hit: hit || mode != Mode::Uncompressed,
                        compression: crate::image::decompress::Compression::Zstd
                    }
                );
                load_image(&o, &mut image, &LoadExtras::default(), None).unwrap();
            });
            assert_eq!(n, (1, 1, 1), "cache, {mode:?}: (reads, headers, ELFs)");
        }
    }
}

#[test]
fn auto_never_displaces_a_loaded_crash_kernel() {
    let m = Machine::new(machine_with_reservation(true));
    let r = m.load("bzImage-tiny.zstd", Mode::Auto).unwrap();
    assert_eq!(r.mode, LoadMode::Uncompressed);
    assert!(r.staged.is_none());
    // Asked for explicitly, it does displace it, and says so.
    let r = m.load("bzImage-tiny.zstd", Mode::Staged).unwrap();
    assert_eq!(r.mode, LoadMode::Staged);
    assert!(r.staged.as_ref().unwrap().displaced_crash_kernel);
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("a crash (kdump) kernel was loaded")),
        "{:?}",
        r.notes
    );
}

#[test]
fn staged_without_a_reservation_is_refused_before_any_syscall() {
    let m = Machine::new(machine("plain"));
    // A dry run plans anyway and fails on the missing reservation.
    let e = m.load("bzImage-tiny.zstd", Mode::Staged).unwrap_err();
    assert!(matches!(e, Error::NoCrashReservation { .. }), "{e}");
    assert!(e.to_string().contains("crashkernel="), "{e}");
    // A real load stops at the mode check.
    let e = m
        .load_for_real("bzImage-tiny.zstd", Mode::Staged)
        .unwrap_err();
    assert!(
        matches!(e, Error::ModeUnavailable { mode: "staged", .. }),
        "{e}"
    );
    // So does one under lockdown, whose kexec_load is forbidden.
    let e = choose_mode(
        Mode::Staged,
        &st(&[], &["lockdown is 'integrity'"]),
        true,
        false,
    )
    .unwrap_err();
    assert!(e.to_string().contains("staged mode is not possible"), "{e}");
}

#[test]
fn cmdline_limits_per_mode() {
    let long = "x".repeat(2017);
    // File mode: 2017 + NUL + 30 > 2047.
    let e = check_cmdline_len(&long, LoadMode::File, Some(2047)).unwrap_err();
    assert!(e.to_string().contains("at most 2016"), "{e}");
    check_cmdline_len(&long[..2016], LoadMode::File, Some(2047)).unwrap();
    check_cmdline_len(&long, LoadMode::Uncompressed, Some(2047)).unwrap();
    check_cmdline_len(&long, LoadMode::Uncompressed, None).unwrap();
    let e = check_cmdline_len(&"x".repeat(2048), LoadMode::Uncompressed, None).unwrap_err();
    assert!(e.to_string().contains("COMMAND_LINE_SIZE"), "{e}");
    // An old protocol's 255-byte limit.
    assert!(check_cmdline_len(&long[..300], LoadMode::Uncompressed, Some(255)).is_err());
}
