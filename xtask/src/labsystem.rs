//! `lab run --system debian`: the Debian system image (`system.rs`) under systemd in QEMU.
//!
//! The guest's driver (`xtask/lab/system/fklab.sh`, run by `fklab.service` after the default
//! target) prints what each boot sees and starts the next reboot the scenario asks for; the
//! host stamps every serial line as it arrives (as `lab.rs` does), scrapes node_exporter
//! through a forwarded port when the guest asks, and checks each scenario's facts.

use crate::kernels::KernelInfo;
use crate::lab::{KernelRef, Mode};
use crate::labtrace::{self, TraceCheck};
use crate::system::{self, Image};
use crate::util::{new_run_dir, step, write_atomic};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;
use std::io::{BufWriter, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What one system run exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// `fastkexec load` + `fastkexec exec` (clean path: `systemctl kexec`), --mode
    /// fastkexec-uncompressed (default) or fastkexec-staged; the new boot checks the previous
    /// boot's journal (every stop job done, no unit failed) and that the root file system
    /// needed no journal recovery
    Clean,
    /// The baseline: `kexec -l ... && systemctl kexec`, with the same checks as clean
    KexecTools,
    /// `fastkexec trace` without --exec as a service (fklab-trace.service), the reboot by
    /// `systemctl kexec` from elsewhere: the new boot's report must read a valid record
    Follow,
    /// The boot-time unit (contrib/systemd/fastkexec-report.service) after a cold boot, after
    /// 3 chained traced kexec reboots and after a kexec-tools one: it must end successfully
    /// each time, and the host scrapes node_exporter's /metrics through the forwarded port
    /// (fastkexec_* present, `promtool check metrics`, fastkexec_reboots_total 0,1,2,3,3)
    ReportUnit,
    /// A unit that stops 1.5 s after SIGTERM and one that starts in 2 s (ExecStartPre=), with
    /// their stop/start spans as the journal of each boot recorded them: a known answer for
    /// per-unit attribution
    SlowUnits,
}

/// The guest's default target (Debian's), whose "Reached target" line the host stamps.
pub const DEFAULT_TARGET: &str = "graphical.target";
/// The slow units' known answers (the journal's spans may exceed them by `SLOW_SLACK_MS`; the
/// report is held to 10 % of them, `labslow`).
pub const SLOW_STOP_MS: f64 = 1500.0;
pub const SLOW_START_MS: f64 = 60_000.0;
/// The spans systemd logs hold the workload plus the unit's own process handling (fork, exec,
/// signal delivery), which TCG on a loaded host stretched by up to 24 s (6.12: stop 7.3 s, start
/// 25.8 s; 6.1: stop 3.0 s, start 30.0 s, at load average 25 on 2 cores): the workload is a hard
/// lower bound, the upper bound only catches a unit that did not do its job.
pub const SLOW_SLACK_MS: f64 = 60_000.0;

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Clean => "clean",
            Scenario::KexecTools => "kexec-tools",
            Scenario::Follow => "follow",
            Scenario::ReportUnit => "report-unit",
            Scenario::SlowUnits => "slow-units",
        }
    }

    /// The loader of each reboot, in order. `clean` chains the reboots given (one VM, every
    /// check on every boot); the others take at most the one mode they support.
    pub fn modes(self, given: &[Mode]) -> Result<Vec<Mode>> {
        let names = |v: &[Mode]| v.iter().map(|m| m.name()).collect::<Vec<_>>().join(", ");
        let allowed: &[Mode] = match self {
            Scenario::Clean => &[
                Mode::FastkexecUncompressed,
                Mode::FastkexecStaged,
                Mode::KexecToolsL,
            ],
            Scenario::KexecTools => &[Mode::KexecToolsL],
            _ => &[Mode::FastkexecUncompressed],
        };
        if let Some(m) = given.iter().find(|m| !allowed.contains(m)) {
            bail!(
                "--scenario {} takes --mode {}, not {}",
                self.name(),
                names(allowed),
                m.name()
            );
        }
        if self != Scenario::Clean && given.len() > 1 {
            bail!(
                "--scenario {} takes one --mode; only clean chains reboots ({})",
                self.name(),
                names(given)
            );
        }
        Ok(match self {
            Scenario::Clean if !given.is_empty() => given.to_vec(),
            Scenario::ReportUnit => vec![
                Mode::FastkexecUncompressed,
                Mode::FastkexecUncompressed,
                Mode::FastkexecUncompressed,
                Mode::KexecToolsL,
            ],
            _ => vec![allowed[0]],
        })
    }
}

pub struct SystemOptions {
    pub scenario: Scenario,
    pub modes: Vec<Mode>,
    pub timeout: Duration,
    pub memory: String,
    pub smp: u32,
    pub append: Vec<String>,
}

/// node_exporter's /metrics as the host scraped it in one round.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Scrape {
    pub round: u32,
    pub path: PathBuf,
    pub bytes: usize,
    /// Sample lines of fastkexec_* metrics.
    pub fastkexec_samples: usize,
    pub reboots_total: Option<f64>,
    /// `promtool check metrics` on the scrape's fastkexec_* families (HELP, TYPE, samples, as
    /// node_exporter served them): exit 0.
    pub promtool_ok: bool,
    pub promtool_output: String,
    /// `promtool check metrics` on the whole scrape: 0, or 3 when it only has lint findings
    /// (node_exporter's own families: camelCase names from /proc/meminfo and netstat, `_bits`
    /// units); 1 would be a scrape that does not parse.
    pub whole_promtool_rc: Option<i32>,
    pub whole_lint_findings: usize,
    /// Lint findings of the whole scrape that name a fastkexec_* metric (must be none).
    pub fastkexec_lint: Vec<String>,
    pub error: Option<String>,
}

impl Scrape {
    pub fn ok(&self) -> bool {
        self.error.is_none()
            && self.promtool_ok
            && self.fastkexec_samples > 0
            && matches!(self.whole_promtool_rc, Some(0 | 3))
            && self.fastkexec_lint.is_empty()
    }
}

/// Runs `promtool check metrics` on a file: (exit code, what it said).
fn promtool(path: &Path) -> Result<(Option<i32>, String)> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let o = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(f)
        .output()
        .context("cannot run promtool")?;
    Ok((
        o.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
        .trim()
        .to_string(),
    ))
}

/// The metric family a line of the text format speaks of.
fn family(line: &str) -> Option<&str> {
    let rest = line
        .strip_prefix("# HELP ")
        .or_else(|| line.strip_prefix("# TYPE "));
    let name = match rest {
        Some(r) => r.split_whitespace().next()?,
        None if line.starts_with('#') => return None,
        None => line.split(['{', ' ']).next()?,
    };
    Some(name)
}

/// A unit's span as the journal recorded it (begin message → done message), ms.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Slow {
    pub stop_ms: Option<f64>,
    pub start_ms: Option<f64>,
}

/// One boot of the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Round {
    pub round: u32,
    /// How this boot came about: `cold` or the lab mode of the reboot that led here.
    pub via: String,
    /// Host ms since QEMU started: systemd's "Reached target graphical.target" line.
    pub default_target_ms: Option<f64>,
    /// Host ms: the driver's first line (fklab.service, ordered after the default target).
    pub up_ms: Option<f64>,
    pub release: Option<String>,
    pub cmdline: Option<String>,
    pub mem_total_kb: Option<u64>,
    /// systemd's own stamps of this boot, µs of CLOCK_MONOTONIC.
    pub systemd_userspace_us: Option<u64>,
    pub systemd_finish_us: Option<u64>,
    pub systemd_default_target_us: Option<u64>,
    pub failed_units: Vec<String>,
    /// contrib/systemd/fastkexec-report.service as systemd ran it in this boot.
    pub report_unit_result: Option<String>,
    pub report_unit_status: Option<i32>,
    /// The kernel's lines about the root file system (`EXT4-fs (vda)`).
    pub ext4: Vec<String>,
    /// The previous boot's stop jobs (PID 1's journal entries with a JOB_RESULT).
    pub prev_stop_jobs: usize,
    /// Those whose result was not `done`, as `unit=result`.
    pub prev_stop_not_done: Vec<String>,
    /// The previous boot's unit failures (systemd's "unit failed" / "unit result" entries)
    /// from its shutdown on (at or after its first stop job).
    pub prev_failures: Vec<String>,
    /// Failures of the previous boot before its shutdown (a unit that failed to start): not
    /// the reboot's doing, kept for the record (seen: systemd-networkd's start timing out on a
    /// loaded TCG host, restarted and running by the time the driver ran).
    pub prev_boot_failures: Vec<String>,
    /// The last thing PID 1 logged in the previous boot.
    pub prev_last: Option<String>,
    pub report_rc: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceCheck>,
    pub textfile_bytes: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scrape: Option<Scrape>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow: Option<Slow>,
    /// `systemd-analyze blame`'s first lines: (unit, ms).
    pub blame: Vec<(String, f64)>,
    /// The report held to the known units and the host stopwatch (slow-units).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_check: Option<crate::labslow::SlowCheck>,
    pub pinned_links: Option<u32>,
    pub loading_ms: Option<f64>,
    pub loaded_ms: Option<f64>,
    pub exec_ms: Option<f64>,
    #[serde(skip)]
    prev_entries: Vec<Value>,
    #[serde(skip)]
    slow_entries: Vec<(i32, Value)>,
}

/// One reboot, on the host's stopwatch (ms).
#[derive(Debug, Clone, Serialize)]
pub struct Reboot {
    pub mode: Mode,
    pub from_round: u32,
    /// `FKLAB: exec`: right before `systemctl kexec` (fastkexec exec prints it once its
    /// checks passed, then runs `systemctl kexec`).
    pub exec_ms: Option<f64>,
    /// The old kernel's `kexec_core: Starting new kernel` (systemd's shutdown is over).
    pub starting_new_kernel_ms: Option<f64>,
    /// The new kernel's `Linux version` line (earlyprintk).
    pub first_new_kernel_line_ms: Option<f64>,
    /// systemd's "Reached target graphical.target" in the new boot.
    pub default_target_ms: Option<f64>,
    /// The blackout as systemd sees it: `systemctl kexec` → default target reached.
    pub exec_to_default_target_ms: Option<f64>,
    pub exec_to_first_new_kernel_line_ms: Option<f64>,
    /// systemd's shutdown and the kernel's until the jump: exec → `Starting new kernel`.
    pub exec_to_starting_new_kernel_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct SystemReport {
    pub schema_version: u32,
    pub system: &'static str,
    pub scenario: Scenario,
    pub modes: Vec<Mode>,
    pub kernel: KernelRef,
    pub accel: String,
    pub image: PathBuf,
    pub qemu: Vec<String>,
    pub ok: bool,
    /// Every check that failed, in words (empty when ok).
    pub problems: Vec<String>,
    pub rounds: Vec<Round>,
    pub reboots: Vec<Reboot>,
    pub serial_log: PathBuf,
    pub tail: Vec<String>,
}

/// What the serial loop does after a line.
enum Action {
    Continue,
    /// Write this to the guest's serial input.
    Reply(String),
    /// The run is over: stop QEMU.
    Stop,
}

/// Starts QEMU and collects its stamped serial lines (each stamped when its first byte
/// arrives, on the host's monotonic clock) until `on_line` stops it, QEMU exits, or `timeout`.
fn boot(
    args: &[String],
    log: &Path,
    timeout: Duration,
    mut on_line: impl FnMut(&str) -> Action,
) -> Result<(Vec<(f64, String)>, bool)> {
    let start = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64 (run `cargo xtask setup`)")?;
    let mut stdin = child.stdin.take().context("qemu stdin")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let (rx, reader) = crate::qemu::lines(stdout, start, None);
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut w = BufWriter::new(file);
    let mut lines = Vec::new();
    let deadline = start + timeout;
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((t, _, line)) => {
                writeln!(w, "{t:12.3} {line}")?;
                let action = on_line(&line);
                lines.push((t, line));
                match action {
                    Action::Continue => {}
                    Action::Reply(s) => {
                        // The guest may be gone; the check then fails on what is missing.
                        let _ = stdin.write_all(s.as_bytes()).and_then(|_| stdin.flush());
                    }
                    Action::Stop => break,
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                break;
            }
        }
    }
    lines.extend(crate::qemu::finish(child, reader, false, start, &mut w)?);
    Ok((lines, timed_out))
}

/// The run's kernel command line. `no_timer_check`: on a loaded host the kernel's check of
/// the IO-APIC timer (ticks counted in a busy loop) failed under TCG and panicked a cold boot
/// ("IO-APIC + timer doesn't work!"); `log_buf_len=4M` keeps the whole boot's kernel log for
/// `report` (it looks for "Run /init").
fn cmdline(opts: &SystemOptions) -> String {
    let modes: Vec<&str> = opts.modes.iter().map(|m| m.name()).collect();
    let mut c = format!(
        "console=ttyS0,115200 earlyprintk=serial,ttyS0,115200 crashkernel={}M panic=-1 \
         root=/dev/vda ro log_buf_len=4M no_timer_check fklab.round=1 fklab.scenario={} fklab.modes={}",
        crate::lab::CRASHKERNEL_MIB,
        opts.scenario.name(),
        modes.join(",")
    );
    for e in &opts.append {
        c.push(' ');
        c.push_str(e);
    }
    c
}

/// A free local port for node_exporter's forward (taken back right before QEMU binds it).
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free local port")?;
    Ok(l.local_addr()?.port())
}

fn qemu_args(
    kernel: &KernelInfo,
    initrd: &Path,
    disk: &Path,
    port: u16,
    accel: &str,
    opts: &SystemOptions,
) -> Vec<String> {
    let mut a = crate::qemu::base_args(
        &kernel.vmlinuz,
        initrd,
        accel,
        &opts.memory,
        opts.smp,
        &cmdline(opts),
    );
    a.extend([
        "-drive".into(),
        format!("file={},format=qcow2,if=virtio", disk.display()),
        "-netdev".into(),
        format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:9100"),
        "-device".into(),
        "virtio-net-pci,netdev=n0".into(),
    ]);
    a
}

/// Reads `/metrics` from the forwarded port (HTTP/1.0: one response, then close).
fn http_get(port: u16) -> Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: fklab\r\n\r\n")?;
    let mut body = Vec::new();
    s.read_to_end(&mut body)?;
    let text = String::from_utf8_lossy(&body).into_owned();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .context("no HTTP header in node_exporter's answer")?;
    if !head.starts_with("HTTP/1.") || head.split_whitespace().nth(1) != Some("200") {
        bail!(
            "node_exporter answered {}",
            head.lines().next().unwrap_or("")
        );
    }
    Ok(rest.to_string())
}

/// Scrapes node_exporter and checks what it serves.
fn scrape(port: u16, round: u32, dir: &Path) -> Scrape {
    let path = dir.join(format!("metrics-round{round}.prom"));
    let mut s = Scrape {
        round,
        path: path.clone(),
        ..Scrape::default()
    };
    let body = match http_get(port) {
        Ok(b) => b,
        Err(e) => {
            s.error = Some(format!("{e:#}"));
            return s;
        }
    };
    s.bytes = body.len();
    for l in body.lines().filter(|l| l.starts_with("fastkexec_")) {
        s.fastkexec_samples += 1;
        if let Some(v) = l.strip_prefix("fastkexec_reboots_total ") {
            s.reboots_total = v.trim().parse().ok();
        }
    }
    if let Err(e) = std::fs::write(&path, &body) {
        s.error = Some(format!("writing {}: {e}", path.display()));
        return s;
    }
    let ours: String = body
        .lines()
        .filter(|l| family(l).is_some_and(|f| f.starts_with("fastkexec_")))
        .map(|l| format!("{l}\n"))
        .collect();
    let ours_path = dir.join(format!("metrics-round{round}-fastkexec.prom"));
    let checked = std::fs::write(&ours_path, &ours)
        .context("writing the fastkexec families")
        .and_then(|_| Ok((promtool(&ours_path)?, promtool(&path)?)));
    match checked {
        Ok(((rc, out), (whole_rc, whole_out))) => {
            s.promtool_ok = rc == Some(0);
            s.promtool_output = out;
            s.whole_promtool_rc = whole_rc;
            s.whole_lint_findings = whole_out.lines().count();
            s.fastkexec_lint = whole_out
                .lines()
                .filter(|l| l.starts_with("fastkexec_"))
                .map(str::to_string)
                .collect();
        }
        Err(e) => s.error = Some(format!("{e:#}")),
    }
    s
}

fn field<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

/// systemd's message ids for a job's begin (unit starting / stopping).
const BEGIN_IDS: &[&str] = &[
    "7d4958e842da4a758f6c1cdc7b36dcc5",
    "de5b426a63be47a7b6ac3eaac82e2f6f",
];

/// begin → done of `unit`'s `job` among journal entries, ms.
fn job_span(entries: &[&Value], unit: &str, job: &str) -> Option<f64> {
    let mono = |v: &Value| field(v, "__MONOTONIC_TIMESTAMP")?.parse::<f64>().ok();
    let mine: Vec<&&Value> = entries
        .iter()
        .filter(|v| field(v, "UNIT") == Some(unit) && field(v, "JOB_TYPE") == Some(job))
        .collect();
    let begin = mine.iter().find(|v| {
        field(v, "JOB_RESULT").is_none()
            || field(v, "MESSAGE_ID").is_some_and(|id| BEGIN_IDS.contains(&id))
    })?;
    let end = mine
        .iter()
        .rev()
        .find(|v| field(v, "JOB_RESULT") == Some("done"))?;
    Some((mono(end)? - mono(begin)?) / 1e3)
}

/// Splits the serial lines into boots and reboots.
pub fn analyse(lines: &[(f64, String)], modes: &[Mode]) -> (Vec<Round>, Vec<Reboot>) {
    let mut rounds: Vec<Round> = Vec::new();
    let mut reboots: Vec<Reboot> = Vec::new();
    // Since the last exec (or QEMU's start): the default target's status line.
    let mut reached: Option<f64> = None;
    let mut in_report = false;
    let mut report_lines: Vec<(f64, String)> = Vec::new();
    let mut textfile: Option<usize> = None;
    for (t, l) in lines {
        let t = *t;
        if l.contains("Reached target") && l.contains(DEFAULT_TARGET) {
            reached = Some(t);
            continue;
        }
        if let Some(rest) = l.strip_prefix("FKLAB: up round=") {
            let n: u32 = rest
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let via = rest
                .split_whitespace()
                .find_map(|w| w.strip_prefix("via="))
                .unwrap_or("")
                .to_string();
            if let Some(r) = reboots.last_mut() {
                if r.default_target_ms.is_none() {
                    r.default_target_ms = reached;
                }
            }
            rounds.push(Round {
                round: n,
                via,
                default_target_ms: reached,
                up_ms: Some(t),
                ..Round::default()
            });
            continue;
        }
        let Some(r) = rounds.last_mut() else {
            continue;
        };
        if in_report {
            if l.starts_with("FKLAB: report-end") {
                report_lines.push((t, l.clone()));
                let (json, rc) = labtrace::extract(&report_lines);
                r.report_rc = rc;
                r.report = json;
                in_report = false;
                report_lines.clear();
            } else {
                report_lines.push((t, l.clone()));
            }
            continue;
        }
        if let Some(n) = textfile.as_mut() {
            if l == "FKLAB: textfile-end" {
                r.textfile_bytes = *n;
                textfile = None;
            } else {
                *n += l.len() + 1;
            }
            continue;
        }
        let value = |p: &str| l.strip_prefix(p).map(str::trim);
        if l == "FKLAB: report-begin" {
            in_report = true;
            report_lines.push((t, l.clone()));
        } else if l == "FKLAB: textfile-begin" {
            textfile = Some(0);
        } else if let Some(v) = value("FKLAB: kernel=") {
            r.release = Some(v.to_string());
        } else if let Some(v) = value("FKLAB: cmdline=") {
            r.cmdline = Some(v.to_string());
        } else if let Some(v) = value("FKLAB: memtotal_kb=") {
            r.mem_total_kb = v.parse().ok();
        } else if let Some(v) = value("FKLAB: systemd userspace_us=") {
            r.systemd_userspace_us = v.parse().ok();
        } else if let Some(v) = value("FKLAB: systemd finish_us=") {
            r.systemd_finish_us = v.parse().ok();
        } else if let Some(v) = value("FKLAB: systemd default_target_us=") {
            r.systemd_default_target_us = v.parse().ok();
        } else if let Some(v) = value("FKLAB: failed-unit ") {
            r.failed_units.push(v.to_string());
        } else if let Some(v) = value("FKLAB: report-unit result=") {
            r.report_unit_result = Some(v.to_string());
        } else if let Some(v) = value("FKLAB: report-unit status=") {
            r.report_unit_status = v.parse().ok();
        } else if let Some(v) = value("FKLAB: ext4 ") {
            r.ext4.push(v.to_string());
        } else if let Some(v) = value("FKLAB: prev-stop ") {
            if let Ok(j) = serde_json::from_str::<Value>(v) {
                if let Some(res) = field(&j, "JOB_RESULT") {
                    r.prev_stop_jobs += 1;
                    if res != "done" {
                        r.prev_stop_not_done
                            .push(format!("{}={res}", field(&j, "UNIT").unwrap_or("?")));
                    }
                }
                r.prev_entries.push(j);
            }
        } else if let Some(v) = value("FKLAB: prev-failure ") {
            // The stop entries come first (fklab.sh), so the shutdown's start is known here.
            let j: Value = serde_json::from_str(v).unwrap_or(Value::Null);
            let mono = |v: &Value| field(v, "__MONOTONIC_TIMESTAMP")?.parse::<u64>().ok();
            let shutdown = r.prev_entries.iter().filter_map(mono).min();
            let text = format!(
                "{}: {}",
                field(&j, "UNIT").unwrap_or("?"),
                field(&j, "MESSAGE").unwrap_or(v)
            );
            match (mono(&j), shutdown) {
                (Some(t), Some(s)) if t < s => r.prev_boot_failures.push(text),
                _ => r.prev_failures.push(text),
            }
        } else if let Some(v) = value("FKLAB: prev-last ") {
            r.prev_last = Some(v.to_string());
        } else if let Some(v) = value("FKLAB: slow boot=") {
            if let Some((b, j)) = v.split_once(' ') {
                if let (Ok(b), Ok(j)) = (b.parse(), serde_json::from_str(j)) {
                    r.slow_entries.push((b, j));
                }
            }
        } else if let Some(v) = value("FKLAB: blame ") {
            r.blame.extend(crate::labslow::parse_blame(v));
        } else if let Some(v) = value("FKLAB: pinned links=") {
            r.pinned_links = v.parse().ok();
        } else if l.starts_with("FKLAB: loading") {
            r.loading_ms = Some(t);
        } else if l == "FKLAB: loaded" {
            r.loaded_ms = Some(t);
        } else if l == "FKLAB: exec" {
            r.exec_ms = Some(t);
            reached = None;
            let i = reboots.len();
            reboots.push(Reboot {
                mode: modes.get(i).copied().unwrap_or(Mode::KexecToolsL),
                from_round: r.round,
                exec_ms: Some(t),
                starting_new_kernel_ms: None,
                first_new_kernel_line_ms: None,
                default_target_ms: None,
                exec_to_default_target_ms: None,
                exec_to_first_new_kernel_line_ms: None,
                exec_to_starting_new_kernel_ms: None,
            });
        } else if let Some(rb) = reboots.last_mut().filter(|rb| rb.from_round == r.round) {
            if l.contains("kexec_core: Starting new kernel") {
                rb.starting_new_kernel_ms.get_or_insert(t);
            } else if l.contains("Linux version") && rb.first_new_kernel_line_ms.is_none() {
                rb.first_new_kernel_line_ms = Some(t);
            }
        }
    }
    for r in &mut rounds {
        if !r.slow_entries.is_empty() {
            let prev: Vec<&Value> = r
                .slow_entries
                .iter()
                .filter(|(b, _)| *b == -1)
                .map(|(_, v)| v)
                .collect();
            let this: Vec<&Value> = r
                .slow_entries
                .iter()
                .filter(|(b, _)| *b == 0)
                .map(|(_, v)| v)
                .collect();
            r.slow = Some(Slow {
                stop_ms: job_span(&prev, "fklab-slow-stop.service", "stop"),
                start_ms: job_span(&this, "fklab-slow-start.service", "start"),
            });
        }
        if r.report.is_some() || r.report_rc.is_some() {
            r.trace = Some(labtrace::check(
                r.report.as_ref(),
                r.report_rc,
                None,
                None,
                labtrace::Loaded::Uncompressed,
            ));
        }
    }
    let d = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
    for rb in &mut reboots {
        rb.exec_to_default_target_ms = d(rb.exec_ms, rb.default_target_ms);
        rb.exec_to_first_new_kernel_line_ms = d(rb.exec_ms, rb.first_new_kernel_line_ms);
        rb.exec_to_starting_new_kernel_ms = d(rb.exec_ms, rb.starting_new_kernel_ms);
    }
    // Only slow-units prints blame: its traced reboot's report against the known answers.
    for r in rounds.iter_mut().filter(|r| !r.blame.is_empty()) {
        let host = reboots
            .iter()
            .find(|rb| rb.from_round + 1 == r.round)
            .and_then(|rb| rb.exec_to_default_target_ms);
        r.slow_check = Some(crate::labslow::check(
            r.report.as_ref(),
            &r.blame,
            host,
            ("fklab-slow-stop.service", SLOW_STOP_MS),
            ("fklab-slow-start.service", SLOW_START_MS),
        ));
    }
    (rounds, reboots)
}

/// Every check of the scenario that failed, in words.
pub fn problems(
    scenario: Scenario,
    modes: &[Mode],
    release: &str,
    rounds: &[Round],
    reboots: &[Reboot],
    done: bool,
) -> Vec<String> {
    let mut p = Vec::new();
    let want = modes.len() + 1;
    if rounds.len() != want || !done {
        p.push(format!(
            "{} of {want} boots reached the default target and reported{}",
            rounds.len(),
            if done { "" } else { " (no FKLAB: done)" }
        ));
    }
    for (i, r) in rounds.iter().enumerate() {
        let n = i + 1;
        if r.round as usize != n {
            p.push(format!("boot {n} says it is round {}", r.round));
        }
        if r.release.as_deref() != Some(release) {
            p.push(format!("boot {n} runs {:?}, not {release}", r.release));
        }
        if !r.failed_units.is_empty() {
            p.push(format!("boot {n}: failed units {:?}", r.failed_units));
        }
        if r.report_unit_result.as_deref() != Some("success") {
            p.push(format!(
                "boot {n}: fastkexec-report.service result {:?} (status {:?})",
                r.report_unit_result, r.report_unit_status
            ));
        }
        if !r.ext4.iter().any(|l| l.contains("mounted filesystem")) {
            p.push(format!(
                "boot {n}: no EXT4-fs (vda) mount line in its kernel log"
            ));
        }
        if let Some(l) = r.ext4.iter().find(|l| l.contains("recovery")) {
            p.push(format!(
                "boot {n}: the root file system needed recovery: {l}"
            ));
        }
        if n > 1 {
            if r.prev_stop_jobs == 0 {
                p.push(format!(
                    "boot {n}: the previous boot's journal holds no stop job"
                ));
            }
            if !r.prev_stop_not_done.is_empty() {
                p.push(format!(
                    "boot {n}: stop jobs of the previous boot that did not end `done`: {:?}",
                    r.prev_stop_not_done
                ));
            }
            if !r.prev_failures.is_empty() {
                p.push(format!(
                    "boot {n}: unit failures in the previous boot: {:?}",
                    r.prev_failures
                ));
            }
        }
        let via = modes.get(i.wrapping_sub(1)).copied();
        let traced = matches!(
            scenario,
            Scenario::Follow | Scenario::ReportUnit | Scenario::SlowUnits
        ) && via == Some(Mode::FastkexecUncompressed);
        if traced {
            match &r.trace {
                Some(c) if c.ok() => {}
                Some(c) => p.push(format!(
                    "boot {n}: the report is not valid: {}",
                    c.problem()
                )),
                None => p.push(format!("boot {n}: no report")),
            }
        }
        if scenario == Scenario::ReportUnit {
            let want_status = if traced { 0 } else { 3 };
            if r.report_unit_status != Some(want_status) {
                p.push(format!(
                    "boot {n} (via {}): fastkexec report exited {:?}, wanted {want_status}",
                    r.via, r.report_unit_status
                ));
            }
            let folded = modes
                .iter()
                .take(i)
                .filter(|m| **m == Mode::FastkexecUncompressed)
                .count() as f64;
            match &r.scrape {
                Some(s) => {
                    if !s.ok() {
                        p.push(format!(
                            "boot {n}: scrape {:?}, fastkexec samples {}, promtool on them {} \
                             ({}), on the whole scrape exit {:?} with fastkexec findings {:?}",
                            s.error,
                            s.fastkexec_samples,
                            s.promtool_ok,
                            s.promtool_output,
                            s.whole_promtool_rc,
                            s.fastkexec_lint
                        ));
                    }
                    if s.reboots_total != Some(folded) {
                        p.push(format!(
                            "boot {n}: fastkexec_reboots_total {:?}, wanted {folded}",
                            s.reboots_total
                        ));
                    }
                }
                None => p.push(format!("boot {n}: the host did not scrape node_exporter")),
            }
        }
        if scenario == Scenario::Follow && n == 1 && r.pinned_links.unwrap_or(0) == 0 {
            p.push("boot 1: the follow-mode tracer pinned no links".into());
        }
        if scenario == Scenario::SlowUnits && n > 1 {
            let s = r.slow.clone().unwrap_or_default();
            let within = |v: Option<f64>, known: f64| {
                v.is_some_and(|v| v >= known && v <= known + SLOW_SLACK_MS)
            };
            if !within(s.stop_ms, SLOW_STOP_MS) {
                p.push(format!(
                    "boot {n}: fklab-slow-stop.service stopped in {:?} ms, not {SLOW_STOP_MS} ms \
                     (+ up to {SLOW_SLACK_MS} ms)",
                    s.stop_ms
                ));
            }
            if !within(s.start_ms, SLOW_START_MS) {
                p.push(format!(
                    "boot {n}: fklab-slow-start.service started in {:?} ms, not {SLOW_START_MS} \
                     ms (+ up to {SLOW_SLACK_MS} ms)",
                    s.start_ms
                ));
            }
            match &r.slow_check {
                Some(c) => p.extend(c.problems.iter().map(|e| format!("boot {n}: {e}"))),
                None => p.push(format!(
                    "boot {n}: no systemd-analyze blame lines: the report was not checked"
                )),
            }
        }
    }
    // A staged reboot must give all RAM back (the reservation is not lost).
    let cold = rounds.first().and_then(|r| r.mem_total_kb);
    for (i, _) in modes
        .iter()
        .enumerate()
        .filter(|(_, m)| **m == Mode::FastkexecStaged)
    {
        if let (Some(cold), Some(new)) = (cold, rounds.get(i + 1).and_then(|r| r.mem_total_kb)) {
            if (new as f64 - cold as f64).abs() / cold as f64 > crate::lab::MEMTOTAL_TOLERANCE {
                p.push(format!(
                    "boot {}: MemTotal {new} kB after a staged reboot, {cold} kB cold: not all \
                     RAM is back",
                    i + 2
                ));
            }
        }
    }
    for (i, rb) in reboots.iter().enumerate() {
        if rb.exec_to_default_target_ms.is_none() || rb.exec_to_first_new_kernel_line_ms.is_none() {
            p.push(format!(
                "reboot {}: the host did not see exec, the new kernel's first line and the \
                 default target",
                i + 1
            ));
        }
    }
    p
}

/// One run of a scenario: overlay, boot, scrape when asked, analyse, check.
pub fn run(
    kernel: &KernelInfo,
    image: &Image,
    accel: &str,
    opts: &SystemOptions,
) -> Result<SystemReport> {
    let modes: Vec<&str> = opts.modes.iter().map(|m| m.name()).collect();
    let dir = new_run_dir(&format!(
        "{}-system-{}-{}",
        kernel.name,
        opts.scenario.name(),
        modes.join("+")
    ))?;
    let log = dir.join("serial.log");
    let disk = system::overlay(image, &dir)?;
    let initrd = image.initrd(&kernel.release)?;
    let port = free_port()?;
    let args = qemu_args(kernel, initrd, &disk, port, accel, opts);
    step(format!(
        "lab: system debian, scenario {} ({}) on {} ({accel}), serial log {}",
        opts.scenario.name(),
        modes.join(", "),
        kernel.name,
        log.display()
    ));
    let mut scrapes: Vec<Scrape> = Vec::new();
    let mut done = false;
    let (lines, timed_out) = boot(&args, &log, opts.timeout, |l| {
        if let Some(n) = l.strip_prefix("FKLAB: scrape round=") {
            let s = scrape(port, n.trim().parse().unwrap_or(0), &dir);
            scrapes.push(s);
            return Action::Reply("scraped\n".into());
        }
        if l == "FKLAB: done" {
            done = true;
            return Action::Stop;
        }
        if l.starts_with("FKLAB: error") {
            return Action::Stop;
        }
        Action::Continue
    })?;
    let (mut rounds, reboots) = analyse(&lines, &opts.modes);
    for s in scrapes {
        if let Some(r) = rounds.iter_mut().find(|r| r.round == s.round) {
            r.scrape = Some(s);
        }
    }
    let mut problems = problems(
        opts.scenario,
        &opts.modes,
        &kernel.release,
        &rounds,
        &reboots,
        done,
    );
    for (_, l) in &lines {
        if let Some(e) = l.strip_prefix("FKLAB: error ") {
            problems.insert(0, format!("guest: {e}"));
        }
    }
    if timed_out {
        problems.insert(0, format!("timeout after {} s", opts.timeout.as_secs()));
    }
    let ok = problems.is_empty();
    let report = SystemReport {
        schema_version: 1,
        system: "debian",
        scenario: opts.scenario,
        modes: opts.modes.clone(),
        kernel: crate::lab::kernel_ref(kernel),
        accel: accel.to_string(),
        image: image.ext4.clone(),
        qemu: std::iter::once("qemu-system-x86_64".to_string())
            .chain(args)
            .collect(),
        ok,
        problems,
        rounds,
        reboots,
        serial_log: log,
        tail: if ok {
            Vec::new()
        } else {
            lines
                .iter()
                .rev()
                .take(40)
                .rev()
                .map(|(_, l)| l.clone())
                .collect()
        },
    };
    write_atomic(
        &dir.join("result.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    Ok(report)
}

/// One human line per run.
pub fn summary_line(r: &SystemReport) -> String {
    let f = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.0} ms"));
    let mut s = format!(
        "{} system debian {} ({}): ok={}",
        r.kernel.name,
        r.scenario.name(),
        r.modes
            .iter()
            .map(|m| m.name())
            .collect::<Vec<_>>()
            .join(","),
        r.ok
    );
    for (i, rb) in r.reboots.iter().enumerate() {
        s.push_str(&format!(
            " · reboot {} {}: exec→first new-kernel line {} · systemctl kexec→default target {}",
            i + 1,
            rb.mode.name(),
            f(rb.exec_to_first_new_kernel_line_ms),
            f(rb.exec_to_default_target_ms)
        ));
    }
    for p in &r.problems {
        s.push_str(&format!("\n  problem: {p}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(v: &[(f64, &str)]) -> Vec<(f64, String)> {
        v.iter().map(|(t, l)| (*t, l.to_string())).collect()
    }

    const STOP_DONE: &str = r#"{"UNIT":"a.service","JOB_TYPE":"stop","JOB_RESULT":"done","MESSAGE_ID":"9d1aaa27d60140bd96365438aad20286"}"#;

    fn boot(n: u32, via: &str, t: f64) -> Vec<(f64, String)> {
        let mut v = vec![
            (
                t - 500.0,
                "[  OK  ] Reached target graphical.target - Graphical Interface.".to_string(),
            ),
            (
                t,
                format!("FKLAB: up round={n} scenario=clean via={via} uptime=40"),
            ),
            (t + 1.0, "FKLAB: kernel=6.12.1".into()),
            (t + 2.0, "FKLAB: report-unit result=success".into()),
            (t + 3.0, "FKLAB: report-unit status=3".into()),
            (
                t + 4.0,
                "FKLAB: ext4 EXT4-fs (vda): mounted filesystem 1 ro with ordered data mode.".into(),
            ),
        ];
        if n > 1 {
            v.push((t + 5.0, format!("FKLAB: prev-stop {STOP_DONE}")));
        }
        v
    }

    fn clean_run() -> Vec<(f64, String)> {
        let mut v = boot(1, "cold", 40_000.0);
        v.extend(lines(&[
            (41_000.0, "FKLAB: loading mode=fastkexec-uncompressed"),
            (42_000.0, "FKLAB: loaded"),
            (43_000.0, "FKLAB: exec"),
            (50_000.0, "[   60.1] kexec_core: Starting new kernel"),
            (51_000.0, "[    0.000000] Linux version 6.12.1"),
        ]));
        v.extend(boot(2, "fastkexec-uncompressed", 90_000.0));
        v.push((90_100.0, "FKLAB: done".into()));
        v
    }

    #[test]
    fn a_clean_reboot_is_timed_from_exec_to_the_default_target() {
        let modes = [Mode::FastkexecUncompressed];
        let (rounds, reboots) = analyse(&clean_run(), &modes);
        assert_eq!(rounds.len(), 2);
        assert_eq!(reboots.len(), 1);
        let rb = &reboots[0];
        assert_eq!(rb.exec_to_starting_new_kernel_ms, Some(7000.0));
        assert_eq!(rb.exec_to_first_new_kernel_line_ms, Some(8000.0));
        // The default target's status line, not the driver's line after it.
        assert_eq!(rb.exec_to_default_target_ms, Some(46_500.0));
        let p = problems(Scenario::Clean, &modes, "6.12.1", &rounds, &reboots, true);
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn a_failed_stop_or_a_recovered_root_fails_the_run() {
        let modes = [Mode::FastkexecUncompressed];
        let mut v = clean_run();
        v.push((
            90_050.0,
            r#"FKLAB: prev-stop {"UNIT":"b.service","JOB_TYPE":"stop","JOB_RESULT":"failed"}"#
                .into(),
        ));
        v.push((
            90_060.0,
            "FKLAB: ext4 EXT4-fs (vda): recovery complete".into(),
        ));
        // Lines after `done` still belong to boot 2 for the parser.
        let (rounds, reboots) = analyse(&v, &modes);
        let p = problems(Scenario::Clean, &modes, "6.12.1", &rounds, &reboots, true);
        assert!(p.iter().any(|m| m.contains("b.service=failed")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("needed recovery")), "{p:?}");
    }

    #[test]
    fn a_missing_boot_or_wrong_kernel_fails_the_run() {
        let modes = [Mode::FastkexecUncompressed];
        let v = clean_run();
        let (rounds, reboots) = analyse(&v[..10], &modes);
        let p = problems(Scenario::Clean, &modes, "6.12.1", &rounds, &reboots, false);
        assert!(p.iter().any(|m| m.contains("1 of 2 boots")), "{p:?}");
        let (rounds, reboots) = analyse(&v, &modes);
        let p = problems(Scenario::Clean, &modes, "6.1.0", &rounds, &reboots, true);
        assert!(p.iter().any(|m| m.contains("not 6.1.0")), "{p:?}");
    }

    #[test]
    fn the_slow_units_spans_come_from_the_journal() {
        let e = |unit: &str, job: &str, res: Option<&str>, us: u64| {
            let mut j = serde_json::json!({"UNIT": unit, "JOB_TYPE": job,
                "__MONOTONIC_TIMESTAMP": us.to_string()});
            if let Some(r) = res {
                j["JOB_RESULT"] = r.into();
            }
            j
        };
        let entries = [
            e("fklab-slow-stop.service", "stop", None, 10_000_000),
            e("fklab-slow-stop.service", "stop", Some("done"), 11_600_000),
        ];
        let refs: Vec<&Value> = entries.iter().collect();
        assert_eq!(
            job_span(&refs, "fklab-slow-stop.service", "stop"),
            Some(1600.0)
        );
        assert_eq!(job_span(&refs, "fklab-slow-start.service", "start"), None);
    }

    #[test]
    fn only_failures_from_the_shutdown_on_fail_the_run() {
        let modes = [Mode::FastkexecUncompressed];
        let mut v = clean_run();
        let stop = r#"FKLAB: prev-stop {"UNIT":"a.service","JOB_TYPE":"stop","JOB_RESULT":"done","__MONOTONIC_TIMESTAMP":"500"}"#;
        v.push((90_010.0, stop.into()));
        let early = r#"FKLAB: prev-failure {"UNIT":"n.service","MESSAGE":"start timed out","__MONOTONIC_TIMESTAMP":"100"}"#;
        v.push((90_020.0, early.into()));
        let (rounds, reboots) = analyse(&v, &modes);
        assert_eq!(rounds[1].prev_boot_failures.len(), 1);
        let p = problems(Scenario::Clean, &modes, "6.12.1", &rounds, &reboots, true);
        assert!(p.is_empty(), "{p:?}");
        let late = r#"FKLAB: prev-failure {"UNIT":"s.service","MESSAGE":"stop failed","__MONOTONIC_TIMESTAMP":"600"}"#;
        v.push((90_030.0, late.into()));
        let (rounds, reboots) = analyse(&v, &modes);
        let p = problems(Scenario::Clean, &modes, "6.12.1", &rounds, &reboots, true);
        assert!(p.iter().any(|m| m.contains("s.service")), "{p:?}");
    }

    #[test]
    fn families_of_text_format_lines() {
        assert_eq!(family("# HELP fastkexec_x Help."), Some("fastkexec_x"));
        assert_eq!(family("# TYPE node_y gauge"), Some("node_y"));
        assert_eq!(family("fastkexec_z{phase=\"a\"} 1"), Some("fastkexec_z"));
        assert_eq!(family("go_goroutines 7"), Some("go_goroutines"));
        assert_eq!(family("# a comment"), None);
    }

    #[test]
    fn scenarios_take_only_their_modes() {
        assert_eq!(
            Scenario::ReportUnit.modes(&[]).unwrap().len(),
            4,
            "3 traced reboots, then a kexec-tools one"
        );
        assert!(Scenario::Follow.modes(&[Mode::FastkexecStaged]).is_err());
        assert!(Scenario::KexecTools
            .modes(&[Mode::KexecToolsL, Mode::KexecToolsL])
            .is_err());
        assert_eq!(
            Scenario::Clean.modes(&[Mode::FastkexecStaged]).unwrap(),
            [Mode::FastkexecStaged]
        );
        let chain = [Mode::KexecToolsL, Mode::FastkexecStaged];
        assert_eq!(Scenario::Clean.modes(&chain).unwrap(), chain);
        assert_eq!(
            Scenario::Clean.modes(&[]).unwrap(),
            [Mode::FastkexecUncompressed]
        );
    }
}
