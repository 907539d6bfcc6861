//! Every command of the real binary with nobody listening: standard output and standard error
//! on a pseudo-terminal that has hung up (its master closed: writes fail with EIO), standard
//! output closed, and standard output into a pipe whose reader is gone (EPIPE; Rust ignores
//! SIGPIPE). Each is compared with a live run (output into a pipe that is read): no panic, the
//! documented exit status (the live one; 74 when a command's product — JSON, an export,
//! completions, a man page — could not be written), and the same files left behind.
//!
//! The host has no kexec (and no kprobes), so `load`, `exec`, `unload` and `trace` fail with
//! their normal error here; that they fail the same way with the terminal gone is the point.
//! On a machine with kexec they are skipped: they would really load, unload or reboot.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fastkexec::metrics::histogram::{fold_boot, Boot, Phase};
use fastkexec::record::clock::{self, Fit};
use fastkexec::record::handoff::{self, HeaderInfo};

mod common;
use common::{copy_tree, fixtures};

/// `exit::OUTPUT_LOST` in the binary (sysexits' EX_IOERR).
const EXIT_OUTPUT_LOST: i32 = 74;
const TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    /// Both outputs into pipes that are read to the end.
    Live,
    /// Both outputs on the slave of a pseudo-terminal whose master is closed.
    HungUpTty,
    /// Descriptor 1 closed (stderr read).
    ClosedStdout,
    /// stdout into a pipe whose read end is closed (stderr read).
    ClosedPipe,
}

const WAYS: [Way; 4] = [
    Way::Live,
    Way::HungUpTty,
    Way::ClosedStdout,
    Way::ClosedPipe,
];

fn check(r: libc::c_int, what: &str) -> libc::c_int {
    assert!(r >= 0, "{what}: {}", std::io::Error::last_os_error());
    r
}

/// The slave side of a new pseudo-terminal whose master is already closed.
fn hung_up_tty() -> OwnedFd {
    // SAFETY: plain libc calls on descriptors this function owns; ptsname_r writes at most
    // name.len() bytes.
    unsafe {
        let master = check(
            libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC),
            "posix_openpt",
        );
        check(libc::grantpt(master), "grantpt");
        check(libc::unlockpt(master), "unlockpt");
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(
            libc::ptsname_r(master, name.as_mut_ptr(), name.len()),
            0,
            "ptsname_r"
        );
        let slave = check(
            libc::open(
                name.as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            ),
            "open pty slave",
        );
        libc::close(master);
        OwnedFd::from_raw_fd(slave)
    }
}

/// The write end of a pipe whose read end is already closed.
fn widowed_pipe() -> OwnedFd {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills fds; both are ours.
    unsafe {
        check(libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC), "pipe2");
        libc::close(fds[0]);
        OwnedFd::from_raw_fd(fds[1])
    }
}

fn reader(r: Option<impl Read + Send + 'static>) -> Option<JoinHandle<Vec<u8>>> {
    r.map(|mut r| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    })
}

struct Running {
    child: Child,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

struct Outcome {
    status: ExitStatus,
    stdout: Vec<u8>,
    /// Empty on the hung-up terminal (nothing can read it).
    stderr: String,
}

fn spawn(args: &[String], way: Way) -> Running {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fastkexec"));
    cmd.args(args).env_remove("RUST_LOG").stdin(Stdio::null());
    match way {
        Way::Live => {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        Way::HungUpTty => {
            let tty = hung_up_tty();
            let tty2 = tty.try_clone().expect("dup the pty slave");
            cmd.stdout(tty).stderr(tty2);
        }
        Way::ClosedStdout => {
            cmd.stdout(Stdio::null()).stderr(Stdio::piped());
            // SAFETY: close(2) is async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    libc::close(1);
                    Ok(())
                });
            }
        }
        Way::ClosedPipe => {
            cmd.stdout(widowed_pipe()).stderr(Stdio::piped());
        }
    }
    let mut child = cmd.spawn().expect("start fastkexec");
    // `cmd` (and with it our copies of the tty and pipe ends) is dropped here.
    drop(cmd);
    let stdout = reader(child.stdout.take());
    let stderr = reader(child.stderr.take());
    Running {
        child,
        stdout,
        stderr,
    }
}

fn finish(mut r: Running, what: &str) -> Outcome {
    let start = Instant::now();
    let status = loop {
        if let Some(s) = r.child.try_wait().expect("wait for fastkexec") {
            break s;
        }
        if start.elapsed() > TIMEOUT {
            let _ = r.child.kill();
            let _ = r.child.wait();
            panic!("{what}: still running after {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let join = |h: Option<JoinHandle<Vec<u8>>>| h.map(|h| h.join().unwrap()).unwrap_or_default();
    Outcome {
        status,
        stdout: join(r.stdout),
        stderr: String::from_utf8_lossy(&join(r.stderr)).into_owned(),
    }
}

/// Every regular file under `dir`, by relative path.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            if e.file_type().unwrap().is_dir() {
                walk(base, &path, out);
            } else {
                let rel = path.strip_prefix(base).unwrap().display().to_string();
                let mut bytes = fs::read(&path).unwrap();
                // A prepare cache entry records the identity (inode, ctime) of the vmlinux file
                // this run wrote: the same entry, another file. The rest must be equal.
                if rel.starts_with("cache/") && rel.ends_with("/meta.json") {
                    let mut meta: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                    meta.as_object_mut()
                        .unwrap()
                        .remove("vmlinux_file")
                        .unwrap();
                    bytes = serde_json::to_vec(&meta).unwrap();
                }
                out.insert(rel, bytes);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    // A cache entry's meta.json records the identity (inode, times) of the vmlinux file this
    // run wrote: it differs between any two runs, the rest of the entry must not.
    for (path, bytes) in out.iter_mut() {
        if path.ends_with("meta.json") {
            let mut v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
            if let Some(m) = v.as_object_mut() {
                m.remove("vmlinux_file");
            }
            *bytes = serde_json::to_vec(&v).unwrap();
        }
    }
    out
}

/// What a state directory's `state.json` records, without the durations (measured "now", so
/// they differ from run to run): the boots folded and the phases they had.
fn folded(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = files(dir);
    // The machine tree is this run's input (a record requested a moment ago).
    out.retain(|path, _| !path.starts_with("machine/"));
    let Ok(text) = fs::read_to_string(dir.join("state/state.json")) else {
        out.insert("state/state.json".into(), NOT_FOLDED.to_vec());
        return out;
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let phases: Vec<&serde_json::Value> = v["phases"]
        .as_array()
        .map(|a| a.iter().map(|p| &p["name"]).collect())
        .unwrap_or_default();
    let summary = serde_json::json!({
        "boots": v["boots"],
        "folded_boot_ids": v["folded_boot_ids"],
        "phases": phases,
    });
    out.insert("state/state.json".into(), summary.to_string().into_bytes());
    out
}

/// In place of the state `report` should have written.
const NOT_FOLDED: &[u8] = b"(missing: report folded nothing)";

/// A state directory with three reboots folded in (for `export` and `serve`): one copy of a
/// state made once, since a state records when it was created and updated.
fn histograms(work: &Path) {
    static MADE: OnceLock<PathBuf> = OnceLock::new();
    let made = MADE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("lost_output-histograms");
        let _ = fs::remove_dir_all(&dir);
        make_histograms(&dir);
        dir
    });
    copy_tree(made, &work.join("state"));
}

fn make_histograms(dir: &Path) {
    for i in 0..3u64 {
        let boot = Boot {
            boot_id: format!("0b7c1a6e-0000-4000-8000-00000000000{i}"),
            phases: ["userspace shutdown", "device shutdown", "kernel boot"]
                .iter()
                .enumerate()
                .map(|(j, n)| Phase::new(*n, (i + 1) * 1_000_000 * (j as u64 + 1)))
                .collect(),
            total_ns: (i + 1) * 900_000_000,
            reboot_unix_ns: 1_795_000_000_000_000_000 + i * 60_000_000_000,
            mode: "uncompressed".into(),
            units: Vec::new(),
        };
        fold_boot(dir, &boot).unwrap();
    }
}

const OLD_BOOT: &str = "5d1f7e3a-8c2b-4d6e-9f10-2a3b4c5d6e7f";
const NEW_BOOT: &str = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";

/// A machine tree under `work/machine` booted by a traced kexec: a valid record (header page
/// only) in setup_data, requested a moment ago, so `report` finds it and folds the boot.
fn traced_machine(work: &Path) {
    let root = work.join("machine");
    let mut samples = clock::calibrate_monotonic(16);
    std::thread::sleep(Duration::from_millis(20));
    samples.extend(clock::calibrate_monotonic(16));
    let calib = Fit::from_samples(&samples).expect("a TSC fit on this host");
    let page = handoff::encode_header(&HeaderInfo {
        page_count: 1,
        flags: 0,
        boot_id: handoff::parse_uuid(OLD_BOOT).unwrap(),
        kernel_release: "6.12.0-old".into(),
        attached: 0,
        fentry: 0,
        request_tsc: clock::rdtsc(),
        request_mono_ns: clock::monotonic_ns(),
        calib,
        notifiers: Vec::new(),
    });
    let node = handoff::setup_data_dir(&root).join("1");
    fs::create_dir_all(&node).unwrap();
    fs::write(node.join("type"), "0x464b5854\n").unwrap();
    // sysfs shows the data after the 16-byte setup_data header.
    fs::write(node.join("data"), &page[16..]).unwrap();
    let random = root.join("proc/sys/kernel/random");
    fs::create_dir_all(&random).unwrap();
    fs::write(random.join("boot_id"), format!("{NEW_BOOT}\n")).unwrap();
    fs::write(
        root.join("proc/cmdline"),
        format!("console=ttyS0 fastkexec.boot_id={OLD_BOOT}\n"),
    )
    .unwrap();
    fs::write(root.join("proc/sys/kernel/osrelease"), "6.12.0-new\n").unwrap();
}

/// A machine tree for `load --dry-run` (as in tests/cli.rs).
fn fixture_machine(work: &Path) {
    let root = work.join("machine");
    for from in ["status/plain", "host/qemu-seabios"] {
        copy_tree(&fixtures().join(from), &root);
    }
}

fn nothing(_: &Path) {}

struct Case {
    /// The arguments; `{work}` is this run's scratch directory, `{fixtures}` tests/fixtures.
    args: &'static str,
    /// Its standard output is the product (exit 74 when it cannot be written).
    product: bool,
    /// Changes what the kernel has loaded (or reboots): only run where there is no kexec.
    kexec: bool,
    setup: fn(&Path),
    /// What it leaves behind in `{work}`.
    state: fn(&Path) -> BTreeMap<String, Vec<u8>>,
}

const fn case(args: &'static str) -> Case {
    Case {
        args,
        product: false,
        kexec: false,
        setup: nothing,
        state: files,
    }
}

const fn product(args: &'static str) -> Case {
    Case {
        product: true,
        ..case(args)
    }
}

const fn kexec(args: &'static str) -> Case {
    Case {
        kexec: true,
        ..case(args)
    }
}

const KERNEL: &str = "{fixtures}/bzImage-tiny.xz";

fn cases() -> Vec<Case> {
    let k = |s: &str| s.replace("KERNEL", KERNEL).leak() as &'static str;
    vec![
        // clap's own output, and a usage error (exit 2).
        case("--help"),
        case("--version"),
        case("help load"),
        case("load --help"),
        case("load"),
        case("status"),
        product("status --json"),
        product("--root {fixtures}/status/crashkernel status --json"),
        Case {
            setup: fixture_machine,
            ..case(k("--root {work}/machine load --kernel KERNEL --reuse-cmdline \
                      --cache-dir {work}/cache --dry-run"))
        },
        Case {
            setup: fixture_machine,
            ..product(k("--root {work}/machine load --kernel KERNEL --reuse-cmdline \
                         --cache-dir {work}/cache --dry-run --json"))
        },
        kexec(k(
            "load --kernel KERNEL --mode uncompressed --append console=ttyS0 --cache-dir {work}/cache",
        )),
        kexec(k("load --kernel KERNEL --mode file --json --cache-dir {work}/cache")),
        kexec("exec"),
        kexec("exec --force"),
        kexec("unload"),
        kexec(k("trace --kernel KERNEL --cache-dir {work}/cache")),
        kexec(k("trace --exec --force --kernel KERNEL --cache-dir {work}/cache --mark MARK")),
        kexec(k("trace --exec --json --kernel KERNEL --cache-dir {work}/cache")),
        case(k("prepare --kernel KERNEL --cache-dir {work}/cache")),
        product(k("prepare --kernel {fixtures}/bzImage-tiny.zstd --cache-dir {work}/cache --json")),
        Case {
            setup: traced_machine,
            state: folded,
            ..case("--root {work}/machine report --state-dir {work}/state")
        },
        Case {
            setup: traced_machine,
            state: folded,
            ..product("--root {work}/machine report --json --state-dir {work}/state")
        },
        // No record: exit 2 whether or not the JSON got out.
        product("--root {fixtures}/status/plain report --json --state-dir {work}/state"),
        Case {
            setup: histograms,
            ..product("export --state-dir {work}/state")
        },
        Case {
            setup: histograms,
            ..product("export --state-dir {work}/state --format json")
        },
        Case {
            setup: histograms,
            ..case("export --state-dir {work}/state --format hdr-log --output {work}/out.hlog")
        },
        Case {
            setup: |w| {
                histograms(w);
                fs::create_dir(w.join("textfile")).unwrap();
            },
            ..case("export --state-dir {work}/state --textfile-dir {work}/textfile")
        },
        product("completions bash"),
        product("completions zsh"),
        product("man"),
        case("man --dir {work}/man"),
    ]
}

/// Whether this machine can kexec at all (then the cases that load, unload or reboot are
/// skipped).
fn has_kexec() -> bool {
    Path::new("/sys/kernel/kexec_loaded").exists()
}

fn argv(args: &str, work: &Path) -> Vec<String> {
    // -vv: the logger writes to the same dead stderr.
    std::iter::once("-vv".to_string())
        .chain(args.split_whitespace().map(|a| {
            a.replace("{work}", &work.display().to_string())
                .replace("{fixtures}", &fixtures().display().to_string())
        }))
        .collect()
}

fn expected(way: Way, live: i32, product: bool) -> i32 {
    match way {
        Way::HungUpTty | Way::ClosedPipe if product && live == 0 => EXIT_OUTPUT_LOST,
        _ => live,
    }
}

#[test]
fn every_command_survives_a_hung_up_terminal_a_closed_stdout_and_a_closed_pipe() {
    let skip_kexec = has_kexec();
    let mut failures = Vec::new();
    for c in cases() {
        if c.kexec && skip_kexec {
            eprintln!("skipped (this machine has kexec): fastkexec {}", c.args);
            continue;
        }
        let mut live: Option<(i32, BTreeMap<String, Vec<u8>>)> = None;
        for way in WAYS {
            let work = tempfile::tempdir().unwrap();
            (c.setup)(work.path());
            let args = argv(c.args, work.path());
            let what = format!("fastkexec {} ({way:?})", args.join(" "));
            let o = finish(spawn(&args, way), &what);
            let code = o.status.code();
            let state = (c.state)(work.path());
            if code == Some(101) || o.stderr.contains("panicked") {
                failures.push(format!("{what}: panicked ({:?}):\n{}", o.status, o.stderr));
                continue;
            }
            let Some(code) = code else {
                failures.push(format!("{what}: killed by signal {:?}", o.status.signal()));
                continue;
            };
            match &live {
                None => {
                    assert_eq!(way, Way::Live);
                    if c.product && code == 0 {
                        assert!(!o.stdout.is_empty(), "{what}: no product on stdout");
                    }
                    assert!(
                        !state.values().any(|v| v == NOT_FOLDED),
                        "{what}: nothing folded:\n{}",
                        o.stderr
                    );
                    eprintln!("live exit {code}: {what}");
                    live = Some((code, state));
                }
                Some((live_code, live_state)) => {
                    let want = expected(way, *live_code, c.product);
                    if code != want {
                        failures.push(format!(
                            "{what}: exit {code}, expected {want} (live: {live_code})\n{}",
                            o.stderr
                        ));
                    }
                    let differ: std::collections::BTreeSet<&String> = state
                        .keys()
                        .chain(live_state.keys())
                        .filter(|p| state.get(*p) != live_state.get(*p))
                        .collect();
                    if !differ.is_empty() {
                        failures.push(format!(
                            "{what}: left behind other files than the live run: {differ:?}"
                        ));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// `serve` prints where it listens and then serves until killed: with that line lost it must
/// still answer scrapes, the same as with a live terminal.
#[test]
fn serve_answers_scrapes_with_its_terminal_gone() {
    let mut answers = Vec::new();
    for way in WAYS {
        let work = tempfile::tempdir().unwrap();
        histograms(work.path());
        // A free port: bound, read and released (the line naming it may be lost).
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let args = argv(
            &format!("serve --state-dir {{work}}/state --listen 127.0.0.1:{port}"),
            work.path(),
        );
        let what = format!("fastkexec {} ({way:?})", args.join(" "));
        let mut running = spawn(&args, way);
        let start = Instant::now();
        let answer = loop {
            if let Some(s) = running.child.try_wait().unwrap() {
                let o = finish(running, &what);
                panic!("{what}: exited ({s:?}) instead of serving:\n{}", o.stderr);
            }
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                // Once (in the full test command, with the other tests of this file spawning
                // processes beside it) the read met a connection reset; a reset scrape is
                // tried again, and what counts is that one is answered, checked below.
                let mut buf = String::new();
                let sent = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n");
                match sent.and_then(|()| s.read_to_string(&mut buf)) {
                    Ok(_) => break buf,
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                    Err(e) => panic!("{what}: scraping: {e}"),
                }
            }
            assert!(start.elapsed() < TIMEOUT, "{what}: never listened");
            std::thread::sleep(Duration::from_millis(50));
        };
        // SAFETY: signalling our own child.
        unsafe { libc::kill(running.child.id() as libc::pid_t, libc::SIGTERM) };
        let o = finish(running, &what);
        assert!(!o.stderr.contains("panicked"), "{what}:\n{}", o.stderr);
        assert_eq!(o.status.signal(), Some(libc::SIGTERM), "{what}");
        if way == Way::Live {
            assert!(
                String::from_utf8_lossy(&o.stdout).starts_with("listening on http://127.0.0.1:"),
                "{what}"
            );
        }
        let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
        assert!(
            body.as_deref()
                .is_some_and(|b| b.contains("fastkexec_reboots_total 3")),
            "{what}: {answer}"
        );
        answers.push(body);
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
}

/// Every write of the binary goes through src/bin/fastkexec/out.rs: `println!` and friends
/// panic when the terminal is gone. Test code (after `#[cfg(test)]`) and comments may use them.
#[test]
fn no_print_macros_outside_the_output_path() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let out = src.join("bin/fastkexec/out.rs");
    let mut found = Vec::new();
    let mut dirs = vec![src];
    let mut files = Vec::new();
    while let Some(dir) = dirs.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    assert!(files.len() > 30, "the walk found the sources: {files:?}");
    for path in files {
        if path.extension().is_none_or(|x| x != "rs") || path == out {
            continue;
        }
        let text = fs::read_to_string(&path).unwrap();
        let code = text.split("\n#[cfg(test)]").next().unwrap_or_default();
        for (i, line) in code.lines().enumerate() {
            let line = line.trim_start();
            if line.starts_with("//") {
                continue;
            }
            if ["println!", "print!", "eprintln!", "eprint!", "dbg!"]
                .iter()
                .any(|m| line.contains(m))
            {
                found.push(format!("{}:{}: {line}", path.display(), i + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "use out::say!/out::text:\n{}",
        found.join("\n")
    );
}
