//! The command-line interface (clap derive). Kept apart from `main.rs` so the man pages and
//! shell completions are generated from the very same definitions.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

const ABOUT: &str = "Load the next Linux kernel fast with kexec";

const LONG_ABOUT: &str = "\
Load the next Linux kernel fast with kexec, and switch to it.

Typical use, as root: `fastkexec status` shows what this kernel allows; `fastkexec prepare \
--kernel /boot/vmlinuz-NEW` extracts the vmlinux once, ahead of time; `fastkexec load --kernel \
/boot/vmlinuz-NEW --initrd /boot/initrd.img-NEW --reuse-cmdline` loads it; `fastkexec exec` \
syncs and reboots into it through a clean `systemctl kexec`.";

const MAIN_AFTER_HELP: &str = "\
Exit status (the same table for every command; README \"Exit status\"):
  0   the command did its work (`status`: an image is loaded, or staged by fastkexec)
  1   it failed for another reason (a syscall, the machine's state); standard error says why
  2   a usage error (the command line could not be parsed)
  3   nothing to act on: `report` found no usable trace record (a cold boot, a kexec-tools or
      file-mode reboot), `exec` found no loaded image, `status`: no image is loaded
  4   bad input: an image, initrd, command line, state or cache file was refused (the message
      names the file and the field)
  5   not possible here: this kernel or machine cannot do it (no kexec, the mode is blocked by
      lockdown or kexec_load_disabled, no usable crashkernel reservation; `status`: no load
      mode works here)
  74  (EX_IOERR) the command did its work but its product on standard output could not be
      written: --json, `export` without --output or --textfile-dir, `completions`, `man`
      without --dir. Any other non-zero status wins over 74.

JSON (--json): one document on standard output and nothing else (progress and errors go to
standard error). Its first field is schema_version (1 now; bumped only when a field changes
meaning or goes away). Durations are integer nanoseconds (fields ending in _ns, and `ns`),
sizes bytes, shares fractions of 1; each command's fields are listed under its --json.

Output: text for a human on standard output is best effort. When standard output or standard
error fails (a terminal that hung up, a reader that went away), every command still does all
its work and its exit status does not change; a warning goes to standard error if that still
works. A closed standard output is read as /dev/null.

Hangups: load (without --dry-run), unload, exec and trace ignore SIGHUP (as under nohup(1)),
and so does the `systemctl kexec` that exec starts: a terminal that hangs up while they run (an
SSH session or a serial getty stopped by the very shutdown exec starts) cannot stop them
half-way.";

const LOAD_AFTER_HELP: &str = "\
Modes:

file: kexec_file_load(2) of the bzImage. The kernel places the segments, its purgatory
SHA-256-hashes them at reboot, and the bzImage decompresses itself at boot. Works under
lockdown / Secure Boot when the bzImage is signed with a key the kernel trusts. Needs
CONFIG_KEXEC_FILE.

uncompressed: kexec_load(2) of the kernel's vmlinux (extracted from the bzImage once and
cached, see `fastkexec prepare`) with boot_params and a small purgatory built by fastkexec: no
decompression and no hashing at reboot (--verify adds a checksum). Needs kexec_load, which is
refused under lockdown (Secure Boot) and when kernel.kexec_load_disabled=1. The next kernel
runs without kernel-text KASLR. Not for SEV/TDX confidential guests. Also accepts a vmlinux
ELF as --kernel.

staged: uncompressed, but copied into the crashkernel reservation (crashkernel= on this
kernel's command line) at load time with kexec_load(KEXEC_ON_CRASH); the normal image is a
one-page trampoline that enters it, so the relocation at exec copies one page instead of the
whole kernel. The normal path boots with all RAM; a panic before exec boots the staged kernel
with only the reservation as RAM (kdump-safe, `fastkexec.staged=panic` on its command line).
While staged no kdump kernel is loaded: a loaded one is displaced until the next boot. `exec`
checks the staged image is still there and refuses otherwise; should a crash kernel be loaded
over it anyway, the trampoline resets the machine through the firmware instead of booting it.
The reservation must hold the kernel's footprint and the initrd; `unload` removes both images.

auto (the default): staged when kexec_load is allowed and the crashkernel reservation is idle
(no crash kernel loaded) and large enough; else uncompressed when this kernel allows
kexec_load; else file. It never displaces a loaded kdump kernel. The report says which and
why. `fastkexec status` shows what is allowed here.

A failed load leaves the previously loaded kernel in place: everything is checked before the
load syscall, and the kernel replaces the old image only when that call succeeds (staged mode
makes two calls and undoes the first if the second fails).
--dry-run prints the plan without root and without writing anything.

Examples:

fastkexec load --kernel /boot/vmlinuz-6.12.0 --initrd /boot/initrd.img-6.12.0 --reuse-cmdline

fastkexec load --kernel /boot/vmlinuz-6.12.0 --append 'root=/dev/vda1 console=ttyS0' --mode file

fastkexec load --kernel /boot/vmlinuz-6.12.0 --initrd /boot/initrd.img-6.12.0 --reuse-cmdline --mode staged

fastkexec load --kernel /boot/vmlinuz-6.12.0 --reuse-cmdline --append initcall_debug --dry-run";

const EXEC_AFTER_HELP: &str = "\
Without --force, when PID 1 is systemd, this runs `systemctl kexec`: systemd stops the
services, unmounts the file systems and then jumps into the kernel fastkexec loaded. Without
systemd (busybox init, an initramfs shell) --force is the only path, as with `kexec -e`.
Both paths call sync(2) first. After `load --mode staged`, exec first checks that the
crashkernel reservation still holds the staged kernel (through /proc/kcore) and refuses if a
crash kernel was loaded over it since.

exec ignores SIGHUP, and its output is best effort: a terminal that hangs up during the
shutdown (sshd or a serial getty being stopped) changes nothing; the reboot goes ahead.";

/// `fastkexec`: top-level options and the command.
#[derive(Debug, Parser)]
#[command(
    name = "fastkexec",
    version,
    propagate_version = true,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_long_help = MAIN_AFTER_HELP
)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Read /proc and /sys under this directory instead of / (tests, captured machine trees).
    #[arg(
        long,
        global = true,
        hide = true,
        default_value = "/",
        value_name = "DIR"
    )]
    pub root: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load a kernel to boot at the next `fastkexec exec`, replacing any loaded one.
    #[command(after_long_help = LOAD_AFTER_HELP)]
    Load(LoadArgs),
    /// Boot the loaded kernel now (sync, then a clean `systemctl kexec` or, with --force, at once).
    #[command(after_long_help = EXEC_AFTER_HELP)]
    Exec(ExecArgs),
    /// Unload the loaded kernel, and a kernel staged in the crashkernel reservation.
    Unload,
    /// Show what is loaded, the crashkernel reservation, lockdown, and which modes work here.
    Status(StatusArgs),
    /// Extract and cache the vmlinux of a bzImage now, so `load --mode uncompressed` is fast.
    Prepare(PrepareArgs),
    /// Attach probes to the reboot path, load a kernel (as `load`), and with --exec reboot into it.
    #[command(after_long_help = TRACE_AFTER_HELP)]
    Trace(TraceArgs),
    /// In the new kernel: where the milliseconds of the last kexec reboot went, phase by phase.
    #[command(after_long_help = REPORT_AFTER_HELP)]
    Report(ReportArgs),
    /// Export the reboot histograms for monitoring: Prometheus, OpenMetrics, JSON, HdrHistogram log.
    #[command(after_long_help = EXPORT_AFTER_HELP)]
    Export(ExportArgs),
    /// Serve the reboot histograms on /metrics over HTTP for Prometheus to scrape.
    Serve(ServeArgs),
    /// Print a shell completion script (e.g. `fastkexec completions bash > /etc/bash_completion.d/fastkexec`).
    Completions {
        /// The shell to generate completions for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the fastkexec(1) man page, or write one page per command with --dir.
    Man {
        /// Write fastkexec.1 and fastkexec-<command>.1 into this directory instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// How to load: see the MODES section of `fastkexec load --help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// staged when kexec_load is allowed and the crashkernel reservation is idle and large
    /// enough, else uncompressed when kexec_load is allowed, else file
    Auto,
    /// kexec_file_load of the bzImage (works under lockdown with a signed kernel)
    File,
    /// kexec_load of the cached vmlinux (no decompression, no hashing at reboot)
    Uncompressed,
    /// uncompressed, copied into the crashkernel reservation at load (exec relocates one page)
    Staged,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    #[command(flatten)]
    kernel: KernelArg,

    /// The initramfs to hand to the new kernel.
    #[arg(long, visible_alias = "ramdisk", value_name = "PATH")]
    pub initrd: Option<PathBuf>,

    /// The new kernel's command line; with --reuse-cmdline, added after the reused one.
    /// Repeatable, and --command-line is the same option: every occurrence is kept, joined
    /// with spaces in the order given (kexec-tools keeps only the last one; nothing given here
    /// is silently dropped).
    #[arg(long, visible_alias = "command-line", value_name = "STRING", action = ArgAction::Append)]
    append: Vec<String>,

    /// Start from the running kernel's /proc/cmdline (without BOOT_IMAGE= and initrd=).
    #[arg(long)]
    pub reuse_cmdline: bool,

    /// How to load the kernel.
    #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
    pub mode: ModeArg,

    /// Print what would be loaded and where; load nothing, write nothing (`load`: no root
    /// needed; `trace`: attach every probe, say what times each phase, detach).
    #[arg(long)]
    pub dry_run: bool,

    /// Uncompressed mode: have the purgatory checksum every segment before jumping.
    #[arg(long)]
    pub verify: bool,

    /// Test only (the lab's verify-mismatch case): record a wrong checksum for the first
    /// segment, so that exec must stop in the purgatory with its mismatch message.
    #[arg(long, hide = true, requires = "verify")]
    pub test_wrong_verify_sum: bool,

    /// Cache of extracted vmlinux files (uncompressed mode); must be writable by its owner (root,
    /// or you) only, else refused.
    #[arg(long, value_name = "DIR", default_value = fastkexec::image::prepare::DEFAULT_CACHE_DIR)]
    pub cache_dir: PathBuf,

    /// Print the report as JSON: schema_version, mode, mode_reason, kernel, kernel_format,
    /// vmlinux, compression, cache_hit, initrd, initrd_size, cmdline, cmdline_dropped, syscall,
    /// plan, staged, dry_run, loaded, notes, timings [{phase, ns}] (`trace --json` adds
    /// attachments, phases [{phase, label, start, end, timed}], notifiers, record_pages).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Skip the clean shutdown: sync, then reboot(LINUX_REBOOT_CMD_KEXEC) immediately.
    #[arg(long, short)]
    pub force: bool,

    /// Print TEXT on stdout once every check has passed, right before the reboot request (a
    /// stopwatch mark for the lab).
    #[arg(long, hide = true, value_name = "TEXT")]
    pub mark: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON instead of text: schema_version, kernel_release, kexec_core, loaded,
    /// crash_loaded, crash_size (bytes), crash_kernel, lockdown, kexec_load_disabled, the load
    /// limits, config, confidential_guest, efi, privilege, modes {file, uncompressed, staged:
    /// {allowed, blockers, caveats}}, staged, kernel_native, tracing {bpf, btf, kprobes,
    /// tracefs, bpffs: {available, detail}, probes [{function, how, why}]}, notes.
    #[arg(long)]
    pub json: bool,
}

/// `fastkexec trace --damage` (lab tests of the record checks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DamageArg {
    /// flip a byte of the sealed header page
    HeaderByte,
    /// seal the record with another boot id
    OtherBoot,
}

/// The kernel image, as kexec-tools takes it (`fastkexec load /boot/vmlinuz-X`) or with
/// --kernel: `load`, `trace` and `prepare` share it.
#[derive(Debug, Args)]
pub struct KernelArg {
    /// The kernel: a bzImage (e.g. /boot/vmlinuz-VERSION), or a vmlinux ELF in uncompressed
    /// mode (`prepare`: a bzImage); positional as in kexec-tools, or with --kernel.
    #[arg(value_name = "KERNEL", required_unless_present = "kernel_opt")]
    kernel_pos: Option<PathBuf>,

    /// The kernel, as an option (the same as the positional KERNEL).
    #[arg(
        long = "kernel",
        id = "kernel_opt",
        value_name = "PATH",
        conflicts_with = "kernel_pos"
    )]
    kernel_opt: Option<PathBuf>,
}

impl KernelArg {
    /// The kernel, given positionally or with --kernel (clap requires exactly one).
    pub fn path(&self) -> PathBuf {
        self.kernel_pos
            .clone()
            .or_else(|| self.kernel_opt.clone())
            .unwrap_or_default()
    }
}

impl LoadArgs {
    /// The kernel, given positionally or with --kernel.
    pub fn kernel(&self) -> PathBuf {
        self.kernel.path()
    }

    /// Every --append/--command-line, joined in order; `None` when none was given.
    pub fn append(&self) -> Option<String> {
        (!self.append.is_empty()).then(|| self.append.join(" "))
    }
}

impl PrepareArgs {
    /// The bzImage, given positionally or with --kernel.
    pub fn kernel(&self) -> PathBuf {
        self.kernel.path()
    }
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub load: LoadArgs,

    /// Reboot into the loaded kernel once everything is in place.
    #[arg(long)]
    pub exec: bool,

    /// With --exec: sync and reboot(LINUX_REBOOT_CMD_KEXEC) at once, without `systemctl kexec`.
    #[arg(long, short = 'f', requires = "exec")]
    pub force: bool,

    /// Attach only the phase-boundary probes: no per-device or per-notifier stamps (least overhead).
    #[arg(long)]
    pub lean: bool,

    /// Do not ask the next kernel for its initcall trace events (by default its command line
    /// gets trace_event=initcall:initcall_start,initcall:initcall_finish trace_buf_size=512K
    /// trace_clock=x86-tsc, and `report` shows the slowest initcalls under kernel boot).
    #[arg(long)]
    pub no_initcalls: bool,

    /// Print TEXT on stdout right before requesting the reboot (a stopwatch mark for the lab).
    #[arg(long, hide = true, value_name = "TEXT")]
    pub mark: Option<String>,

    /// Damage the record on purpose (lab tests of the checks in `report`).
    #[arg(long, hide = true, value_enum)]
    pub damage: Option<DamageArg>,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Print JSON instead of the table (fields: see below).
    #[arg(long)]
    pub json: bool,

    /// How many of the slowest devices, notifiers and initcalls to list.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,

    /// End the timeline at the first kernel log line containing TEXT instead of now.
    #[arg(long, value_name = "TEXT")]
    pub until_kmsg: Option<String>,

    /// Directory holding the reboot histograms this boot is folded into.
    #[arg(long, value_name = "DIR", default_value = fastkexec::metrics::histogram::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,

    /// Do not fold this boot into the histograms.
    #[arg(long)]
    pub no_fold: bool,

    /// Also fold the N slowest units stopping and the N slowest starting (of those listed,
    /// see --top) into per-unit histograms. Opt-in: each unit is a label value of the exports;
    /// at most 64 units per level are ever kept, later ones are counted as refused.
    #[arg(long, value_name = "N", default_value_t = 0,
          value_parser = clap::value_parser!(u16).range(0..=fastkexec::metrics::histogram::MAX_UNIT_HISTOGRAMS as i64))]
    pub unit_histograms: u16,

    /// Also draw the timeline as an SVG picture into FILE (phases as bars, the old kernel
    /// zoomed with its slowest devices and notifiers, the tracer's own time marked).
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PrepareArgs {
    #[command(flatten)]
    kernel: KernelArg,

    /// Cache directory; must be writable by its owner (root, or you) only, else refused.
    #[arg(long, value_name = "DIR", default_value = fastkexec::image::prepare::DEFAULT_CACHE_DIR)]
    pub cache_dir: PathBuf,

    /// Print JSON instead of text: schema_version, kernel, vmlinux, setup_header, compression,
    /// key, cache_hit, vmlinux_bytes, elapsed_ns.
    #[arg(long)]
    pub json: bool,
}

const TRACE_AFTER_HELP: &str = "\
Probes (fentry/fexit where the kernel's BTF and ftrace allow, else kprobes/kretprobes, decided
at run time; -v shows the decisions and every stamp through aya-log): reboot(2) (syscall
tracepoint), kernel_kexec, each reboot notifier callback, device_shutdown and every device's
shutdown (name, bus, driver), migrate_to_reboot_cpu, syscore_shutdown (newer kernels only),
machine_shutdown, machine_kexec. A probe that cannot attach is reported, and its phase shows
as unseen in the report.

The stamps go into a BPF map whose pages are chained into the next kernel's boot_params
(setup_data type 0x464b5854), together with the TSC calibration, this boot's id and the
TSC stamps of the purgatory (and, in staged mode, of the trampoline); `fastkexec report` in
the next kernel reads them. The uncompressed and staged modes carry them (--mode auto picks
between those two as `load` does); with --mode file the next kernel's report shows only its
own phases. The next kernel's command line gets
fastkexec.boot_id=<this boot>, which ties the record to this reboot, and (unless
--no-initcalls) trace_event=initcall:initcall_start,initcall:initcall_finish
trace_buf_size=512K trace_clock=x86-tsc: the next kernel records every initcall in its ftrace
buffer, stamped with the TSC, and `report` reads them from tracefs (an existing trace_event=
is extended, a trace_buf_size= or trace_clock= already given is kept). --dry-run prints the
words in its command line and notes.

With --exec the reboot follows at once (--force: reboot(2) directly; else `systemctl kexec`
when PID 1 is systemd, with the probes pinned in /sys/fs/bpf/fastkexec so they survive
systemd stopping every process). Without --exec the tracer pins the probes and waits for a
kexec reboot started by anything else (e.g. `systemctl kexec`), printing the events it sees
while it still runs: usually few or none, because the whole kexec path runs inside reboot(2)
in milliseconds and the console goes down with it; the next kernel's `fastkexec report` has
them all. Ctrl-C detaches and unloads the kernel (its boot_params point at the trace pages).

--dry-run is the preflight (bpftrace's habit): every probe is loaded and attached for real on
this kernel, the load is planned, and `trace` prints how each probe attached and what will
stamp each phase's start and end (a probe, our purgatory, the new kernel's clocks), then
detaches everything. Nothing is loaded and nothing is written; it needs root, as the probes do.

trace ignores SIGHUP in both modes and its output is best effort: losing the terminal neither
stops a reboot under way nor detaches the probes and unloads the kernel.

Examples:

fastkexec trace --dry-run --kernel /boot/vmlinuz-6.12.0 --reuse-cmdline
fastkexec trace --exec --force --kernel /boot/vmlinuz-6.12.0 --initrd /boot/initrd.img-6.12.0 --reuse-cmdline";

const REPORT_AFTER_HELP: &str = "\
Phases tile the timeline from the reboot request (or reboot(2) when the tracer followed a
reboot it did not start) to the user-space mark, with no gap or overlap: time no probe explains
is its own `unattributed` phase. The user-space mark is the moment report runs, or with
--until-kmsg the first kernel log line containing TEXT (an init can write one to /dev/kmsg as
it starts). The new kernel's phases are placed on the TSC through a line report writes to
/dev/kmsg (its printk stamp against rdtsc).

Phases, in order, by the machine names --json and every export use (the text table spells
them with spaces): userspace_shutdown, reboot_syscall, reboot_notifiers, device_shutdown,
cpu_migration, syscore_shutdown, machine_shutdown, relocation (from the moment the
machine_kexec probe returned), trampoline (staged loads: the check of the staged image and the
jump), purgatory, kernel_early_boot (to the new kernel's clock zero), kernel_boot (to
`Run /init`), user_space; and unattributed. A step this kernel did not take is listed under
`not on the timeline` with why.

The record is validated whole (magic, version, length, checksums, and that it was written by
the boot that started this kernel) and for plausibility (a TSC rate within 100 MHz..10 GHz, a
calibration of at most a year, every stamp within a year of it); a missing, torn, stale or
implausible record is reported as such, only this kernel's own phases are shown, and the exit
status is 2. With a record, the boot is folded
into the histograms in --state-dir (see `fastkexec export`).

Initcalls: when the kernel's command line asked for the initcall trace events (`trace` does,
unless --no-initcalls), report reads them from tracefs (mounting it read-only for the read when
it is not mounted), pairs each start with its finish and places them on the timeline: the
slowest (--top) under kernel boot, their sum, and the part of kernel boot outside every
initcall (before the first, between them, after the last). A kernel not asked, without
readable tracefs or without the events is reported as such.

JSON: phases (name, start_ns, duration_ns, share, note), total_ns (= the sum of the phases),
spans, devices, notifiers, unseen, record (with mode: uncompressed or staged, as the record
says), clock, initcalls (status: ok, not_requested, unavailable, no_events or unplaced; detail,
clock, count, sum_ns, kernel_boot_ns, unexplained_ns, before_first_ns, between_ns,
after_last_ns, later, unmatched, overwritten, top: func, ret, start_ns, duration_ns).";

const EXPORT_AFTER_HELP: &str = "\
The histograms are the ones `fastkexec report` folds each boot into (one HdrHistogram per
phase, 1 ns to 1 day, 3 significant digits) in --state-dir. A phase has one name in every
format: its machine name (kernel_early_boot), the `phase` label, the JSON name and the
interval-log tag alike. The Prometheus buckets run 1-2-5 per decade from 1 µs to 1000 s
(le=\"0.000001\" ... le=\"1000.0\", then +Inf). fastkexec_last_reboot_info{mode} is the mode
the trace record carries (uncompressed or staged). export only reads in --state-dir: a
corrupt state.json is left in place, warned about and counted in fastkexec_state_corrupt_files
(the next report that folds a boot moves it aside).

Formats: prometheus (text 0.0.4: histogram fastkexec_phase_duration_seconds{phase}, histogram
fastkexec_reboot_duration_seconds, counter fastkexec_reboots_total, gauges
fastkexec_last_reboot_phase_seconds{phase}, fastkexec_last_reboot_total_seconds,
fastkexec_last_reboot_timestamp_seconds, fastkexec_last_reboot_info{mode},
fastkexec_state_corrupt_files); openmetrics (the same in OpenMetrics 1.0, ending in # EOF);
json; hdr-log (HdrHistogram interval log 1.3, written by the hdrhistogram crate's writer: one
line per phase tagged with its name and one tagged total, for merging across machines with any
HdrHistogram log reader).

--textfile-dir writes fastkexec.prom for node_exporter's textfile collector (a temporary file
renamed into place); --output writes any format to a file the same way; without either the
export goes to standard output.

Writing into a directory other users can write: the temporary file gets a random name and is
created exclusively (O_EXCL, O_NOFOLLOW), and the rename replaces whatever sits at the target
name (a planted symbolic link included) without following it, so nobody who can write the
directory can make fastkexec overwrite another file. A directory every user can write without
the sticky bit is refused (anyone could replace or delete the export there): chmod o-w or +t
it. A directory owned by another user (e.g. the monitoring user) or writable by a group is
used: they can replace the file, as they could anyway. A symbolic link on the way to the
directory is followed only when it and the directory holding it belong to root (or the user
running fastkexec) and nobody else can change that directory.

Modes, whatever the umask: fastkexec.prom 0644 (node_exporter reads it as its own user);
--output 0640, like the state (state.json) it comes from: chmod it if more should read it.

Examples:

fastkexec export --textfile-dir /var/lib/prometheus/node-exporter

fastkexec export --format hdr-log --output /tmp/$(hostname).hlog";

/// `fastkexec export --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// Prometheus text exposition format 0.0.4
    Prometheus,
    /// OpenMetrics 1.0 text
    Openmetrics,
    /// JSON: counts, sums, percentiles, buckets and the encoded histograms
    Json,
    /// HdrHistogram interval log (V2 compressed histograms, one line per phase)
    HdrLog,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Directory holding the histograms.
    #[arg(long, value_name = "DIR", default_value = fastkexec::metrics::histogram::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,

    /// Output format.
    #[arg(long, value_enum, default_value_t = FormatArg::Prometheus)]
    pub format: FormatArg,

    /// Write to this file (atomically: a temporary file renamed over it; mode 0640) instead of stdout.
    #[arg(long, short, value_name = "FILE", conflicts_with = "textfile_dir")]
    pub output: Option<PathBuf>,

    /// Write fastkexec.prom into node_exporter's textfile directory (Prometheus format only).
    #[arg(long, value_name = "DIR")]
    pub textfile_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Directory holding the histograms (read afresh on every scrape).
    #[arg(long, value_name = "DIR", default_value = fastkexec::metrics::histogram::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,

    /// Address and port to listen on (port 0 picks a free one and prints it).
    #[arg(long, value_name = "ADDR:PORT", default_value = fastkexec::metrics::serve::DEFAULT_LISTEN)]
    pub listen: std::net::SocketAddr,

    /// Allow a non-loopback --listen address (anyone reaching it sees the reboot history).
    #[arg(long)]
    pub allow_remote: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(args).unwrap()
    }

    #[test]
    fn kexec_tools_spellings_are_accepted() {
        let cli = parse(&[
            "fastkexec",
            "load",
            "--kernel",
            "/k",
            "--ramdisk",
            "/i",
            "--command-line",
            "quiet",
            "--reuse-cmdline",
        ]);
        let Command::Load(a) = cli.command else {
            panic!("not load")
        };
        assert_eq!(a.initrd.as_deref(), Some(std::path::Path::new("/i")));
        assert_eq!(a.append().as_deref(), Some("quiet"));
        assert_eq!(a.kernel(), PathBuf::from("/k"));
        assert!(a.reuse_cmdline);
        assert_eq!(a.mode, ModeArg::Auto);
        assert_eq!(
            a.cache_dir,
            PathBuf::from(fastkexec::image::prepare::DEFAULT_CACHE_DIR)
        );
    }

    #[test]
    fn kernel_is_positional_as_in_kexec_tools_and_append_joins_in_order() {
        let cli = parse(&[
            "fastkexec",
            "load",
            "/boot/vmlinuz-6.12",
            "--append",
            "root=/dev/vda1",
            "--command-line",
            "quiet",
            "--append=console=ttyS0",
        ]);
        let Command::Load(a) = cli.command else {
            panic!("not load")
        };
        assert_eq!(a.kernel(), PathBuf::from("/boot/vmlinuz-6.12"));
        assert_eq!(
            a.append().as_deref(),
            Some("root=/dev/vda1 quiet console=ttyS0")
        );
        let Command::Prepare(p) = parse(&["fastkexec", "prepare", "/boot/vmlinuz-6.12"]).command
        else {
            panic!("not prepare")
        };
        assert_eq!(p.kernel(), PathBuf::from("/boot/vmlinuz-6.12"));
        let Command::Trace(t) = parse(&["fastkexec", "trace", "--dry-run", "/k"]).command else {
            panic!("not trace")
        };
        assert_eq!(t.load.kernel(), PathBuf::from("/k"));
        // One kernel, not two.
        assert!(Cli::try_parse_from(["fastkexec", "load", "/a", "--kernel", "/b"]).is_err());
        assert!(Cli::try_parse_from(["fastkexec", "prepare"]).is_err());
    }

    #[test]
    fn modes_and_flags_parse() {
        let cli = parse(&[
            "fastkexec",
            "-vv",
            "load",
            "--kernel=/k",
            "--mode",
            "uncompressed",
            "--dry-run",
            "--verify",
        ]);
        assert_eq!(cli.verbose, 2);
        let Command::Load(a) = cli.command else {
            panic!("not load")
        };
        assert_eq!(a.mode, ModeArg::Uncompressed);
        assert!(a.dry_run && a.verify && !a.test_wrong_verify_sum);
        // The lab's mismatch flag: only with --verify, and not in --help.
        let spoil = [
            "fastkexec",
            "load",
            "--kernel=/k",
            "--test-wrong-verify-sum",
        ];
        assert!(Cli::try_parse_from(spoil).is_err());
        let Command::Load(a) = parse(&[spoil.as_slice(), &["--verify"]].concat()).command else {
            panic!("not load")
        };
        assert!(a.verify && a.test_wrong_verify_sum);
        let help = Cli::try_parse_from(["fastkexec", "load", "--help"])
            .unwrap_err()
            .to_string();
        assert!(help.contains("--verify") && !help.contains("wrong-verify"));
        assert!(
            Cli::try_parse_from(["fastkexec", "load", "--kernel", "/k", "--mode", "x"]).is_err()
        );
        assert!(
            Cli::try_parse_from(["fastkexec", "load"]).is_err(),
            "--kernel is required"
        );
        let cli = parse(&["fastkexec", "exec", "--force"]);
        assert!(matches!(
            cli.command,
            Command::Exec(ExecArgs {
                force: true,
                mark: None
            })
        ));
        let cli = parse(&["fastkexec", "status", "--json"]);
        assert!(matches!(
            cli.command,
            Command::Status(StatusArgs { json: true })
        ));
        let cli = parse(&["fastkexec", "completions", "zsh"]);
        assert!(matches!(
            cli.command,
            Command::Completions {
                shell: clap_complete::Shell::Zsh
            }
        ));
    }
}
