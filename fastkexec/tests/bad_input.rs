//! The real binary against bad input (issue 13): images, ELF, initrd, command line, special
//! files, state files and trace records. Each case must exit non-zero with a message that
//! names the offending file (or field) and says what to do, load nothing (every load here is
//! a `--dry-run` on a fixture machine tree), and leave every file it was given, the machine
//! tree and the state directory byte for byte as they were.
//!
//! The bad inputs are derived in the test from the real tiny fixtures (`bzImage-tiny.*`,
//! `vmlinux-tiny.elf`), so each differs from a loadable file by the one defect it names.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every regular file and symlink under `dir` with its bytes (links: their target), and
/// every directory: what "nothing changed" compares. FIFOs are listed, never opened.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let entry = entry.unwrap();
        let p = entry.path();
        let ft = entry.file_type().unwrap();
        if ft.is_symlink() {
            out.insert(
                p.clone(),
                fs::read_link(&p).unwrap().into_os_string().into_vec(),
            );
        } else if ft.is_dir() {
            out.insert(p.clone(), b"<dir>".to_vec());
            out.extend(snapshot(&p));
        } else if ft.is_file() {
            let meta = entry.metadata().unwrap();
            if meta.len() > 1 << 20 {
                // The sparse "huge" inputs: their size and mtime stand for their bytes.
                let mtime = meta.modified().unwrap();
                out.insert(p.clone(), format!("{} {mtime:?}", meta.len()).into_bytes());
            } else {
                out.insert(p.clone(), fs::read(&p).unwrap());
            }
        } else {
            out.insert(p.clone(), b"<special>".to_vec());
        }
    }
    out
}

use std::os::unix::ffi::OsStringExt;

mod common;
use common::{copy_tree, fixtures};

fn mkfifo(p: &Path) {
    let st = Command::new("mkfifo").arg(p).status().expect("mkfifo(1)");
    assert!(st.success());
}

/// One bad input: the arguments after `fastkexec`, and what the message must contain.
struct Case {
    name: &'static str,
    args: Vec<String>,
    /// Substrings of stderr: the file or field named, and the advice.
    says: Vec<String>,
}

struct World {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    /// A fixture machine (status "plain" + a QEMU guest's firmware map).
    root: PathBuf,
    cache: PathBuf,
    state: PathBuf,
}

impl World {
    fn new() -> World {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let root = dir.join("machine");
        fs::create_dir_all(&root).unwrap();
        copy_tree(&fixtures().join("status/plain"), &root);
        copy_tree(&fixtures().join("host/qemu-seabios"), &root);
        let cache = dir.join("cache");
        fs::create_dir(&cache).unwrap();
        fs::set_permissions(&cache, fs::Permissions::from_mode(0o700)).unwrap();
        let state = dir.join("state");
        fs::create_dir(&state).unwrap();
        World {
            _tmp: tmp,
            dir,
            root,
            cache,
            state,
        }
    }

    fn file(&self, name: &str, bytes: &[u8]) -> String {
        let p = self.dir.join(name);
        fs::write(&p, bytes).unwrap();
        p.to_str().unwrap().to_string()
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }

    /// `load --dry-run` of `kernel` on the fixture machine, plus `extra`.
    fn load(&self, kernel: &str, extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = [
            "--root",
            self.root.to_str().unwrap(),
            "load",
            "--dry-run",
            "--mode",
            "uncompressed",
            "--cache-dir",
            self.cache.to_str().unwrap(),
            "--kernel",
            kernel,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }
}

fn bz() -> Vec<u8> {
    fs::read(fixtures().join("bzImage-tiny.xz")).unwrap()
}

fn elf() -> Vec<u8> {
    fs::read(fixtures().join("vmlinux-tiny.elf")).unwrap()
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Offset of program header `i` of the ELF fixture, and of a field in it.
fn phdr(e: &[u8], i: usize) -> usize {
    let phoff = u64::from_le_bytes(e[32..40].try_into().unwrap()) as usize;
    let phentsize = u16::from_le_bytes(e[54..56].try_into().unwrap()) as usize;
    phoff + i * phentsize
}

/// The indices of the ELF fixture's PT_LOADs.
fn loads(e: &[u8]) -> Vec<usize> {
    let n = u16::from_le_bytes(e[56..58].try_into().unwrap()) as usize;
    (0..n)
        .filter(|&i| u32::from_le_bytes(e[phdr(e, i)..phdr(e, i) + 4].try_into().unwrap()) == 1)
        .collect()
}

fn cases(w: &World) -> Vec<Case> {
    let mut v = Vec::new();
    let s = |x: &str| x.to_string();
    let mut case = |name: &'static str, args: Vec<String>, says: &[&str]| {
        v.push(Case {
            name,
            args,
            says: says.iter().map(|x| x.to_string()).collect(),
        })
    };

    // --- bzImage
    let k = w.file("empty", b"");
    case("empty kernel", w.load(&k, &[]), &[&k]);
    let b = bz();
    let k = w.file("truncated-header", &b[..0x220]);
    case(
        "bzImage cut inside its setup header",
        w.load(&k, &[]),
        &[&k],
    );
    let k = w.file("truncated-payload", &b[..b.len() - 200]);
    case("bzImage cut inside its payload", w.load(&k, &[]), &[&k]);
    let mut m = b.clone();
    m[0x202..0x206].copy_from_slice(b"HdrX");
    let k = w.file("wrong-magic", &m);
    case(
        "bzImage with a wrong HdrS magic",
        w.load(&k, &[]),
        &[&k, "bzImage"],
    );
    let mut m = b.clone();
    m[0x1f1] = 0xff;
    let k = w.file("setup-sects", &m);
    case(
        "setup_sects past the end of the file",
        w.load(&k, &[]),
        &[&k],
    );
    let mut m = b.clone();
    put_u16(&mut m, 0x206, 0x0200);
    let k = w.file("old-protocol", &m);
    case("boot protocol 2.00", w.load(&k, &[]), &[&k, "protocol"]);
    let mut m = b.clone();
    put_u32(&mut m, 0x248, 0xffff_0000);
    let k = w.file("payload-offset", &m);
    case(
        "payload_offset past the end",
        w.load(&k, &[]),
        &[&k, "payload"],
    );
    let mut m = b.clone();
    put_u32(&mut m, 0x24c, 0);
    let k = w.file("payload-empty", &m);
    case("payload_length 0", w.load(&k, &[]), &[&k, "payload"]);
    let mut m = b.clone();
    let off = 0x200 * (usize::from(m[0x1f1]) + 1) + 0x180;
    m[off..off + 8].copy_from_slice(b"NOTAZIP!");
    let k = w.file("payload-magic", &m);
    case(
        "payload of unknown compression",
        w.load(&k, &[]),
        &[&k, "compression"],
    );
    let mut m = b.clone();
    for x in &mut m[off + 40..off + 200] {
        *x ^= 0x5a;
    }
    let k = w.file("payload-garbled", &m);
    case(
        "payload garbled inside its xz stream",
        w.load(&k, &[]),
        &[&k, "xz"],
    );

    // --- vmlinux ELF
    let e = elf();
    let mut m = e.clone();
    m[4] = 1;
    let k = w.file("elf32", &m);
    case("ELF of class 32", w.load(&k, &[]), &[&k]);
    let mut m = e.clone();
    put_u16(&mut m, 18, 40);
    let k = w.file("elf-arm", &m);
    case(
        "ELF for another machine (ARM)",
        w.load(&k, &[]),
        &[&k, "x86-64"],
    );
    let mut m = e.clone();
    put_u16(&mut m, 16, 3);
    let k = w.file("elf-dyn", &m);
    case("ELF of type ET_DYN", w.load(&k, &[]), &[&k]);
    let l = loads(&e);
    assert!(l.len() >= 2, "the fixture has two PT_LOADs");
    let mut m = e.clone();
    let (p0, p1) = (phdr(&e, l[0]), phdr(&e, l[1]));
    let paddr0 = u64::from_le_bytes(m[p0 + 24..p0 + 32].try_into().unwrap());
    put_u64(&mut m, p1 + 24, paddr0);
    let k = w.file("elf-overlap", &m);
    case("overlapping PT_LOADs", w.load(&k, &[]), &[&k]);
    let mut m = e.clone();
    put_u64(&mut m, p0 + 40, 0xffff_ffff_ffff_0000);
    let k = w.file("elf-huge-memsz", &m);
    case("a PT_LOAD of 2^64 bytes", w.load(&k, &[]), &[&k]);
    let mut m = e.clone();
    put_u64(&mut m, p0 + 32, 1 << 40);
    let k = w.file("elf-huge-filesz", &m);
    case("a PT_LOAD reaching past the file", w.load(&k, &[]), &[&k]);
    let mut m = e.clone();
    put_u16(&mut m, 56, 0);
    let k = w.file("elf-no-loads", &m);
    case("an ELF without program headers", w.load(&k, &[]), &[&k]);

    // --- initrd
    let good = fixtures().join("bzImage-tiny.xz");
    let good = good.to_str().unwrap();
    let i = w.path("no-such-initrd");
    case("missing initrd", w.load(good, &["--initrd", &i]), &[&i]);
    let i = w.path("initrd-fifo");
    mkfifo(Path::new(&i));
    case(
        "initrd that is a FIFO",
        w.load(good, &["--initrd", &i]),
        &[&i, "FIFO", "regular file"],
    );
    let i = w.path("initrd-dir");
    fs::create_dir(&i).unwrap();
    case(
        "initrd that is a directory",
        w.load(good, &["--initrd", &i]),
        &[&i, "directory"],
    );
    let i = w.path("initrd-huge");
    fs::File::create(&i).unwrap().set_len(1 << 41).unwrap();
    case(
        "initrd of 2 TiB (sparse)",
        w.load(good, &["--initrd", &i]),
        &[&i, "limit", "right file"],
    );
    let i = w.file("initrd-empty", b"");
    case(
        "empty initrd",
        w.load(good, &["--initrd", &i]),
        &[&i, "initramfs"],
    );

    // --- command line
    let long = "x".repeat(100_000);
    case(
        "command line longer than the kernel takes",
        w.load(good, &["--append", &long]),
        &["command line", "shorten"],
    );
    let nul_root = w.dir.join("machine-nul");
    copy_tree(&w.root, &nul_root);
    fs::write(nul_root.join("proc/cmdline"), b"root=/dev/vda\0 quiet\n").unwrap();
    let mut a = w.load(good, &["--reuse-cmdline"]);
    a[1] = nul_root.to_str().unwrap().to_string();
    case(
        "a NUL byte in the reused command line",
        a,
        &["'\\0'", "proc/cmdline", "--reuse-cmdline"],
    );
    let nocmd_root = w.dir.join("machine-nocmdline");
    copy_tree(&w.root, &nocmd_root);
    fs::remove_file(nocmd_root.join("proc/cmdline")).unwrap();
    let mut a = w.load(good, &["--reuse-cmdline"]);
    a[1] = nocmd_root.to_str().unwrap().to_string();
    case(
        "--reuse-cmdline without /proc/cmdline",
        a,
        &["proc/cmdline"],
    );

    // --- special files as the kernel
    case(
        "/dev/zero as the kernel",
        w.load("/dev/zero", &[]),
        &["/dev/zero", "character device", "regular file"],
    );
    let k = w.path("kernel-fifo");
    mkfifo(Path::new(&k));
    case("a FIFO as the kernel", w.load(&k, &[]), &[&k, "FIFO"]);
    let k = w.path("kernel-dir");
    fs::create_dir(&k).unwrap();
    case(
        "a directory as the kernel",
        w.load(&k, &[]),
        &[&k, "directory"],
    );
    let k = w.path("loop-a");
    std::os::unix::fs::symlink(w.path("loop-b"), &k).unwrap();
    std::os::unix::fs::symlink(w.path("loop-a"), w.path("loop-b")).unwrap();
    case("a symlink loop as the kernel", w.load(&k, &[]), &[&k]);
    let k = w.path("no-such-kernel");
    case("a kernel that does not exist", w.load(&k, &[]), &[&k]);

    // --- staged-mode record on the machine
    let staged_root = w.dir.join("machine-staged");
    copy_tree(&w.root, &staged_root);
    fs::create_dir_all(staged_root.join("run/fastkexec")).unwrap();
    let rec = staged_root.join("run/fastkexec/staged.json");
    fs::write(&rec, b"{\"version\":99}").unwrap();
    let mut a = w.load(good, &[]);
    a[1] = staged_root.to_str().unwrap().to_string();
    case(
        "staged.json of another version",
        a,
        &[rec.to_str().unwrap(), "version 99", "fastkexec unload"],
    );

    // --- prepare (the cache)
    let bad = w.file("prepare-wrong-magic", &{
        let mut m = bz();
        m[0x202..0x206].copy_from_slice(b"HdrX");
        m
    });
    case(
        "prepare of a file that is no bzImage",
        vec![
            s("prepare"),
            s("--kernel"),
            bad.clone(),
            s("--cache-dir"),
            w.cache.to_str().unwrap().to_string(),
        ],
        &[&bad],
    );
    let open_cache = w.dir.join("cache-world-writable");
    fs::create_dir(&open_cache).unwrap();
    fs::set_permissions(&open_cache, fs::Permissions::from_mode(0o777)).unwrap();
    case(
        "prepare into a world-writable cache",
        vec![
            s("prepare"),
            s("--kernel"),
            s(good),
            s("--cache-dir"),
            open_cache.to_str().unwrap().to_string(),
        ],
        &[open_cache.to_str().unwrap(), "chmod"],
    );
    case(
        "prepare of /dev/zero",
        vec![
            s("prepare"),
            s("--kernel"),
            s("/dev/zero"),
            s("--cache-dir"),
            w.cache.to_str().unwrap().to_string(),
        ],
        &["/dev/zero", "regular file"],
    );

    // --- the histogram state (export reads; a corrupt file is counted and exits 0 by design,
    // see export's own tests; these are the ones it must refuse)
    let export = |dir: &Path| {
        vec![
            s("export"),
            s("--state-dir"),
            dir.to_str().unwrap().to_string(),
        ]
    };
    let newer = w.dir.join("state-newer");
    fs::create_dir(&newer).unwrap();
    fs::write(
        newer.join("state.json"),
        br#"{"format":"fastkexec-state","version":99}"#,
    )
    .unwrap();
    case(
        "state.json of a newer version",
        export(&newer),
        &["state.json", "newer", "upgrade"],
    );
    let dir_state = w.dir.join("state-dir-in-place");
    fs::create_dir_all(dir_state.join("state.json")).unwrap();
    case(
        "state.json that is a directory",
        export(&dir_state),
        &["state.json"],
    );
    let not_dir = w.file("state-not-a-dir", b"x");
    case(
        "a state directory that is a file",
        export(Path::new(&not_dir)),
        &[&not_dir],
    );

    // --- trace records in the new kernel (report --root): none of these is a usable record
    let rec_root = |name: &str, nodes: &[(&str, &[u8])]| -> String {
        let r = w.dir.join(name);
        for (i, (t, data)) in nodes.iter().enumerate() {
            let d = r.join(format!("sys/kernel/boot_params/setup_data/{i}"));
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("type"), t).unwrap();
            fs::write(d.join("data"), data).unwrap();
        }
        r.to_str().unwrap().to_string()
    };
    let report = |root: &str| {
        vec![
            s("--root"),
            s(root),
            s("report"),
            s("--no-fold"),
            s("--state-dir"),
            w.state.to_str().unwrap().to_string(),
        ]
    };
    let r = rec_root("rec-short", &[("0x464b5854\n", &[0u8; 100])]);
    case("a record node of 100 bytes", report(&r), &["torn"]);
    let r = rec_root("rec-junk", &[("0x464b5854\n", &[0xa5u8; 4080])]);
    case("a record page of junk", report(&r), &["torn"]);
    let r = rec_root("rec-type", &[("zz\n", b"")]);
    case(
        "a setup_data type that is not hex",
        report(&r),
        &["setup_data/0/type"],
    );
    let r = rec_root("rec-none", &[]);
    case("no record at all", report(&r), &["fastkexec trace"]);
    v
}

#[test]
fn every_bad_input_is_refused_by_name_and_changes_nothing() {
    let w = World::new();
    let cases = cases(&w);
    assert!(cases.len() >= 30, "{} cases", cases.len());
    let before = (snapshot(&w.dir), snapshot(&w.state));
    let mut failures = Vec::new();
    for c in &cases {
        let o = Command::new(env!("CARGO_BIN_EXE_fastkexec"))
            .args(&c.args)
            .env_remove("RUST_LOG")
            .output()
            .expect("run fastkexec");
        let err = String::from_utf8_lossy(&o.stderr);
        let out = String::from_utf8_lossy(&o.stdout);
        let mut why = Vec::new();
        if o.status.success() {
            why.push("exited 0".to_string());
        }
        for want in &c.says {
            if !err.contains(want.as_str()) && !out.contains(want.as_str()) {
                why.push(format!("does not say {want:?}"));
            }
        }
        if out.contains("loaded:") && !out.contains("nothing loaded") {
            why.push("says it loaded something".into());
        }
        if !why.is_empty() {
            failures.push(format!(
                "{}: {} (exit {:?})\n  stderr: {}\n  stdout: {}",
                c.name,
                why.join(", "),
                o.status.code(),
                err.trim(),
                out.lines().take(3).collect::<Vec<_>>().join(" | ")
            ));
        }
    }
    let after = (snapshot(&w.dir), snapshot(&w.state));
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    assert!(before == after, "a bad input changed a file");
}
