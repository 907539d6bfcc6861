//! Can this kernel be traced? The tracer's half of `fastkexec status`: each facility the
//! probes need, and how each probe point would attach, with the reason when it cannot.
//! Read from files under a root prefix, like the rest of `status`, so captured machines are
//! test fixtures. The rule for fentry/fexit is the one `trace` applies ([`fentry_blocker`]);
//! `trace --dry-run` then proves it by attaching for real.

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;

use serde::Serialize;

use crate::host::status::{self, Status};
use crate::trace::btf::Btf;
use crate::trace::ebpf::{ProbePoint, DEVICE_PROBE, PHASE_PROBES, REBOOT_FALLBACK};
use crate::Result;

/// One facility the tracer needs.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Facility {
    pub available: bool,
    /// What was seen, or why it is missing and what it costs.
    pub detail: String,
}

/// How one probe point would attach on this kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeSupport {
    pub function: &'static str,
    /// `fentry`, `fexit`, `kprobe`, `kretprobe`, or `none`.
    pub how: &'static str,
    /// Why the preferred way (fentry/fexit), or every way, is not possible.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// The tracer's view of this kernel.
#[derive(Debug, Default, Clone, Serialize)]
pub struct TracingSupport {
    /// The bpf(2) syscall (CONFIG_BPF_SYSCALL).
    pub bpf: Facility,
    /// The kernel's own BTF: fentry/fexit, and device names in the per-device stamps.
    pub btf: Facility,
    /// The perf kprobe PMU the kprobe fallback attaches through.
    pub kprobes: Facility,
    /// tracefs: the reboot(2) tracepoint and available_filter_functions.
    pub tracefs: Facility,
    /// bpffs at /sys/fs/bpf: probes pinned there survive systemd's shutdown.
    pub bpffs: Facility,
    pub probes: Vec<ProbeSupport>,
}

/// Why fentry/fexit cannot take `function`, or `None` when it can: the kernel's BTF must
/// describe it, and ftrace must be able to patch it (listed in available_filter_functions;
/// when that list cannot be read, fentry is simply tried).
pub fn fentry_blocker(
    btf: Option<&Btf>,
    ftrace: Option<&HashSet<String>>,
    function: &str,
) -> Option<String> {
    match (btf, ftrace) {
        (None, _) => Some("no kernel BTF".into()),
        (Some(b), _) if !b.has_func(function) => Some(format!("{function} has no BTF FUNC entry")),
        (Some(_), Some(set)) if !set.contains(function) => {
            Some(format!("{function} is not in available_filter_functions"))
        }
        _ => None,
    }
}

/// What `fastkexec status` shows: the kexec status of the machine and the tracer's half.
/// The JSON is the status object with a `tracing` member.
#[derive(Debug, Serialize)]
pub struct StatusWithTracer {
    #[serde(flatten)]
    pub status: Status,
    pub tracing: TracingSupport,
}

/// Reads both halves under `root` (`/` for this machine).
pub fn with_status(root: &Path) -> Result<StatusWithTracer> {
    Ok(StatusWithTracer {
        status: status::status(root)?,
        tracing: read(root),
    })
}

impl fmt::Display for StatusWithTracer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.status, self.tracing)
    }
}

impl fmt::Display for TracingSupport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, fac) in [
            ("BPF", &self.bpf),
            ("BTF", &self.btf),
            ("kprobes", &self.kprobes),
            ("tracefs", &self.tracefs),
            ("bpffs", &self.bpffs),
        ] {
            writeln!(
                f,
                "tracer {name:<8}      {}: {}",
                if fac.available { "yes" } else { "NO" },
                fac.detail
            )?;
        }
        for p in &self.probes {
            writeln!(
                f,
                "  probe {:<22} {}{}",
                p.function,
                p.how,
                p.why
                    .as_deref()
                    .map(|w| format!(" ({w})"))
                    .unwrap_or_default()
            )?;
        }
        Ok(())
    }
}

/// Reads the tracer's facilities under `root` (`/` on a live machine).
pub fn read(root: &Path) -> TracingSupport {
    let p = |rel: &str| root.join(rel);
    let mut t = TracingSupport {
        bpf: facility(
            p("proc/sys/kernel/unprivileged_bpf_disabled").exists(),
            "bpf(2) present",
            "no bpf(2) (/proc/sys/kernel/unprivileged_bpf_disabled is missing: \
             CONFIG_BPF_SYSCALL off?): nothing can be traced",
        ),
        ..TracingSupport::default()
    };
    let btf_path = p("sys/kernel/btf/vmlinux");
    let btf = match Btf::from_file(&btf_path) {
        Ok(b) => {
            t.btf = facility(true, "/sys/kernel/btf/vmlinux", "");
            Some(b)
        }
        Err(e) => {
            t.btf = facility(
                false,
                "",
                &format!("{e}: kprobes only, and devices without names (CONFIG_DEBUG_INFO_BTF)"),
            );
            None
        }
    };
    t.kprobes = facility(
        p("sys/bus/event_source/devices/kprobe/type").exists(),
        "perf kprobe PMU present",
        "no perf kprobe PMU (/sys/bus/event_source/devices/kprobe: CONFIG_KPROBES off?): \
         a probe point without fentry is not timed",
    );
    let tracefs = ["sys/kernel/tracing", "sys/kernel/debug/tracing"]
        .iter()
        .map(|d| p(d))
        .find(|d| d.join("events").is_dir());
    t.tracefs = match &tracefs {
        Some(d) => facility(true, &d.display().to_string(), ""),
        None => facility(
            false,
            "",
            "tracefs is not mounted: `trace` mounts it at /sys/kernel/tracing itself",
        ),
    };
    t.bpffs = facility(
        mounts(root)
            .iter()
            .any(|(dir, fs)| dir == "/sys/fs/bpf" && fs == "bpf"),
        "mounted at /sys/fs/bpf",
        "no bpffs at /sys/fs/bpf: `trace` without --exec, or with `systemctl kexec`, pins its \
         probes there (systemd mounts it at boot; else `mount -t bpf bpf /sys/fs/bpf`)",
    );
    let points: Vec<&ProbePoint> = PHASE_PROBES
        .iter()
        .chain([&REBOOT_FALLBACK, &DEVICE_PROBE])
        .collect();
    let wanted: Vec<&str> = points.iter().map(|p| p.function).collect();
    let ftrace = tracefs
        .as_ref()
        .and_then(|d| names_in(&d.join("available_filter_functions"), &wanted, 0));
    let kallsyms = names_in(&p("proc/kallsyms"), &wanted, 2);
    for point in points {
        let blocker = fentry_blocker(btf.as_ref(), ftrace.as_ref(), point.function);
        let in_kallsyms = kallsyms
            .as_ref()
            .is_some_and(|k| k.contains(point.function));
        let (how, why) = match blocker {
            None => (if point.exit { "fexit" } else { "fentry" }, None),
            Some(b) if t.kprobes.available && in_kallsyms => {
                (if point.exit { "kretprobe" } else { "kprobe" }, Some(b))
            }
            Some(b) if !in_kallsyms => (
                "none",
                Some(format!("{b}; {} is not in /proc/kallsyms", point.function)),
            ),
            Some(b) => ("none", Some(format!("{b}; no kprobes"))),
        };
        // The same function with both an entry and an exit probe is listed once per kind.
        if !t
            .probes
            .iter()
            .any(|s| s.function == point.function && s.how == how)
        {
            t.probes.push(ProbeSupport {
                function: point.function,
                how,
                why,
            });
        }
    }
    t.probes.extend(crate::trace::units::support(
        btf.as_ref(),
        tracefs.as_deref(),
    ));
    t
}

fn facility(available: bool, yes: &str, no: &str) -> Facility {
    Facility {
        available,
        detail: if available { yes } else { no }.to_string(),
    }
}

/// `(mount point, fs type)` from /proc/self/mounts.
fn mounts(root: &Path) -> Vec<(String, String)> {
    fs::read_to_string(root.join("proc/self/mounts"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace().skip(1);
            Some((w.next()?.to_string(), w.next()?.to_string()))
        })
        .collect()
}

/// The `wanted` names found in column `col` of a symbol list (kallsyms: "addr type name").
fn names_in(path: &Path, wanted: &[&str], col: usize) -> Option<HashSet<String>> {
    let f = fs::File::open(path).ok()?;
    let mut out = HashSet::new();
    for line in BufReader::new(f).lines().map_while(|l| l.ok()) {
        let name = line.split_whitespace().nth(col).unwrap_or("");
        if wanted.contains(&name) {
            out.insert(name.to_string());
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, data: &[u8]) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(p, data).expect("write");
    }

    /// A machine like Debian's 6.1 in the lab: BTF, tracefs, kprobes, bpffs; one function
    /// (syscore_shutdown) that ftrace cannot patch, one (machine_kexec) missing from BTF.
    fn machine() -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        let r = d.path();
        let funcs: Vec<&str> = PHASE_PROBES
            .iter()
            .chain([&REBOOT_FALLBACK, &DEVICE_PROBE])
            .map(|p| p.function)
            .filter(|f| *f != "machine_kexec")
            .collect();
        write(
            r,
            "sys/kernel/btf/vmlinux",
            &crate::trace::btf::tests::with_funcs(&funcs),
        );
        let ftrace: String = funcs
            .iter()
            .filter(|f| **f != "syscore_shutdown")
            .map(|f| format!("{f}\n"))
            .collect();
        write(
            r,
            "sys/kernel/tracing/available_filter_functions",
            ftrace.as_bytes(),
        );
        fs::create_dir_all(r.join("sys/kernel/tracing/events")).expect("mkdir");
        write(
            r,
            "proc/kallsyms",
            b"ffffffff81000000 T machine_kexec\nffffffff81000100 T syscore_shutdown\n",
        );
        write(r, "sys/bus/event_source/devices/kprobe/type", b"6\n");
        write(r, "proc/sys/kernel/unprivileged_bpf_disabled", b"2\n");
        write(
            r,
            "proc/self/mounts",
            b"sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw 0 0\n",
        );
        d
    }

    #[test]
    fn each_probe_point_says_how_it_attaches_and_why() {
        let m = machine();
        let t = read(m.path());
        assert!(t.bpf.available && t.btf.available && t.kprobes.available);
        assert!(t.tracefs.available && t.bpffs.available);
        let how = |f: &str, h: &str| {
            t.probes
                .iter()
                .find(|p| p.function == f && p.how == h)
                .cloned()
        };
        assert!(how("device_shutdown", "fentry").is_some());
        assert!(how("device_shutdown", "fexit").is_some());
        let mk = how("machine_kexec", "kprobe").expect("machine_kexec by kprobe");
        assert!(mk.why.as_deref().is_some_and(|w| w.contains("no BTF FUNC")));
        let sc =
            how("syscore_shutdown", "kretprobe").expect("syscore_shutdown's exit by kretprobe");
        assert!(sc
            .why
            .as_deref()
            .is_some_and(|w| w.contains("available_filter_functions")));
    }

    #[test]
    fn a_bare_machine_says_what_is_missing() {
        let d = tempfile::tempdir().expect("tempdir");
        let t = read(d.path());
        assert!(!t.bpf.available && t.bpf.detail.contains("CONFIG_BPF_SYSCALL"));
        assert!(!t.btf.available && t.btf.detail.contains("kprobes only"));
        assert!(!t.kprobes.available && !t.bpffs.available);
        assert!(t.probes.iter().all(|p| p.how == "none" && p.why.is_some()));
    }
}
