//! Developer tasks for fastkexec: `cargo xtask setup | lab run | lab shell | test | bench | fuzz`.

mod apt;
mod bench;
mod benchsystem;
mod chart;
mod fresh;
mod fuzz;
mod initramfs;
mod kernels;
mod lab;
mod labchain;
mod labinitcalls;
mod labpreflight;
mod labslow;
mod labsvg;
mod labsystem;
mod labtrace;
mod labunit;
mod qemu;
mod qemucpu;
mod setup;
mod system;
mod test;
mod util;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "fastkexec developer tasks: setup, the QEMU lab, tests"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install everything the build, the tests and the lab need (idempotent)
    Setup {
        /// Lab kernels to fetch
        #[arg(long, value_delimiter = ',', default_value = "6.1,6.12,7.x")]
        kernels: Vec<String>,
        /// Look for newer kernel packages even when some are cached
        #[arg(long)]
        refresh_kernels: bool,
    },
    /// The QEMU lab: boot stock kernels and kexec between them
    Lab {
        #[command(subcommand)]
        cmd: LabCmd,
    },
    /// Every lab mode side by side: interleaved runs, JSON, markdown table, SVG chart
    Bench {
        #[command(flatten)]
        k: KernelArgs,
        /// Runs per mode (round-robin over the modes, this many rounds)
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Modes to compare, e.g. kexec-tools-l,kexec-tools-l-i,fastkexec-uncompressed
        /// (default: every lab mode but test-only ones)
        #[arg(long, value_delimiter = ',', value_parser = bench::parse_mode)]
        modes: Vec<lab::Mode>,
        /// Write every run and the summary here as JSON (rewritten after each run)
        #[arg(long, required_unless_present = "from_json")]
        json: Option<PathBuf>,
        /// Write the stacked-bar chart here (SVG; required without --system)
        #[arg(long, required_unless_present = "system")]
        svg: Option<PathBuf>,
        /// Bench a real system instead of the busybox initramfs: the clean reboot of the Debian
        /// image under systemd (`lab run --system debian --scenario clean`) per mode
        /// (kexec-tools-l, fastkexec-uncompressed, fastkexec-staged), interleaved; JSON and
        /// markdown, no chart
        #[arg(long, value_enum, conflicts_with_all = ["trace", "from_json"])]
        system: Option<System>,
        /// Write the markdown table here
        #[arg(long)]
        markdown: Option<PathBuf>,
        /// Trace fastkexec's own modes and chart their phases
        #[arg(long)]
        trace: bool,
        /// Give up on one run after this many seconds (it counts as failed)
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Run nothing: redraw the chart and table from this bench JSON
        #[arg(long, conflicts_with = "json")]
        from_json: Option<PathBuf>,
    },
    /// Run every cargo-fuzz target (fuzz/) for a bounded time each; fails on a crash
    Fuzz {
        /// Seconds per target
        #[arg(long, default_value_t = fuzz::TEST_SECONDS_PER_TARGET)]
        seconds: u64,
    },
    /// Run every test: setup, fmt, clippy, unit tests, fuzzers, lab round trips
    Test {
        /// Skip the lab boots (unit tests only)
        #[arg(long)]
        no_lab: bool,
        /// Lab kernels to test
        #[arg(long, value_delimiter = ',', default_value = "6.1,6.12,7.x")]
        kernels: Vec<String>,
    },
}

#[derive(Args, Clone)]
struct KernelArgs {
    /// Lab kernel: 6.1 (bookworm), 6.12 (trixie) or 7.x (sid), cloud-amd64 flavour
    #[arg(long, default_value = "6.1")]
    kernel: String,
    /// Use this bzImage instead of a named lab kernel
    #[arg(long, conflicts_with = "kernel_deb")]
    kernel_image: Option<PathBuf>,
    /// Use the kernel in this Debian .deb instead of a named lab kernel
    #[arg(long)]
    kernel_deb: Option<PathBuf>,
    /// QEMU accelerator (auto = KVM only if a probe boot proves it works here)
    #[arg(long, value_enum, default_value = "auto")]
    accel: lab::Accel,
    /// Guest memory
    #[arg(long, default_value = "2G")]
    memory: String,
    /// Guest CPUs
    #[arg(long, default_value_t = 2)]
    smp: u32,
    /// Extra kernel command-line word (repeatable)
    #[arg(long)]
    append: Vec<String>,
    /// The minimal VM of the lab before issue 12: no NIC or disk, idle memory, the ~10 MiB
    /// busybox initrd. By default round 1 runs on a small server: a virtio NIC (up) and disk
    /// bound to their drivers, a quarter of the RAM in page cache when it loads, and a round-2 initrd
    /// of --initrd-mib (the kernel copies every page of it at exec)
    #[arg(long)]
    bare: bool,
    /// The round-2 initrd's size in MiB on the server VM (a Debian server's initrd.img is tens
    /// of MiB)
    #[arg(long, default_value_t = lab::SERVER_INITRD_MIB, conflicts_with = "bare")]
    initrd_mib: u32,
    /// Run the guest on QEMU's instruction-counting clock (TCG only): every
    /// guest instruction takes 2^SHIFT ns of guest time, so guest-side
    /// timings (the tracer's) count the work done, without TCG's cost of
    /// translating code the first time it runs. The host stopwatch then no
    /// longer times the guest's clock and is not compared with it. Use with
    /// --smp 1: with QEMU 7.2 a second vCPU never came up under icount
    #[arg(long, value_name = "SHIFT", value_parser = clap::value_parser!(u32).range(0..=10))]
    icount: Option<u32>,
    /// With --icount: guest time jumps over the vCPU's idle waits (QEMU `sleep=off`)
    /// instead of following the host's clock through them, so two boots of the same kernel
    /// take the same guest time even when an initcall sleeps (for side-by-side overheads)
    #[arg(long, requires = "icount")]
    icount_no_sleep: bool,
}

/// A real system for the lab to boot (`--system`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum System {
    /// Debian trixie under systemd, with prometheus-node-exporter and kexec-tools
    Debian,
}

#[derive(Subcommand)]
enum LabCmd {
    /// Boot, load and execute the next kernel per mode, report timings as JSON
    Run {
        #[command(flatten)]
        k: KernelArgs,
        /// How round 1 loads the next kernel. With --system: the loader of the scenario's
        /// reboot; `--scenario clean` takes several, comma-separated, and chains them in one VM
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            required_unless_present = "system"
        )]
        mode: Vec<lab::Mode>,
        /// Boot a real system instead of the busybox initramfs: `debian` is a minimal Debian
        /// trixie under systemd (built once into target/lab/system/ by mmdebstrap; each run
        /// boots a throw-away overlay of it), root on virtio-blk, node_exporter's port 9100
        /// forwarded to the host
        #[arg(long, value_enum)]
        system: Option<System>,
        /// With --system: what to exercise (see each scenario's text)
        #[arg(long, value_enum, requires = "system", default_value = "clean")]
        scenario: labsystem::Scenario,
        /// Write the run's JSON report here (schema in README.md)
        #[arg(long)]
        json: Option<PathBuf>,
        /// Give up after this many seconds (a hang is `booted: false`); default 300, with
        /// --system 600 per boot (TCG boots of systemd are slow, slower still on a loaded host)
        #[arg(long)]
        timeout: Option<u64>,
        /// Trace the reboot: round 1 runs `fastkexec trace --exec`, round 2
        /// `fastkexec report --json` (in the JSON under `report`, compared
        /// with the host stopwatch under `trace`); fastkexec modes only
        #[arg(long)]
        trace: bool,
        /// With --trace: damage the record on purpose; round 2 must refuse it
        #[arg(long, value_enum, requires = "trace")]
        trace_damage: Option<labtrace::Damage>,
        /// With --trace: only the phase-boundary probes (`fastkexec trace
        /// --lean`), to measure what the per-device and notifier probes cost
        #[arg(long, requires = "trace")]
        trace_lean: bool,
        /// With --trace: `fastkexec trace` without --exec follows a reboot
        /// that `fastkexec exec --force` starts (probes pinned in bpffs)
        #[arg(long, requires = "trace")]
        trace_follow: bool,
        /// With --trace: chain this many kexec reboots in one VM, each folded
        /// into fastkexec's histograms, kept on a virtio disk
        #[arg(long, default_value_t = 1, requires = "trace",
              value_parser = clap::value_parser!(u32).range(1..=50))]
        reboots: u32,
        /// With --trace: copy the guest's state directory (histograms) here,
        /// then check `fastkexec export` on it with promtool
        #[arg(long, requires = "trace")]
        state_out: Option<PathBuf>,
        /// Round 2 runs the boot-time unit's logic (contrib/systemd/fastkexec-report.service:
        /// its commands, in order, with its exit-status handling) and the host checks the
        /// textfile it leaves with promtool
        #[arg(long)]
        unit: bool,
        /// With --trace: the new kernel also runs `initcall_debug`; the report's 10 slowest
        /// initcalls must agree with the kernel's own figures (10 % or 50 µs each); the JSON
        /// holds the comparison under `initcalls`, the run directory the raw tracefs events
        #[arg(long, requires = "trace")]
        initcall_check: bool,
        /// With --trace: `fastkexec trace --no-initcalls` (the next kernel is not asked for
        /// its initcall events), to measure what they cost
        #[arg(long, requires = "trace")]
        trace_no_initcalls: bool,
    },
    /// An interactive guest for exploration (Ctrl-A X quits)
    Shell {
        #[command(flatten)]
        k: KernelArgs,
    },
}

/// Installs what the lab needs (a quick no-op once done), then finds the kernel.
fn kernel_of(k: &KernelArgs) -> Result<kernels::KernelInfo> {
    let named = if k.kernel_image.is_none() && k.kernel_deb.is_none() {
        vec![k.kernel.clone()]
    } else {
        vec![]
    };
    setup::setup(&setup::SetupOptions {
        kernels: named,
        refresh_kernels: false,
    })?;
    match (&k.kernel_image, &k.kernel_deb) {
        (Some(p), _) => kernels::from_image(p),
        (_, Some(p)) => kernels::from_deb(p),
        _ => kernels::ensure(&k.kernel, false),
    }
}

fn run_options(k: &KernelArgs, mode: lab::Mode, timeout: u64) -> lab::RunOptions {
    lab::RunOptions {
        append: k.append.clone(),
        icount: k.icount,
        icount_no_sleep: k.icount_no_sleep,
        machine: if k.bare {
            lab::Machine::bare()
        } else {
            lab::Machine {
                bare: false,
                initrd_mib: k.initrd_mib,
            }
        },
        ..lab::RunOptions::new(mode, Duration::from_secs(timeout), &k.memory, k.smp)
    }
}

/// The system image for this fastkexec build, with every lab kernel in it.
fn system_image() -> Result<system::Image> {
    let all = kernels::KERNELS
        .iter()
        .map(|s| kernels::ensure(s.name, false))
        .collect::<Result<Vec<_>>>()?;
    system::ensure_image(&all, &lab::build_static_fastkexec()?)
}

fn system_options(
    k: &KernelArgs,
    scenario: labsystem::Scenario,
    modes: Vec<lab::Mode>,
    timeout: Option<u64>,
) -> labsystem::SystemOptions {
    let boots = modes.len() as u64 + 1;
    labsystem::SystemOptions {
        scenario,
        modes,
        timeout: Duration::from_secs(timeout.unwrap_or(600 * boots)),
        memory: k.memory.clone(),
        smp: k.smp,
        append: k.append.clone(),
    }
}

/// `lab run --system debian --scenario S`.
fn system_run(
    k: &KernelArgs,
    scenario: labsystem::Scenario,
    mode: Vec<lab::Mode>,
    json: Option<&std::path::Path>,
    timeout: Option<u64>,
) -> Result<()> {
    if k.icount.is_some() {
        bail!("--system runs do not take --icount (systemd's boot would take hours)");
    }
    let modes = scenario.modes(&mode)?;
    let kernel = kernel_of(k)?;
    let image = system_image()?;
    let tools = initramfs::Tools::find(lab::static_fastkexec())?;
    let accel = lab::resolve_accel(k.accel, &kernel, &tools)?;
    let opts = system_options(k, scenario, modes, timeout);
    let report = labsystem::run(&kernel, &image, &accel, &opts)?;
    let text = serde_json::to_string_pretty(&report)?;
    if let Some(p) = json {
        util::write_atomic(p, text.as_bytes())
            .with_context(|| format!("writing {}", p.display()))?;
    }
    println!("{}", labsystem::summary_line(&report));
    if !report.ok {
        bail!(
            "the system run failed its checks: {}",
            report.problems.join("; ")
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Setup {
            kernels,
            refresh_kernels,
        } => setup::setup(&setup::SetupOptions {
            kernels,
            refresh_kernels,
        }),
        Cmd::Test { no_lab, kernels } => test::run_all(&kernels, !no_lab),
        Cmd::Fuzz { seconds } => fuzz::run_all(Duration::from_secs(seconds)).map(drop),
        Cmd::Bench {
            k,
            runs,
            modes,
            json,
            svg,
            markdown,
            trace,
            timeout,
            from_json,
            system,
        } => {
            if system.is_some() {
                let json = json.context("--json is required")?;
                let modes = if modes.is_empty() {
                    benchsystem::MODES.to_vec()
                } else {
                    modes
                };
                let kernel = kernel_of(&k)?;
                let image = system_image()?;
                let tools = initramfs::Tools::find(lab::static_fastkexec())?;
                let accel = lab::resolve_accel(k.accel, &kernel, &tools)?;
                return benchsystem::run(
                    &kernel,
                    &image,
                    &accel,
                    &modes,
                    runs,
                    &|m| system_options(&k, labsystem::Scenario::Clean, m, Some(timeout.max(1200))),
                    &json,
                    markdown.as_deref(),
                );
            }
            let svg = svg.context("--svg is required")?;
            if let Some(from) = from_json {
                return bench::render_from(&from, &svg, markdown.as_deref());
            }
            let json = json.context("--json is required")?;
            let kernel = kernel_of(&k)?;
            let tools = initramfs::Tools::find(lab::build_static_fastkexec()?)?;
            let accel = lab::resolve_accel(k.accel, &kernel, &tools)?;
            // Before the first of many runs, not in each.
            run_options(&k, lab::Mode::KexecToolsL, timeout).check_icount(&accel)?;
            let plan = bench::Plan {
                kernel: &kernel,
                tools: &tools,
                accel: &accel,
                modes,
                runs,
                trace,
                json,
                svg,
                markdown,
            };
            bench::run(&plan, &|mode, trace| lab::RunOptions {
                trace,
                ..run_options(&k, mode, timeout)
            })
        }
        Cmd::Lab { cmd } => {
            match cmd {
                LabCmd::Run {
                    k,
                    mode,
                    system: Some(System::Debian),
                    scenario,
                    json,
                    timeout,
                    ..
                } => system_run(&k, scenario, mode, json.as_deref(), timeout),
                LabCmd::Run {
                    k,
                    mode,
                    json,
                    timeout,
                    trace,
                    trace_damage,
                    trace_lean,
                    trace_follow,
                    reboots,
                    state_out,
                    unit,
                    initcall_check,
                    trace_no_initcalls,
                    ..
                } => {
                    let mode = match mode.as_slice() {
                        [one] => *one,
                        _ => bail!("--mode takes one mode without --system"),
                    };
                    let timeout = timeout.unwrap_or(300);
                    let kernel = kernel_of(&k)?;
                    let tools = initramfs::Tools::find(lab::build_static_fastkexec()?)?;
                    let opts = lab::RunOptions {
                        trace,
                        trace_damage,
                        trace_lean,
                        trace_follow,
                        reboots,
                        state_out,
                        unit,
                        initcall_check,
                        no_initcalls: trace_no_initcalls,
                        ..run_options(&k, mode, timeout)
                    };
                    if opts.chained() && trace_follow {
                        bail!("--reboots/--state-out chain `fastkexec trace --exec`, not --trace-follow");
                    }
                    let initrd = if opts.chained() {
                        lab::build_chain_image(&kernel, mode, &tools)?
                    } else {
                        lab::build_images(&kernel, mode, &tools, opts.machine)?
                    };
                    let accel = lab::resolve_accel(k.accel, &kernel, &tools)?;
                    let report = lab::run_once(&kernel, &initrd, &accel, &opts)?;
                    for l in &report.report_table {
                        println!("{l}");
                    }
                    if let Some(c) = &report.initcalls {
                        labinitcalls::print(c);
                    }
                    if let Some(c) = &report.chain {
                        println!(
                            "state directory {} · promtool check metrics: {} {}",
                            c.state_dir.display(),
                            if c.promtool_ok { "ok" } else { "FAILED" },
                            c.promtool_output
                        );
                        for l in &c.count_lines {
                            println!("{l}");
                        }
                        if !c.ok() {
                            println!(
                                "CHAIN CHECK FAILED: {}",
                                report.error.as_deref().unwrap_or("see the JSON's chain")
                            );
                        }
                    }
                    let text = serde_json::to_string_pretty(&report)?;
                    if let Some(p) = &json {
                        util::write_atomic(p, text.as_bytes())
                            .with_context(|| format!("writing {}", p.display()))?;
                    }
                    println!("{}", lab::summary_line(&report));
                    if report.expect == lab::Expect::RefuseThenReset && !report.ok {
                        bail!(
                            "the replaced staged image was not refused and reset: {}",
                            report.error.as_deref().unwrap_or("unknown")
                        );
                    }
                    if report.expect == lab::Expect::VerifyHalt && !report.ok {
                        bail!(
                            "the purgatory did not stop on the wrong checksum: {}",
                            report.error.as_deref().unwrap_or("unknown")
                        );
                    }
                    let no_boot = [lab::Expect::RefuseThenReset, lab::Expect::VerifyHalt];
                    if !no_boot.contains(&report.expect) && !report.booted {
                        bail!(
                            "the new kernel did not boot: {}",
                            report.error.as_deref().unwrap_or("unknown")
                        );
                    }
                    if report.trace.as_ref().is_some_and(|t| !t.ok()) {
                        bail!(
                            "the traced run failed its check: {}",
                            report.error.as_deref().unwrap_or("unknown")
                        );
                    }
                    if report.chain.as_ref().is_some_and(|c| !c.ok()) {
                        bail!(
                            "the chained run failed its check: {}",
                            report.error.as_deref().unwrap_or("unknown")
                        );
                    }
                    Ok(())
                }
                LabCmd::Shell { k } => {
                    let kernel = kernel_of(&k)?;
                    let tools = initramfs::Tools::find(lab::build_static_fastkexec()?)?;
                    let opts = run_options(&k, lab::Mode::KexecToolsL, 0);
                    let initrd =
                        lab::build_images(&kernel, lab::Mode::KexecToolsL, &tools, opts.machine)?;
                    let accel = lab::resolve_accel(k.accel, &kernel, &tools)?;
                    lab::shell(&kernel, &initrd, &accel, &opts)
                }
            }
        }
    }
}
