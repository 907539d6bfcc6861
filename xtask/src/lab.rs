//! The QEMU lab: boots a stock kernel, round 1 loads and executes the next
//! kernel per mode, round 2 (the new kernel's init) reports and powers off.
//! The host timestamps every serial line with a monotonic clock: an
//! independent stopwatch for everything fastkexec claims.

use crate::initramfs::{self, Tools};
use crate::kernels::KernelInfo;
use crate::util::{lab_dir, run, step, workspace_root, write_atomic};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How round 1 loads the next kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// kexec-tools `-l` bzImage (kexec_load, purgatory SHA-256 of every segment)
    KexecToolsL,
    /// kexec-tools `-l -i` bzImage (kexec_load, no hash)
    #[value(name = "kexec-tools-l-i")]
    KexecToolsLI,
    /// kexec-tools `-s` (kexec_file_load, in-kernel purgatory hashes)
    KexecToolsS,
    /// fastkexec load --mode file (kexec_file_load)
    FastkexecFile,
    /// fastkexec load --mode uncompressed (vmlinux via kexec_load, our purgatory)
    FastkexecUncompressed,
    /// fastkexec load --mode staged (vmlinux staged in the crashkernel reservation)
    FastkexecStaged,
    /// test: load staged, then panic (sysrq c): the kdump-safe panic path must boot
    FastkexecStagedPanic,
    /// test: load staged, load a kdump kernel over it: exec must refuse, a forced
    /// exec must reset the machine instead of booting
    FastkexecStagedReplaced,
    /// test: load uncompressed and exec --force, each with its output on a terminal that
    /// hangs up while it runs (SIGHUP, EIO): the load must succeed and the new kernel boot
    FastkexecHangup,
    /// test: fastkexec load --mode uncompressed --verify: the purgatory checksums every
    /// segment before it jumps, and the kernel boots
    FastkexecUncompressedVerify,
    /// test: as uncompressed --verify, with a wrong checksum recorded for one segment
    /// (`--test-wrong-verify-sum`): the purgatory must stop with its mismatch message
    FastkexecVerifyMismatch,
}

/// What a successful run of a mode looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Expect {
    /// The new kernel's init runs and reports itself (right kernel, cmdline, initrd).
    Boot,
    /// As `Boot`, and the new kernel sees all RAM: MemTotal within
    /// [`MEMTOTAL_TOLERANCE`] of the cold boot's.
    BootAllRam,
    /// As `Boot` but through the panic path: at most the reservation
    /// ([`CRASHKERNEL_MIB`]) as RAM and the panic marker on the command line.
    BootKdumpSafe,
    /// `fastkexec exec` refuses, then the trampoline resets the machine on a
    /// forced exec: no new kernel runs.
    RefuseThenReset,
    /// As `Boot`, after `load` and `exec` each had their terminal hung up while blocked
    /// writing to it, as its controlling process (so SIGHUP came first): `load` exited 0 with
    /// the kernel loaded, and `exec` rebooted.
    BootAfterHangup,
    /// The purgatory prints its checksum-mismatch message and halts: no new kernel runs.
    VerifyHalt,
}

/// The reservation the lab's command line asks for (`crashkernel=`).
pub const CRASHKERNEL_MIB: u64 = 256;
/// How far the staged kernel's MemTotal may be from the cold boot's.
pub const MEMTOTAL_TOLERANCE: f64 = 0.02;
/// The staged panic path's command-line marker (fastkexec's `staged::PANIC_MARKER`).
pub const PANIC_MARKER: &str = fastkexec::staged::PANIC_MARKER;
/// The line the trampoline prints before it resets the machine.
pub const TRAMPOLINE_RESET_LINE: &str = "fastkexec trampoline: ";
/// The purgatory's message on a `--verify` mismatch (fastkexec/src/blobs/purgatory.rs), and its last line.
pub const PURGATORY_MISMATCH_LINE: &str = "fastkexec purgatory: checksum mismatch in segment";
pub const PURGATORY_HALT_LINE: &str = "fastkexec purgatory: ";

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::KexecToolsL => "kexec-tools-l",
            Mode::KexecToolsLI => "kexec-tools-l-i",
            Mode::KexecToolsS => "kexec-tools-s",
            Mode::FastkexecFile => "fastkexec-file",
            Mode::FastkexecUncompressed => "fastkexec-uncompressed",
            Mode::FastkexecStaged => "fastkexec-staged",
            Mode::FastkexecStagedPanic => "fastkexec-staged-panic",
            Mode::FastkexecStagedReplaced => "fastkexec-staged-replaced",
            Mode::FastkexecHangup => "fastkexec-hangup",
            Mode::FastkexecUncompressedVerify => "fastkexec-uncompressed-verify",
            Mode::FastkexecVerifyMismatch => "fastkexec-verify-mismatch",
        }
    }

    pub fn expect(self) -> Expect {
        match self {
            Mode::FastkexecStaged => Expect::BootAllRam,
            Mode::FastkexecStagedPanic => Expect::BootKdumpSafe,
            Mode::FastkexecStagedReplaced => Expect::RefuseThenReset,
            Mode::FastkexecHangup => Expect::BootAfterHangup,
            Mode::FastkexecVerifyMismatch => Expect::VerifyHalt,
            _ => Expect::Boot,
        }
    }

    /// Round 1 loads the vmlinux fastkexec extracts: the host prepares its cache (and round 1
    /// runs `fastkexec prepare` on it before the timed load, which verifies the copy once).
    fn uses_vmlinux_cache(self) -> bool {
        matches!(
            self,
            Mode::FastkexecUncompressed
                | Mode::FastkexecStaged
                | Mode::FastkexecStagedPanic
                | Mode::FastkexecStagedReplaced
                | Mode::FastkexecHangup
                | Mode::FastkexecUncompressedVerify
                | Mode::FastkexecVerifyMismatch
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM when a probe boot proves it can run stock kernels here, else TCG
    Auto,
    Tcg,
    Kvm,
}

/// The VM round 1 runs on. By default a small server, as the kernel that kexec replaces
/// finds it on users' machines: a virtio NIC (link up) and a virtio disk bound to their
/// drivers, a quarter of the RAM in page cache when round 1 loads, and a round-2 initrd the size of
/// a Debian server's (`initrd_mib`). At exec the kernel copies every page of a `kexec_load`
/// image, initrd included, so that size is part of the handoff. `bare` is the lab before
/// issue 12: no devices, idle memory, the ~10 MiB busybox initrd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Machine {
    pub bare: bool,
    /// The round-2 initrd is padded to this size (ignored when `bare`).
    pub initrd_mib: u32,
}

/// A Debian server's initrd.img (initramfs-tools, compressed): tens of MiB.
pub const SERVER_INITRD_MIB: u32 = 32;
/// The scratch virtio disk's size (a null-co device: reads return zeros, nothing is stored).
const SCRATCH_DISK_BYTES: u64 = 4 << 30;

impl Machine {
    pub fn server() -> Self {
        Machine {
            bare: false,
            initrd_mib: SERVER_INITRD_MIB,
        }
    }

    pub fn bare() -> Self {
        Machine {
            bare: true,
            initrd_mib: 0,
        }
    }

    /// One line for bench tables and logs.
    pub fn describe(self) -> String {
        if self.bare {
            "bare VM (no NIC or disk, idle memory, ~10 MiB initrd)".into()
        } else {
            format!(
                "server VM (virtio NIC up and disk, a quarter of the RAM in page cache at load, \
                 {} MiB initrd)",
                self.initrd_mib
            )
        }
    }

    /// The round-2 initrd's minimum size in bytes.
    fn initrd_bytes(self) -> usize {
        if self.bare {
            0
        } else {
            (self.initrd_mib as usize) << 20
        }
    }

    /// Image file names carry the machine: a bare and a server run never share one.
    fn suffix(self) -> String {
        if self.bare {
            "-bare".into()
        } else {
            format!("-server{}m", self.initrd_mib)
        }
    }

    /// Round 1's command-line words: the guest loads the drivers and fills the page cache.
    fn cmdline_words(self) -> Vec<String> {
        if self.bare {
            vec![]
        } else {
            vec!["fklab.server=1".into()]
        }
    }

    /// QEMU arguments for the NIC and, unless the run brings its own disks (chained), the
    /// scratch disk round 1 reads into the page cache (found by its serial).
    fn qemu_args(self, chained: bool) -> Vec<String> {
        if self.bare {
            return vec![];
        }
        let mut a: Vec<String> = [
            "-netdev",
            "user,id=net0",
            "-device",
            "virtio-net-pci,netdev=net0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if !chained {
            a.extend([
                "-blockdev".into(),
                format!(
                    "driver=null-co,node-name=scratch,size={SCRATCH_DISK_BYTES},read-zeroes=on"
                ),
                "-device".into(),
                "virtio-blk-pci,drive=scratch,serial=fklab-scratch".into(),
            ]);
        }
        a
    }
}

pub struct RunOptions {
    pub mode: Mode,
    /// The VM's devices, memory use and initrd size.
    pub machine: Machine,
    pub timeout: Duration,
    pub memory: String,
    pub smp: u32,
    /// Extra kernel command-line words for both rounds.
    pub append: Vec<String>,
    /// Round 1 runs `fastkexec trace --exec`, round 2 `fastkexec report --json`.
    pub trace: bool,
    /// With `trace`: damage the record on purpose (round 2 must refuse it).
    pub trace_damage: Option<crate::labtrace::Damage>,
    /// With `trace`: only the phase-boundary probes (`fastkexec trace --lean`).
    pub trace_lean: bool,
    /// With `trace`: `fastkexec trace` without --exec follows a reboot that
    /// `fastkexec exec --force` starts (the request is then not stamped).
    pub trace_follow: bool,
    /// kexec reboots to chain in one VM (1: the classic two rounds).
    pub reboots: u32,
    /// Chained runs: copy the guest's fastkexec state directory here.
    pub state_out: Option<PathBuf>,
    /// QEMU's instruction-counting clock (TCG only): each guest instruction
    /// advances guest time by 2^shift ns. Guest timings then count work,
    /// not TCG's translation overhead; the host stopwatch no longer times
    /// the guest's clock.
    pub icount: Option<u32>,
    /// Under icount, let guest time jump to the next timer when the vCPU idles (QEMU's
    /// `sleep=off`) instead of following the host's clock while it sleeps: a sleeping
    /// initcall then costs the same in every boot, so small differences become measurable.
    pub icount_no_sleep: bool,
    /// Round 2 runs the boot-time unit's logic (`labunit`) and prints the textfile it left.
    pub unit: bool,
    /// With `trace`: the new kernel also runs `initcall_debug`; the report's initcalls are
    /// held to its lines (`labinitcalls`).
    pub initcall_check: bool,
    /// With `trace`: `fastkexec trace --no-initcalls`.
    pub no_initcalls: bool,
}

impl RunOptions {
    /// One untraced two-round run with no extras.
    pub fn new(mode: Mode, timeout: Duration, memory: &str, smp: u32) -> Self {
        RunOptions {
            mode,
            machine: Machine::server(),
            timeout,
            memory: memory.into(),
            smp,
            append: vec![],
            trace: false,
            trace_damage: None,
            trace_lean: false,
            trace_follow: false,
            reboots: 1,
            state_out: None,
            icount: None,
            icount_no_sleep: false,
            unit: false,
            initcall_check: false,
            no_initcalls: false,
        }
    }

    /// What `--icount` needs, said before QEMU starts rather than after a hang.
    pub fn check_icount(&self, accel: &str) -> Result<()> {
        if self.icount.is_none() {
            return Ok(());
        }
        if accel != "tcg" {
            bail!(
                "--icount needs the TCG accelerator (this run would use {accel}): pass --accel tcg"
            );
        }
        if self.smp > 1 {
            bail!(
                "--icount with --smp {}: under icount QEMU 7.2 never brought a second vCPU up here \
                 (the boot hangs at \"Booting SMP configuration\"): pass --smp 1",
                self.smp
            );
        }
        Ok(())
    }

    /// A chained run: the state directory rides on a virtio disk and every
    /// round boots the chain image (see `labchain`).
    pub fn chained(&self) -> bool {
        self.reboots > 1 || self.state_out.is_some()
    }
}

/// Serial-line marks, in host milliseconds since QEMU was started.
#[derive(Debug, Default, Serialize)]
pub struct Marks {
    pub first_serial_line: Option<f64>,
    pub init: Option<f64>,
    pub loading: Option<f64>,
    pub loaded: Option<f64>,
    pub exec: Option<f64>,
    pub starting_new_kernel: Option<f64>,
    pub first_new_kernel_line: Option<f64>,
    pub new_init: Option<f64>,
    pub done: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct HostMs {
    /// `FKLAB: exec` (right before the exec call) → the new kernel's first line.
    pub exec_to_first_new_kernel_line: Option<f64>,
    /// `FKLAB: exec` → the new kernel's /init printing its first line.
    pub exec_to_new_init: Option<f64>,
    /// `FKLAB: loading` → `FKLAB: loaded` (load time in the guest).
    pub load: Option<f64>,
    /// QEMU start → first /init line (cold boot).
    pub cold_boot_to_init: Option<f64>,
    /// "kexec_core: Starting new kernel" → the new kernel's first line (the handoff).
    pub starting_new_kernel_to_first_line: Option<f64>,
    /// The handoff in CPU time of QEMU's threads (`qemucpu`) rather than wall time: what
    /// the emulator spent on it, hardly moved by other processes sharing the host.
    pub qemu_cpu_starting_new_kernel_to_first_line: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct NewKernel {
    pub release: Option<String>,
    pub cmdline: Option<String>,
    pub mem_total_kb: Option<u64>,
    pub initrd_seen: Option<bool>,
    /// MemTotal of the first (cold-booted) kernel, from round 1.
    pub cold_mem_total_kb: Option<u64>,
}

/// Mode-specific facts round 1 reported.
#[derive(Debug, Default, Serialize)]
pub struct Round1 {
    /// `fastkexec exec` refused (replaced-image test).
    pub exec_refused: bool,
    /// The trampoline printed its reset line after the forced exec.
    pub trampoline_reset: bool,
    /// `fastkexec-hangup`: the commands (`load`, `exec`) that were blocked writing to their
    /// terminal when it hung up.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hung_up: Vec<String>,
    /// `fastkexec-hangup`: `load`'s exit status after its terminal hung up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hangup_load_rc: Option<i32>,
    /// `fastkexec-hangup`: each of them was its terminal's controlling process (session leader,
    /// the pty its controlling terminal), so the hangup sent it SIGHUP.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub hangup_controlling: bool,
    /// The purgatory's `--verify` mismatch message, as printed (verify-mismatch test).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purgatory_mismatch: Option<String>,
    /// The server VM's state before the load (NIC state, the disk read into the page
    /// cache, Buffers, Cached and MemFree in kB), as round 1 printed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct KernelRef {
    pub name: String,
    pub suite: String,
    pub packages: Vec<String>,
    pub version: String,
    pub release: String,
    pub compression: String,
}

/// The lab JSON (schema documented in README.md).
#[derive(Debug, Serialize)]
pub struct RunReport {
    pub schema_version: u32,
    pub kernel: KernelRef,
    pub mode: Mode,
    pub accel: String,
    /// The VM's devices, memory use and initrd size.
    pub machine: Machine,
    pub qemu: Vec<String>,
    pub booted: bool,
    /// What this mode counts as success.
    pub expect: Expect,
    pub ok: bool,
    pub host_ms: HostMs,
    pub marks_ms: Marks,
    pub new_kernel: NewKernel,
    pub round1: Round1,
    /// `--trace`: round 2's `fastkexec report --json`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<serde_json::Value>,
    /// `--trace`: round 2's report as the table it printed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub report_table: Vec<String>,
    /// `--trace`: the report next to the host stopwatch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<crate::labtrace::TraceCheck>,
    /// `--trace` (undamaged): round 1's `fastkexec trace --dry-run` before the real trace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preflight: Option<crate::labpreflight::Preflight>,
    /// `--trace`: round 2's `report --svg`, saved in the run directory and read back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeline_svg: Option<crate::labsvg::SvgCheck>,
    /// `--unit`: the boot-time unit's logic in round 2, and the textfile it left.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<crate::labunit::UnitCheck>,
    /// `--reboots`/`--state-out`: the chained run's state and its export.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain: Option<crate::labchain::ChainCheck>,
    /// `--initcall-check`: the report's slowest initcalls against the kernel's own figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initcalls: Option<crate::labinitcalls::InitcallCheck>,
    pub serial_log: PathBuf,
    pub error: Option<String>,
    pub tail: Vec<String>,
}

/// The kernel as the lab JSON names it.
pub fn kernel_ref(kernel: &KernelInfo) -> KernelRef {
    KernelRef {
        name: kernel.name.clone(),
        suite: kernel.suite.clone(),
        packages: kernel.packages.clone(),
        version: kernel.version.clone(),
        release: kernel.release.clone(),
        compression: kernel.compression.clone(),
    }
}

/// The lab's static fastkexec (musl), built for the initramfs.
pub fn build_static_fastkexec() -> Result<PathBuf> {
    step("building static fastkexec (x86_64-unknown-linux-musl, release)");
    run(
        "cargo build (static fastkexec for the lab)",
        Command::new(env!("CARGO"))
            .current_dir(workspace_root())
            .args([
                "build",
                "--quiet",
                "--release",
                "--target",
                "x86_64-unknown-linux-musl",
                "-p",
                "fastkexec",
            ]),
    )?;
    Ok(static_fastkexec())
}

/// Where [`build_static_fastkexec`] leaves the binary.
pub fn static_fastkexec() -> PathBuf {
    workspace_root().join("target/x86_64-unknown-linux-musl/release/fastkexec")
}

/// Builds the round-1 initramfs for a kernel, mode and machine; returns its path.
pub fn build_images(
    kernel: &KernelInfo,
    mode: Mode,
    tools: &Tools,
    machine: Machine,
) -> Result<PathBuf> {
    let dir = lab_dir().join("images").join(&kernel.name);
    let extra = cache_files(kernel, mode, &dir)?;
    let modules = if machine.bare {
        vec![]
    } else {
        crate::labchain::device_modules(kernel)?
    };
    let round2 = initramfs::round2(tools, machine.initrd_bytes())?;
    let image = initramfs::round1(tools, &kernel.vmlinuz, round2, &modules, &extra)?;
    let path = dir.join(format!("round1-{}{}.cpio", mode.name(), machine.suffix()));
    write_atomic(&path, &image)?;
    Ok(path)
}

/// Builds the image every round of a chained run boots (`--reboots`).
pub fn build_chain_image(kernel: &KernelInfo, mode: Mode, tools: &Tools) -> Result<PathBuf> {
    let dir = lab_dir().join("images").join(&kernel.name);
    let extra = cache_files(kernel, mode, &dir)?;
    let modules = crate::labchain::device_modules(kernel)?;
    let image = initramfs::chain(tools, &kernel.vmlinuz, &extra, &modules)?;
    let path = dir.join(format!("chain-{}.cpio", mode.name()));
    write_atomic(&path, &image)?;
    Ok(path)
}

/// The host-prepared vmlinux cache the mode loads from, as (guest path, host file).
fn cache_files(kernel: &KernelInfo, mode: Mode, dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut extra = Vec::new();
    if mode.uses_vmlinux_cache() {
        // Done on the host ahead of time, as `fastkexec prepare` would be on a
        // server: the guest's load then hits the cache.
        let cache = dir.join("cache");
        fastkexec::image::prepare::prepare(&kernel.vmlinuz, &cache)
            .with_context(|| format!("preparing {}", kernel.vmlinuz.display()))?;
        for f in walk(&cache)? {
            let rel = f.strip_prefix(&cache)?.to_string_lossy().into_owned();
            extra.push((format!("lab/cache/{rel}"), f));
        }
    }
    Ok(extra)
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            out.extend(walk(&p)?);
        } else {
            out.push(p);
        }
    }
    Ok(out)
}

fn qemu_args(
    kernel: &Path,
    initrd: &Path,
    accel: &str,
    opts: &RunOptions,
    cmdline: &str,
) -> Vec<String> {
    crate::qemu::base_args(kernel, initrd, accel, &opts.memory, opts.smp, cmdline)
        .into_iter()
        .chain(opts.machine.qemu_args(opts.chained()))
        .chain(opts.icount.into_iter().flat_map(|shift| {
            let sleep = if opts.icount_no_sleep { "off" } else { "on" };
            [
                "-icount".to_string(),
                format!("shift={shift},sleep={sleep}"),
            ]
        }))
        .collect()
}

/// The command line of round 1 (round 2 gets it with fklab.round=2).
pub fn cmdline(round: &str, mode: &str, extra: &[String]) -> String {
    let mut c = format!(
        "console=ttyS0,115200 earlyprintk=serial,ttyS0,115200 crashkernel=256M panic=-1 \
         fklab.round={round} fklab.mode={mode}"
    );
    for e in extra {
        c.push(' ');
        c.push_str(e);
    }
    c
}

/// Timestamped serial lines of one QEMU run.
struct Serial {
    lines: Vec<(f64, String)>,
    /// Per line: QEMU's CPU time (ms, `qemucpu`) when its first byte arrived.
    cpu_ms: Vec<Option<f64>>,
    exited: bool,
    timed_out: bool,
}

/// Starts QEMU and collects its serial lines until it exits, `stop` says so
/// (then waits a bounded time for QEMU's own exit) or `timeout` passes.
fn boot(
    args: &[String],
    log: &Path,
    timeout: Duration,
    stop: impl Fn(&str) -> bool,
) -> Result<Serial> {
    let start = Instant::now();
    let mut child: Child = Command::new("qemu-system-x86_64")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64 (run `cargo xtask setup`)")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let cpu = crate::qemucpu::CpuClock::new(child.id());
    let (rx, reader) = crate::qemu::lines(stdout, start, Some(cpu));
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut w = BufWriter::new(file);
    let mut lines = Vec::new();
    let mut cpu_ms = Vec::new();
    let mut deadline = start + timeout;
    let mut exited = false;
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((t, c, line)) => {
                writeln!(w, "{t:12.3} {line}")?;
                if stop(&line) {
                    // QEMU powers off right after; give it a bounded grace.
                    deadline = deadline.min(Instant::now() + Duration::from_secs(15));
                }
                lines.push((t, line));
                cpu_ms.push(c);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                exited = true;
                break;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = !lines.iter().any(|(_, l)| stop(l));
                break;
            }
        }
    }
    lines.extend(crate::qemu::finish(child, reader, exited, start, &mut w)?);
    Ok(Serial {
        lines,
        cpu_ms,
        exited,
        timed_out,
    })
}

/// Decides the accelerator: KVM only when a probe boot proved it works here.
pub fn resolve_accel(accel: Accel, probe_kernel: &KernelInfo, tools: &Tools) -> Result<String> {
    match accel {
        Accel::Tcg => return Ok("tcg".into()),
        Accel::Kvm => return Ok("kvm".into()),
        Accel::Auto => {}
    }
    if !Path::new("/dev/kvm").exists() {
        return Ok("tcg".into());
    }
    let cache = lab_dir().join("accel-probe.json");
    if let Ok(s) = std::fs::read_to_string(&cache) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&s) {
            if let Some(a) = v.get("accel").and_then(|a| a.as_str()) {
                return Ok(a.to_string());
            }
        }
    }
    step("probing whether KVM can boot a stock kernel here (once per machine)");
    let initrd = lab_dir().join("images/probe.cpio");
    write_atomic(&initrd, &initramfs::round2(tools, 0)?)?;
    let opts = RunOptions {
        machine: Machine::bare(),
        ..RunOptions::new(Mode::KexecToolsL, Duration::from_secs(60), "512M", 1)
    };
    let args = qemu_args(
        &probe_kernel.vmlinuz,
        &initrd,
        "kvm",
        &opts,
        &cmdline("probe", "none", &[]),
    );
    let log = lab_dir().join("accel-probe.log");
    let serial = boot(&args, &log, opts.timeout, |l| {
        l.starts_with("FKLAB: probe ok")
    })?;
    let ok = serial
        .lines
        .iter()
        .any(|(_, l)| l.starts_with("FKLAB: probe ok"));
    let accel = if ok { "kvm" } else { "tcg" };
    step(format!(
        "KVM probe: {} (log {})",
        if ok {
            "works"
        } else {
            "cannot boot a stock kernel; using TCG"
        },
        log.display()
    ));
    write_atomic(
        &cache,
        serde_json::json!({"accel": accel, "probe_log": log})
            .to_string()
            .as_bytes(),
    )?;
    Ok(accel.into())
}

/// One lab run: boot, round 1 per mode, round 2 report; never hangs.
pub fn run_once(
    kernel: &KernelInfo,
    initrd: &Path,
    accel: &str,
    opts: &RunOptions,
) -> Result<RunReport> {
    let dir = crate::util::new_run_dir(&format!("{}-{}", kernel.name, opts.mode.name()))?;
    let log = dir.join("serial.log");
    let mut append = opts.append.clone();
    append.extend(crate::labtrace::cmdline_words(
        opts.trace,
        opts.trace_damage,
        opts.trace_lean,
        opts.trace_follow,
    ));
    if opts.unit {
        append.push("fklab.unit=1".to_string());
    }
    append.extend(opts.machine.cmdline_words());
    append.extend(crate::labinitcalls::cmdline_words(
        opts.trace && opts.initcall_check,
        opts.trace && opts.no_initcalls,
    ));
    opts.check_icount(accel)?;
    let state_img = dir.join("state.img");
    if opts.chained() {
        append.extend(crate::labchain::cmdline_words(opts.reboots));
        crate::labchain::create_state_disk(&state_img)?;
    }
    let cmd = cmdline("1", opts.mode.name(), &append);
    let mut args = qemu_args(&kernel.vmlinuz, initrd, accel, opts, &cmd);
    if opts.chained() {
        args.extend(crate::labchain::qemu_drives(&state_img, initrd));
    }
    step(format!(
        "lab: {} on {} ({}), serial log {}",
        opts.mode.name(),
        kernel.name,
        accel,
        log.display()
    ));
    let serial = boot(&args, &log, opts.timeout, |l| {
        l.starts_with("FKLAB: done")
            || l.starts_with("FKLAB: error")
            // The purgatory halts after its mismatch message: nothing more will come.
            || (l.contains(PURGATORY_HALT_LINE) && l.trim_end().ends_with("halting"))
    })?;
    let mut report = analyse(kernel, opts.mode, accel, &serial.lines, log);
    report.machine = opts.machine;
    let cpu_at = |mark: Option<f64>| {
        let i = serial.lines.iter().position(|(t, _)| Some(*t) == mark)?;
        *serial.cpu_ms.get(i)?
    };
    let m = &report.marks_ms;
    report.host_ms.qemu_cpu_starting_new_kernel_to_first_line = cpu_at(m.first_new_kernel_line)
        .zip(cpu_at(m.starting_new_kernel))
        .map(|(b, a)| b - a);
    // Only once round 1's init ran: a cold boot that died first is reported as such below.
    if !opts.machine.bare
        && report.marks_ms.init.is_some()
        && report.round1.server.is_none()
        && report.error.is_none()
    {
        report.error = Some("round 1 did not report its server devices (FKLAB: server)".into());
        report.ok = false;
    }
    if opts.trace {
        let (json, rc) = crate::labtrace::extract(&serial.lines);
        let m = &report.marks_ms;
        let after_exec = |t: Option<f64>| Some(t? - m.exec?);
        // Under icount guest time counts instructions: the host stopwatch times something
        // else, so the two are not compared.
        let host = opts.icount.is_none().then(|| crate::labtrace::HostLines {
            starting_new_kernel: after_exec(m.starting_new_kernel),
            first_new_kernel_line: after_exec(m.first_new_kernel_line),
            new_init: report.host_ms.exec_to_new_init,
        });
        let mut check = crate::labtrace::check(
            json.as_ref(),
            rc,
            host,
            opts.trace_damage,
            match opts.mode {
                Mode::FastkexecFile => crate::labtrace::Loaded::File,
                Mode::FastkexecStaged => crate::labtrace::Loaded::Staged,
                _ => crate::labtrace::Loaded::Uncompressed,
            },
        );
        if opts.icount.is_some()
            && opts.mode == Mode::FastkexecStaged
            && opts.trace_damage.is_none()
        {
            // Staged mode's point (no copy at exec), on the clock where it is deterministic.
            check.limit_kexec_to_purgatory(crate::labtrace::STAGED_ICOUNT_LIMIT_MS);
        }
        if !check.ok() && report.error.is_none() && report.booted {
            report.error = Some(format!(
                "the traced run's report is not what it must be: {}",
                check.problem()
            ));
        }
        report.ok &= check.ok();
        if opts.trace_damage.is_none() {
            let preflight = crate::labpreflight::parse(&serial.lines, json.as_ref());
            let good = preflight.as_ref().is_some_and(|p| p.ok());
            if !good && report.error.is_none() && report.booted {
                report.error = Some(match &preflight {
                    Some(p) => format!("the preflight is not what it must be: {}", p.summary()),
                    None => "round 1 printed no preflight (`fastkexec trace --dry-run`)".into(),
                });
            }
            report.ok &= good;
            report.preflight = preflight;
        }
        if opts.trace_damage.is_none() {
            let svg = crate::labsvg::check(&serial.lines, json.as_ref(), &dir);
            let good = svg.as_ref().is_some_and(|c| c.ok());
            if !good && report.error.is_none() && report.booted {
                report.error = Some(format!(
                    "the timeline picture is not what it must be: {:?}",
                    svg
                ));
            }
            report.ok &= good;
            report.timeline_svg = svg;
        }
        if opts.initcall_check {
            let hz = crate::labinitcalls::config_hz(kernel.config.as_deref()).unwrap_or(250);
            let ic = crate::labinitcalls::check(&serial.lines, json.as_ref(), hz, &dir);
            if !ic.ok() && report.error.is_none() && report.booted {
                report.error = Some(format!(
                    "the report's initcalls do not agree with initcall_debug: {}",
                    ic.error
                        .clone()
                        .unwrap_or_else(|| "see initcalls.compared".into())
                ));
            }
            report.ok &= ic.ok();
            report.initcalls = Some(ic);
        }
        report.report_table = crate::labtrace::table(&serial.lines);
        report.report = json;
        report.trace = Some(check);
    }
    if opts.unit {
        let unit = crate::labunit::check(&serial.lines, &dir);
        let good = unit.as_ref().is_some_and(|u| u.ok());
        if !good && report.error.is_none() && report.booted {
            report.error = Some(format!(
                "the boot-time unit's logic did not end well or left no valid textfile: {unit:?}"
            ));
        }
        report.ok &= good;
        report.unit = unit;
    }
    if opts.chained() {
        let out = opts.state_out.clone().unwrap_or_else(|| dir.join("state"));
        let check = crate::labchain::check(
            &serial.lines,
            opts.reboots,
            &state_img,
            &out,
            &static_fastkexec(),
        );
        if !check.ok() && report.error.is_none() && report.booted {
            report.error = Some(format!(
                "the chained run's state is not what it must be: reboots {}/{}, states saved {}, \
                 promtool ok {}, _count per phase {:?}, hdrhistogram decoded {} (differs: {:?}){}",
                check.reboots_seen,
                check.reboots_wanted,
                check.states_saved,
                check.promtool_ok,
                check.counts,
                check.hdr_decoded,
                check.hdr_mismatches,
                check
                    .error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ));
        }
        report.ok &= check.ok();
        report.chain = Some(check);
    }
    report.qemu = std::iter::once("qemu-system-x86_64".to_string())
        .chain(args)
        .collect();
    if report.error.is_none() {
        if serial.timed_out {
            report.error = Some(format!("timeout after {} s", opts.timeout.as_secs()));
        } else if report.expect == Expect::RefuseThenReset {
            if !report.ok {
                report.error = Some(if report.booted {
                    "a kernel booted after the staged image was replaced".into()
                } else if !report.round1.exec_refused {
                    "fastkexec exec did not refuse the replaced staged image".into()
                } else {
                    "the forced exec did not end in the trampoline's reset".into()
                });
            }
        } else if report.expect == Expect::VerifyHalt {
            if !report.ok {
                report.error = Some(if report.booted {
                    "a kernel booted although a segment's recorded checksum was wrong".into()
                } else {
                    "the purgatory did not print its checksum mismatch".into()
                });
            }
        } else if !report.booted {
            report.error = Some(if serial.exited {
                "QEMU exited before the new kernel's init ran (panic, triple fault or reset)".into()
            } else {
                "round 2 never started".into()
            });
        } else if !report.ok {
            report.error = Some(match report.expect {
                Expect::BootAllRam => {
                    "round 2 ran but its report is incomplete or wrong, or MemTotal is not \
                     within 2% of the cold boot's"
                        .into()
                }
                Expect::BootKdumpSafe => {
                    "round 2 ran but not the kdump-safe way (RAM beyond the reservation, or no \
                     panic marker)"
                        .into()
                }
                Expect::BootAfterHangup => format!(
                    "round 2 ran, but round 1 did not show both commands hung up mid-way as \
                     their terminal's controlling process, with load exiting 0 (hung up: {:?}, \
                     load rc {:?}, controlling process {})",
                    report.round1.hung_up,
                    report.round1.hangup_load_rc,
                    report.round1.hangup_controlling
                ),
                _ => "round 2 ran but its report is incomplete or wrong".into(),
            });
        }
    }
    if report.error.is_some() {
        report.tail = serial
            .lines
            .iter()
            .rev()
            .take(40)
            .rev()
            .map(|(_, l)| l.clone())
            .collect();
    }
    write_atomic(
        &dir.join("result.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    Ok(report)
}

/// Turns timestamped serial lines into marks, host figures and round-2 facts.
pub fn analyse(
    kernel: &KernelInfo,
    mode: Mode,
    accel: &str,
    lines: &[(f64, String)],
    log: PathBuf,
) -> RunReport {
    let mut m = Marks::default();
    let mut nk = NewKernel::default();
    let mut r1 = Round1::default();
    let mut error = None;
    for (t, l) in lines {
        let t = Some(*t);
        m.first_serial_line = m.first_serial_line.or(t);
        if l.starts_with("FKLAB: init round=1") {
            m.init = m.init.or(t);
        } else if l.starts_with("FKLAB: loading") {
            m.loading = m.loading.or(t);
        } else if l == "FKLAB: loaded" {
            m.loaded = m.loaded.or(t);
        } else if l == "FKLAB: exec" {
            m.exec = m.exec.or(t);
        } else if l.starts_with("FKLAB: init round=2") {
            m.new_init = m.new_init.or(t);
        } else if l == "FKLAB: done" {
            m.done = m.done.or(t);
        } else if let Some(e) = l.strip_prefix("FKLAB: error ") {
            error.get_or_insert_with(|| e.to_string());
        } else if let Some(v) = l.strip_prefix("FKLAB: cold memtotal_kb=") {
            nk.cold_mem_total_kb = v.trim().parse().ok();
        } else if let Some(v) = l.strip_prefix("FKLAB: server ") {
            r1.server.get_or_insert_with(|| v.to_string());
        } else if l == "FKLAB: exec refused" {
            r1.exec_refused = true;
        } else if let Some(v) = l.strip_prefix("FKLAB: hangup ") {
            let mut words = v.split_whitespace();
            let name = words.next().unwrap_or_default();
            let fields: Vec<(&str, &str)> = words.filter_map(|w| w.split_once('=')).collect();
            let field = |k: &str| fields.iter().find(|(f, _)| *f == k).map(|(_, v)| *v);
            if v.split_whitespace().any(|w| w == "blocked") {
                let controlling = field("controlling") == Some("1");
                r1.hangup_controlling =
                    controlling && (r1.hung_up.is_empty() || r1.hangup_controlling);
                r1.hung_up.push(name.to_string());
            } else if name == "load" {
                r1.hangup_load_rc = field("rc").and_then(|rc| rc.parse().ok());
            }
        } else if m.exec.is_some() && m.new_init.is_none() && l.contains(TRAMPOLINE_RESET_LINE) {
            r1.trampoline_reset = true;
        } else if m.exec.is_some() && m.new_init.is_none() && l.contains(PURGATORY_MISMATCH_LINE) {
            let at = l.find(PURGATORY_MISMATCH_LINE).unwrap_or(0);
            r1.purgatory_mismatch = Some(l[at..].to_string());
        } else if m.new_init.is_some() {
            if let Some(v) = l.strip_prefix("FKLAB: kernel=") {
                nk.release = Some(v.to_string());
            } else if let Some(v) = l.strip_prefix("FKLAB: cmdline=") {
                nk.cmdline = Some(v.to_string());
            } else if let Some(v) = l.strip_prefix("FKLAB: memtotal_kb=") {
                nk.mem_total_kb = v.trim().parse().ok();
            } else if let Some(v) = l.strip_prefix("FKLAB: initrd=") {
                nk.initrd_seen = Some(v == "ok");
            }
        } else if m.exec.is_some() {
            if l.contains("Starting new kernel") {
                m.starting_new_kernel = m.starting_new_kernel.or(t);
            } else if m.first_new_kernel_line.is_none() && l.contains("Linux version") {
                m.first_new_kernel_line = t;
            }
        }
    }
    let d = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
    let host_ms = HostMs {
        exec_to_first_new_kernel_line: d(m.exec, m.first_new_kernel_line),
        exec_to_new_init: d(m.exec, m.new_init),
        load: d(m.loading, m.loaded),
        cold_boot_to_init: m.init,
        starting_new_kernel_to_first_line: d(m.starting_new_kernel, m.first_new_kernel_line),
        qemu_cpu_starting_new_kernel_to_first_line: None,
    };
    let booted = m.new_init.is_some();
    let reported = booted
        && m.done.is_some()
        && nk.initrd_seen == Some(true)
        && nk.release.as_deref() == Some(kernel.release.as_str())
        && nk
            .cmdline
            .as_deref()
            .is_some_and(|c| c.split_whitespace().any(|w| w == "fklab.round=2"))
        && nk.mem_total_kb.is_some();
    let expect = mode.expect();
    let ok = meets(expect, reported, &nk, &r1, booted);
    RunReport {
        schema_version: 1,
        kernel: kernel_ref(kernel),
        mode,
        accel: accel.to_string(),
        machine: Machine::server(),
        qemu: vec![],
        booted,
        expect,
        ok,
        host_ms,
        marks_ms: m,
        new_kernel: nk,
        round1: r1,
        report: None,
        report_table: Vec::new(),
        trace: None,
        preflight: None,
        timeline_svg: None,
        unit: None,
        chain: None,
        initcalls: None,
        serial_log: log,
        error,
        tail: vec![],
    }
}

/// Whether a run met its mode's expectation.
pub fn meets(expect: Expect, reported: bool, nk: &NewKernel, r1: &Round1, booted: bool) -> bool {
    let has_marker = || {
        nk.cmdline
            .as_deref()
            .is_some_and(|c| c.split_whitespace().any(|w| w == PANIC_MARKER))
    };
    match expect {
        Expect::Boot => reported,
        Expect::BootAllRam => {
            reported
                && !has_marker()
                && match (nk.mem_total_kb, nk.cold_mem_total_kb) {
                    (Some(new), Some(cold)) if cold > 0 => {
                        (new as f64 - cold as f64).abs() / cold as f64 <= MEMTOTAL_TOLERANCE
                    }
                    _ => false,
                }
        }
        Expect::BootKdumpSafe => {
            reported
                && has_marker()
                && nk
                    .mem_total_kb
                    .is_some_and(|kb| kb > 0 && kb <= CRASHKERNEL_MIB * 1024)
        }
        Expect::RefuseThenReset => !booted && r1.exec_refused && r1.trampoline_reset,
        Expect::BootAfterHangup => {
            reported
                && r1.hung_up == ["load", "exec"]
                && r1.hangup_load_rc == Some(0)
                && r1.hangup_controlling
        }
        Expect::VerifyHalt => !booted && r1.purgatory_mismatch.is_some(),
    }
}

/// An interactive guest for exploration (serial console on this terminal).
pub fn shell(kernel: &KernelInfo, initrd: &Path, accel: &str, opts: &RunOptions) -> Result<()> {
    let cmd = cmdline("shell", "shell", &opts.append);
    let mut args = qemu_args(&kernel.vmlinuz, initrd, accel, opts, &cmd);
    // Ctrl-A X quits QEMU; the monitor is muxed onto the console.
    if let Some(i) = args.iter().position(|a| a == "stdio") {
        args[i] = "mon:stdio".into();
    }
    step("lab shell: Ctrl-A X quits QEMU; `poweroff -f` in the guest too");
    run(
        "qemu (lab shell)",
        Command::new("qemu-system-x86_64").args(&args),
    )
}

/// One human line per run, for terminals and CI logs.
pub fn summary_line(r: &RunReport) -> String {
    let f = |v: Option<f64>| {
        v.map(|v| format!("{v:.0} ms"))
            .unwrap_or_else(|| "-".into())
    };
    format!(
        "{} {} ({}): booted={} ok={} exec→first new-kernel line {} · exec→new init {} · load {}{}{}{}",
        r.kernel.name,
        r.mode.name(),
        r.kernel.packages.first().map(String::as_str).unwrap_or(""),
        r.booted,
        r.ok,
        f(r.host_ms.exec_to_first_new_kernel_line),
        f(r.host_ms.exec_to_new_init),
        f(r.host_ms.load),
        r.trace
            .as_ref()
            .map(crate::labtrace::summary)
            .unwrap_or_default(),
        r.chain
            .as_ref()
            .map(crate::labchain::summary)
            .unwrap_or_default(),
        r.error
            .as_deref()
            .map(|e| format!(" · error: {e}"))
            .unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel() -> KernelInfo {
        KernelInfo::fixture()
    }

    #[test]
    fn icount_reaches_qemu_only_when_asked() {
        let mut opts = RunOptions::new(Mode::FastkexecStaged, Duration::from_secs(1), "2G", 1);
        let args = |o: &RunOptions| qemu_args(Path::new("k"), Path::new("i"), "tcg", o, "c");
        assert!(!args(&opts).contains(&"-icount".to_string()));
        opts.icount = Some(0);
        assert!(opts.check_icount("tcg").is_ok());
        assert!(opts.check_icount("kvm").is_err());
        opts.smp = 2;
        let e = opts.check_icount("tcg").unwrap_err().to_string();
        assert!(e.contains("--smp 1"), "{e}");
        let a = args(&opts);
        let at = a.iter().position(|x| x == "-icount").unwrap();
        assert_eq!(a[at + 1], "shift=0,sleep=on");
        opts.icount_no_sleep = true;
        let a = args(&opts);
        assert!(a.contains(&"shift=0,sleep=off".to_string()), "{a:?}");
    }

    #[test]
    fn server_vm_has_a_nic_and_a_scratch_disk_bare_has_neither() {
        let args = |o: &RunOptions| qemu_args(Path::new("k"), Path::new("i"), "tcg", o, "c");
        let devices = |a: &[String]| -> Vec<String> {
            a.iter()
                .zip(a.iter().skip(1))
                .filter(|(f, _)| *f == "-device")
                .map(|(_, d)| d.split(',').next().unwrap_or("").to_string())
                .collect()
        };
        let mut opts =
            RunOptions::new(Mode::FastkexecUncompressed, Duration::from_secs(1), "2G", 2);
        assert_eq!(devices(&args(&opts)), ["virtio-net-pci", "virtio-blk-pci"]);
        assert!(args(&opts)
            .iter()
            .any(|a| a.contains("serial=fklab-scratch")));
        // A chained run brings its own two disks (vda, vdb): only the NIC is added.
        opts.reboots = 3;
        assert_eq!(devices(&args(&opts)), ["virtio-net-pci"]);
        opts.machine = Machine::bare();
        assert!(devices(&args(&opts)).is_empty());
        assert!(Machine::bare().cmdline_words().is_empty());
        assert_eq!(Machine::server().cmdline_words(), ["fklab.server=1"]);
        assert_eq!(Machine::server().initrd_bytes(), 32 << 20);
        assert_ne!(Machine::server().suffix(), Machine::bare().suffix());
    }

    fn lines(v: &[(f64, &str)]) -> Vec<(f64, String)> {
        v.iter().map(|(t, l)| (*t, l.to_string())).collect()
    }

    #[test]
    fn analyse_full_round_trip() {
        let l = lines(&[
            (10.0, "[    0.000000] Linux version 6.1.0-1-cloud-amd64"),
            (900.0, "FKLAB: init round=1 mode=kexec-tools-l uptime=0.9"),
            (901.0, "FKLAB: loading mode=kexec-tools-l"),
            (1500.0, "FKLAB: loaded"),
            (1510.0, "FKLAB: exec"),
            (1530.0, "[    2.0] kexec_core: Starting new kernel"),
            (3510.0, "[    0.000000] Linux version 6.1.0-1-cloud-amd64"),
            (8510.0, "FKLAB: init round=2 mode=kexec-tools-l uptime=1.0"),
            (8511.0, "FKLAB: kernel=6.1.0-1-cloud-amd64"),
            (
                8512.0,
                "FKLAB: cmdline=console=ttyS0 fklab.round=2 fklab.mode=kexec-tools-l",
            ),
            (8513.0, "FKLAB: memtotal_kb=1740000"),
            (8514.0, "FKLAB: initrd=ok"),
            (8515.0, "FKLAB: done"),
        ]);
        let r = analyse(&kernel(), Mode::KexecToolsL, "tcg", &l, PathBuf::from("x"));
        assert!(r.booted && r.ok, "{r:?}");
        assert_eq!(r.host_ms.exec_to_first_new_kernel_line, Some(2000.0));
        assert_eq!(r.host_ms.exec_to_new_init, Some(7000.0));
        assert_eq!(r.host_ms.load, Some(599.0));
        assert_eq!(r.marks_ms.starting_new_kernel, Some(1530.0));
        assert_eq!(r.new_kernel.mem_total_kb, Some(1_740_000));
    }

    #[test]
    fn analyse_panic_is_not_booted() {
        let l = lines(&[
            (900.0, "FKLAB: init round=1 mode=kexec-tools-l uptime=0.9"),
            (1510.0, "FKLAB: exec"),
            (3510.0, "[    0.000000] Linux version 6.1.0-1-cloud-amd64"),
            (
                4000.0,
                "Kernel panic - not syncing: VFS: Unable to mount root fs",
            ),
        ]);
        let r = analyse(&kernel(), Mode::KexecToolsL, "tcg", &l, PathBuf::from("x"));
        assert!(!r.booted && !r.ok);
        assert_eq!(r.host_ms.exec_to_new_init, None);
        assert_eq!(r.host_ms.exec_to_first_new_kernel_line, Some(2000.0));
    }

    #[test]
    fn analyse_wrong_kernel_or_missing_initrd_is_not_ok() {
        let l = lines(&[
            (1510.0, "FKLAB: exec"),
            (8510.0, "FKLAB: init round=2 mode=m"),
            (8511.0, "FKLAB: kernel=6.12.0-other"),
            (8512.0, "FKLAB: cmdline=fklab.round=2"),
            (8513.0, "FKLAB: memtotal_kb=1"),
            (8514.0, "FKLAB: initrd=missing"),
            (8515.0, "FKLAB: done"),
        ]);
        let r = analyse(&kernel(), Mode::KexecToolsL, "tcg", &l, PathBuf::from("x"));
        assert!(r.booted && !r.ok);
        assert_eq!(r.new_kernel.initrd_seen, Some(false));
    }

    /// A round trip of `mode` whose new kernel reports `mem_kb` and `cmdline`.
    fn staged_run(mode: Mode, cold_kb: u64, mem_kb: u64, cmdline: &str) -> RunReport {
        let l = lines(&[
            (900.0, "FKLAB: init round=1 mode=m uptime=0.9"),
            (901.0, &format!("FKLAB: cold memtotal_kb={cold_kb}")),
            (902.0, "FKLAB: loading mode=m"),
            (1500.0, "FKLAB: loaded"),
            (1510.0, "FKLAB: exec"),
            (1700.0, "[    0.000000] Linux version 6.1.0-1-cloud-amd64"),
            (6000.0, "FKLAB: init round=2 mode=m uptime=1.0"),
            (6001.0, "FKLAB: kernel=6.1.0-1-cloud-amd64"),
            (6002.0, &format!("FKLAB: cmdline={cmdline}")),
            (6003.0, &format!("FKLAB: memtotal_kb={mem_kb}")),
            (6004.0, "FKLAB: initrd=ok"),
            (6005.0, "FKLAB: done"),
        ]);
        analyse(&kernel(), mode, "tcg", &l, PathBuf::from("x"))
    }

    #[test]
    fn staged_needs_all_ram_back() {
        let c = "console=ttyS0 crashkernel=256M fklab.round=2";
        let r = staged_run(Mode::FastkexecStaged, 1_740_000, 1_735_000, c);
        assert_eq!(r.expect, Expect::BootAllRam);
        assert!(r.ok, "{r:?}");
        assert_eq!(r.new_kernel.cold_mem_total_kb, Some(1_740_000));
        // 3% short: some RAM went missing.
        let r = staged_run(Mode::FastkexecStaged, 1_740_000, 1_687_000, c);
        assert!(r.booted && !r.ok);
        // The panic path booted instead of the normal one.
        let p = format!("{c} {PANIC_MARKER}");
        assert!(!staged_run(Mode::FastkexecStaged, 1_740_000, 1_740_000, &p).ok);
        // Other modes do not judge MemTotal.
        assert!(staged_run(Mode::FastkexecUncompressed, 1_740_000, 900_000, c).ok);
    }

    #[test]
    fn staged_panic_needs_the_kdump_safe_boot() {
        let c = format!("console=ttyS0 fklab.round=2 reset_devices {PANIC_MARKER}");
        let r = staged_run(Mode::FastkexecStagedPanic, 1_740_000, 180_000, &c);
        assert_eq!(r.expect, Expect::BootKdumpSafe);
        assert!(r.ok, "{r:?}");
        // More RAM than the reservation: not kdump-safe.
        assert!(!staged_run(Mode::FastkexecStagedPanic, 1_740_000, 1_700_000, &c).ok);
        // No marker: the normal path ran, not the panic path.
        let plain = "console=ttyS0 fklab.round=2";
        assert!(!staged_run(Mode::FastkexecStagedPanic, 1_740_000, 180_000, plain).ok);
    }

    #[test]
    fn staged_replaced_must_refuse_then_reset() {
        let base: Vec<(f64, &str)> =
            vec![
            (900.0, "FKLAB: init round=1 mode=fastkexec-staged-replaced uptime=0.9"),
            (902.0, "FKLAB: loading mode=fastkexec-staged-replaced"),
            (1400.0, "fastkexec: error: the kernel staged in the crashkernel reservation ..."),
            (1410.0, "FKLAB: exec refused"),
            (1500.0, "FKLAB: loaded"),
            (1510.0, "FKLAB: exec"),
            (1530.0, "[    2.0] kexec_core: Starting new kernel"),
            (
                1540.0,
                "fastkexec trampoline: the kernel staged in the crashkernel reservation is not ...",
            ),
        ];
        let run = |v: &[(f64, &str)]| {
            analyse(
                &kernel(),
                Mode::FastkexecStagedReplaced,
                "tcg",
                &lines(v),
                PathBuf::from("x"),
            )
        };
        let r = run(&base);
        assert_eq!(r.expect, Expect::RefuseThenReset);
        assert!(r.ok && !r.booted, "{r:?}");
        assert!(r.round1.exec_refused && r.round1.trampoline_reset);
        // No refusal line: exec went ahead.
        let no_refusal: Vec<_> = base
            .iter()
            .copied()
            .filter(|(_, l)| *l != "FKLAB: exec refused")
            .collect();
        assert!(!run(&no_refusal).ok);
        // The trampoline stayed silent (a kernel may have been entered).
        assert!(!run(&base[..6]).ok);
        // A kernel booted anyway.
        let mut booted = base.clone();
        booted.push((5000.0, "FKLAB: init round=2 mode=fastkexec-staged-replaced"));
        booted.push((5001.0, "FKLAB: done"));
        let r = run(&booted);
        assert!(r.booted && !r.ok);
    }

    /// A `fastkexec-hangup` round trip whose round 1 printed `hangup` (its own lines).
    fn hangup_run(hangup: &[&str]) -> RunReport {
        let mut v: Vec<(f64, &str)> = vec![
            (
                900.0,
                "FKLAB: init round=1 mode=fastkexec-hangup uptime=0.9",
            ),
            (902.0, "FKLAB: loading mode=fastkexec-hangup"),
        ];
        v.extend(hangup.iter().map(|l| (1000.0, *l)));
        v.extend([
            (1700.0, "[    0.000000] Linux version 6.1.0-1-cloud-amd64"),
            (
                6000.0,
                "FKLAB: init round=2 mode=fastkexec-hangup uptime=1.0",
            ),
            (6001.0, "FKLAB: kernel=6.1.0-1-cloud-amd64"),
            (6002.0, "FKLAB: cmdline=console=ttyS0 fklab.round=2"),
            (6003.0, "FKLAB: memtotal_kb=1740000"),
            (6004.0, "FKLAB: initrd=ok"),
            (6005.0, "FKLAB: done"),
        ]);
        analyse(
            &kernel(),
            Mode::FastkexecHangup,
            "tcg",
            &lines(&v),
            PathBuf::from("x"),
        )
    }

    #[test]
    fn hangup_needs_both_commands_hung_up_mid_way_and_the_load_done() {
        let load = "FKLAB: hangup load blocked pid=71 syscall=1 fd=0x2 controlling=1";
        let done = "FKLAB: hangup load rc=0 loaded=1";
        let exec = "FKLAB: hangup exec blocked pid=80 syscall=1 fd=0x2 controlling=1";
        let r = hangup_run(&[load, done, "FKLAB: loaded", exec, "FKLAB: exec"]);
        assert_eq!(r.expect, Expect::BootAfterHangup);
        assert!(r.ok, "{r:?}");
        assert_eq!(r.round1.hung_up, ["load", "exec"]);
        assert_eq!(r.round1.hangup_load_rc, Some(0));
        assert!(r.round1.hangup_controlling);
        // The exec never blocked on its terminal: it was not hung up mid-way.
        assert!(!hangup_run(&[load, done, "FKLAB: exec"]).ok);
        // Not the controlling process: no SIGHUP came, the run proves less than it claims.
        let aside = "FKLAB: hangup exec blocked pid=80 syscall=1 fd=0x2 controlling=0";
        assert!(!hangup_run(&[load, done, aside]).ok);
        // A load that did not exit 0 (its own status, even though a kernel booted).
        let failed = "FKLAB: hangup load rc=129 loaded=1";
        assert!(!hangup_run(&[load, failed, exec]).ok);
    }

    #[test]
    fn analyse_reports_guest_errors() {
        let l = lines(&[(900.0, "FKLAB: error kexec -l failed rc=1")]);
        let r = analyse(&kernel(), Mode::KexecToolsL, "tcg", &l, PathBuf::from("x"));
        assert_eq!(r.error.as_deref(), Some("kexec -l failed rc=1"));
    }
}
