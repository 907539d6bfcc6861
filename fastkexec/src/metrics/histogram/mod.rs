//! Reboot phase durations kept across reboots: one HdrHistogram per phase (nanoseconds, 3
//! significant digits) plus one for the whole reboot, in a state directory, each boot folded in
//! exactly once.
//!
//! HdrHistogram because its histograms add exactly (a fleet merges per-machine states without
//! losing resolution) and its V2 encoding is read by the Java, Go, Python and Rust
//! implementations alike.
//!
//! The directory holds `state.json` (replaced atomically: temp file + rename) and `lock`
//! (flock(2), held while a state is read, folded and written, so two `fastkexec report` runs
//! cannot lose each other's boot). When `report` folds a boot, a `state.json` that cannot be
//! read back is renamed to `state.json.corrupt-<unix seconds>` with a warning and the
//! histograms start again: the data stays on disk for a human, and monitoring sees
//! `fastkexec_state_corrupt_files`. Readers (`export`, `serve`) never rename or create
//! anything: they count a corrupt `state.json` where it is.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::{files::atomic_file, Error, Result};

mod dir;
mod hdr;
mod state;

pub use dir::{fold_boot, StateDir};
pub use hdr::{decode_histogram, encode_histogram};
use state::*;

/// Where `report`, `export` and `serve` keep and read the histograms unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/fastkexec";
/// The histograms, in `DEFAULT_STATE_DIR` or `--state-dir`.
pub const STATE_FILE: &str = "state.json";
/// Held with flock(2) while the state is read and replaced.
pub const LOCK_FILE: &str = "lock";
/// Mode of `state.json` and `lock`: the reboot history is for root and, through the
/// directory's group (`chgrp` it and `chmod g+s` so new files inherit the group), for an
/// unprivileged `fastkexec serve` or `export`; not for every local user.
pub const STATE_MODE: u32 = 0o640;
/// Mode of a state directory fastkexec creates: others may look up the files, whose own mode
/// decides who reads them.
pub const STATE_DIR_MODE: u32 = 0o755;
/// A corrupt `state.json` is renamed to this prefix followed by the unix time.
pub const CORRUPT_PREFIX: &str = "state.json.corrupt-";
/// Resolution of every histogram: values are exact to 1 part in 1000.
pub const SIGNIFICANT_DIGITS: u8 = 3;
/// The longest duration recorded (one day). A phase that long can only come from a broken
/// clock or a torn trace record, so `fold` refuses the boot rather than bend the histogram.
pub const MAX_DURATION_NS: u64 = 86_400 * 1_000_000_000;
/// How many boot ids are remembered to make folding idempotent. A boot can only be folded
/// while it runs (its id is the running kernel's), so the recent ones are all that matter.
pub const REMEMBERED_BOOT_IDS: usize = 1024;

/// Unit histograms kept per level (units stopping, units starting): a unit first seen when
/// this many exist is counted in `units_refused`, not given a histogram, so the `unit` label
/// of the exports never has more values than this (`report --unit-histograms N` picks at most
/// N units of each reboot, the slowest).
pub const MAX_UNIT_HISTOGRAMS: usize = 64;

const FORMAT: &str = "fastkexec-state";
const VERSION: u32 = 1;
/// Far above any real state (a few KiB per phase): a bigger file is not ours.
const MAX_STATE_BYTES: u64 = 16 << 20;
const MAX_BOOT_ID_LEN: usize = 128;
const MAX_NAME_LEN: usize = 128;

/// One phase of one reboot, as the tracer measured it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phase {
    pub name: String,
    pub duration_ns: u64,
}

impl Phase {
    pub fn new(name: impl Into<String>, duration_ns: u64) -> Phase {
        Phase {
            name: name.into(),
            duration_ns,
        }
    }
}

/// The two unit levels of a reboot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitLevel {
    /// Units stopping in the old kernel (PID 1's first signal → cgroup removed).
    Stop,
    /// Units starting in the new boot (systemd's InactiveExit → ActiveEnter).
    Start,
}

/// One unit's stop or start in one reboot (opt-in: `report --unit-histograms N`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitSample {
    pub level: UnitLevel,
    pub unit: String,
    pub duration_ns: u64,
}

/// One reboot, as the tracer hands it to `fold`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Boot {
    /// The new kernel's `/proc/sys/kernel/random/boot_id`: the key that makes folding idempotent.
    pub boot_id: String,
    /// The phases seen, in timeline order; a phase the tracer could not see is simply absent.
    pub phases: Vec<Phase>,
    /// From "reboot requested" to "new user space up".
    pub total_ns: u64,
    /// When the reboot was requested (unix time, ns).
    pub reboot_unix_ns: u64,
    /// How the kernel was loaded (e.g. `uncompressed`, `file`).
    pub mode: String,
    /// The units to fold into per-unit histograms (none unless asked for).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub units: Vec<UnitSample>,
}

/// What `fold` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fold {
    /// The boot was added to the histograms.
    Folded,
    /// The boot id was folded before: nothing changed.
    AlreadyFolded,
}

/// The histogram of one phase (or of the whole reboot) with its exact sum.
#[derive(Debug, Clone)]
pub struct PhaseHistogram {
    name: String,
    hist: Histogram<u64>,
    /// Exact, unlike a sum derived from the histogram: Prometheus' `_sum` is exact.
    sum_ns: u64,
    created_unix_ns: u64,
}

impl PhaseHistogram {
    fn new(name: &str, created_unix_ns: u64) -> Result<PhaseHistogram> {
        let hist =
            Histogram::new_with_bounds(1, MAX_DURATION_NS, SIGNIFICANT_DIGITS).map_err(|e| {
                Error::HistogramEncode {
                    what: name.to_string(),
                    problem: format!("cannot create the histogram: {e:?}"),
                }
            })?;
        Ok(PhaseHistogram {
            name: name.to_string(),
            hist,
            sum_ns: 0,
            created_unix_ns,
        })
    }

    fn record(&mut self, ns: u64) -> Result<()> {
        self.hist.record(ns).map_err(|e| Error::HistogramEncode {
            what: self.name.clone(),
            problem: format!("cannot record {ns} ns: {e:?}"),
        })?;
        self.sum_ns = self.sum_ns.saturating_add(ns);
        Ok(())
    }

    /// The phase name as the tracer spelled it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Values in nanoseconds.
    pub fn histogram(&self) -> &Histogram<u64> {
        &self.hist
    }

    /// How many reboots had this phase.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// Exact sum of the recorded durations (saturates at u64::MAX, about 584 years).
    pub fn sum_ns(&self) -> u64 {
        self.sum_ns
    }

    /// When the first value was recorded (unix time, ns).
    pub fn created_unix_ns(&self) -> u64 {
        self.created_unix_ns
    }
}

/// Every reboot folded so far: the histograms and the last reboot's own figures.
#[derive(Debug, Clone)]
pub struct State {
    created_unix_ns: u64,
    updated_unix_ns: u64,
    boots: u64,
    folded: VecDeque<String>,
    phases: Vec<PhaseHistogram>,
    total: Option<PhaseHistogram>,
    /// Per-unit histograms, at most `MAX_UNIT_HISTOGRAMS` each.
    unit_stop: Vec<PhaseHistogram>,
    unit_start: Vec<PhaseHistogram>,
    /// Unit samples not folded because their level was full.
    units_refused: u64,
    last: Option<Boot>,
    // Facts about the directory the state was read from; not stored.
    corrupt_files: usize,
    warnings: Vec<String>,
}

impl Default for State {
    fn default() -> Self {
        State::new()
    }
}

fn validate(boot: &Boot) -> Result<()> {
    let bad = |problem: String| Error::InvalidBoot {
        boot_id: boot.boot_id.clone(),
        problem,
    };
    let id = &boot.boot_id;
    if id.is_empty() || id.len() > MAX_BOOT_ID_LEN || id.chars().any(|c| c.is_control()) {
        return Err(bad(format!(
            "the boot id must be 1..={MAX_BOOT_ID_LEN} printable characters \
             (/proc/sys/kernel/random/boot_id of the new kernel)"
        )));
    }
    let mut seen: Vec<&str> = Vec::with_capacity(boot.phases.len());
    for p in &boot.phases {
        if p.name.is_empty() || p.name.len() > MAX_NAME_LEN || p.name.chars().any(char::is_control)
        {
            return Err(bad(format!(
                "phase name {:?} must be 1..={MAX_NAME_LEN} printable characters",
                p.name
            )));
        }
        if seen.contains(&p.name.as_str()) {
            return Err(bad(format!("phase {:?} appears twice", p.name)));
        }
        seen.push(&p.name);
        if p.duration_ns > MAX_DURATION_NS {
            return Err(bad(format!(
                "phase {:?} lasted {} ns, more than a day: a broken clock or a torn record",
                p.name, p.duration_ns
            )));
        }
    }
    let mut seen: Vec<(UnitLevel, &str)> = Vec::with_capacity(boot.units.len());
    for u in &boot.units {
        if u.unit.is_empty() || u.unit.len() > MAX_NAME_LEN || u.unit.chars().any(char::is_control)
        {
            return Err(bad(format!(
                "unit name {:?} must be 1..={MAX_NAME_LEN} printable characters",
                u.unit
            )));
        }
        if seen.contains(&(u.level, u.unit.as_str())) {
            return Err(bad(format!("unit {:?} appears twice", u.unit)));
        }
        seen.push((u.level, &u.unit));
        if u.duration_ns > MAX_DURATION_NS {
            return Err(bad(format!(
                "unit {:?} took {} ns, more than a day: a broken clock",
                u.unit, u.duration_ns
            )));
        }
    }
    if boot.total_ns > MAX_DURATION_NS {
        return Err(bad(format!(
            "total_ns {} is more than a day: a broken clock or a torn record",
            boot.total_ns
        )));
    }
    if boot.mode.len() > MAX_NAME_LEN || boot.mode.chars().any(char::is_control) {
        return Err(bad(format!(
            "mode {:?} is not a short printable word",
            boot.mode
        )));
    }
    Ok(())
}

fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
