//! What every lab boot does with QEMU the same way: the base command line and the serial
//! console's lines, each stamped when its first byte arrives.

use crate::qemucpu::CpuClock;
use anyhow::Result;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdout};
use std::sync::mpsc::{self, Receiver};
use std::thread::JoinHandle;
use std::time::Instant;

/// One serial line: host ms since `start`, QEMU's CPU ms then (when asked for), the text.
pub type Line = (f64, Option<f64>, String);

/// The arguments every lab VM starts with: no default devices, serial console on stdio, no
/// reboot (a triple fault or `reboot -f` ends the run), the kernel booted directly.
pub fn base_args(
    kernel: &Path,
    initrd: &Path,
    accel: &str,
    memory: &str,
    smp: u32,
    cmdline: &str,
) -> Vec<String> {
    let cpu = if accel == "kvm" { "host" } else { "max" };
    [
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        "stdio",
        "-accel",
        accel,
        "-cpu",
        cpu,
        "-m",
        memory,
        "-smp",
        &smp.to_string(),
        "-kernel",
        &kernel.to_string_lossy(),
        "-initrd",
        &initrd.to_string_lossy(),
        "-append",
        cmdline,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Reads QEMU's stdout on a thread of its own and sends each line, stamped on the host's
/// monotonic clock (since `start`) and, with `cpu`, on QEMU's CPU clock, when its first byte
/// arrived: a line's stamp is when the guest began to print it, not when it ended.
pub fn lines(
    mut stdout: ChildStdout,
    start: Instant,
    mut cpu: Option<CpuClock>,
) -> (Receiver<Line>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<Line>();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut cur: Vec<u8> = Vec::new();
        let mut stamp = (0.0, None);
        loop {
            let n = match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let now = (
                start.elapsed().as_secs_f64() * 1e3,
                cpu.as_mut().and_then(CpuClock::now_ms),
            );
            for &b in &buf[..n] {
                if cur.is_empty() {
                    stamp = now;
                }
                if b == b'\n' {
                    if tx.send((stamp.0, stamp.1, text(&cur))).is_err() {
                        return;
                    }
                    cur.clear();
                } else {
                    cur.push(b);
                }
            }
        }
        if !cur.is_empty() {
            let _ = tx.send((stamp.0, stamp.1, text(&cur)));
        }
    });
    (rx, reader)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches('\r')
        .to_string()
}

/// Ends a lab VM: kills QEMU unless it already exited, reaps it, joins the line reader, and
/// logs QEMU's stderr and exit status after the serial lines. Returns QEMU's stderr lines,
/// stamped when they were read, for the caller's own line list.
pub fn finish(
    mut child: Child,
    reader: JoinHandle<()>,
    exited: bool,
    start: Instant,
    log: &mut impl Write,
) -> Result<Vec<(f64, String)>> {
    if !exited {
        let _ = child.kill();
    }
    let status = child.wait()?;
    let _ = reader.join();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let now = start.elapsed().as_secs_f64() * 1e3;
    let lines: Vec<(f64, String)> = err
        .lines()
        .map(|l| (now, format!("[qemu stderr] {l}")))
        .collect();
    for (t, l) in &lines {
        writeln!(log, "{t:12.3} {l}")?;
    }
    writeln!(log, "{now:12.3} [host] qemu exited: {status}")?;
    log.flush()?;
    Ok(lines)
}
