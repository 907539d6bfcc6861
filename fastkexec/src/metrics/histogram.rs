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

impl State {
    /// An empty state, created now.
    pub fn new() -> State {
        let now = now_unix_ns();
        State {
            created_unix_ns: now,
            updated_unix_ns: now,
            boots: 0,
            folded: VecDeque::new(),
            phases: Vec::new(),
            total: None,
            last: None,
            corrupt_files: 0,
            warnings: Vec::new(),
        }
    }

    /// Reads the state in `dir` for a command that only reads (`export`, `serve`): under its
    /// lock when the lock file exists and can be opened, so never half way through another
    /// run's update. A missing directory or file is an empty state. Nothing in `dir` is
    /// created, renamed or removed: a corrupt file is left in place, counted in
    /// `corrupt_files` and reported in `warnings`.
    pub fn open(dir: &Path) -> Result<State> {
        if !dir.exists() {
            log::info!(
                "{}: no such directory: no reboot has been folded there yet",
                dir.display()
            );
            return Ok(State::new());
        }
        StateDir::open_existing(dir)?.read()
    }

    /// Adds one reboot: each phase's duration to that phase's histogram, `total_ns` to the
    /// whole-reboot histogram. A boot id seen before changes nothing. The boot is checked first
    /// and refused whole: a state never holds half a boot.
    pub fn fold(&mut self, boot: &Boot) -> Result<Fold> {
        validate(boot)?;
        if self.folded.iter().any(|id| id == &boot.boot_id) {
            return Ok(Fold::AlreadyFolded);
        }
        let now = now_unix_ns();
        for p in &boot.phases {
            let i = match self.phases.iter().position(|h| h.name == p.name) {
                Some(i) => i,
                None => {
                    self.phases.push(PhaseHistogram::new(&p.name, now)?);
                    self.phases.len() - 1
                }
            };
            if let Some(h) = self.phases.get_mut(i) {
                h.record(p.duration_ns)?;
            }
        }
        let total = match &mut self.total {
            Some(t) => t,
            None => self.total.insert(PhaseHistogram::new("total", now)?),
        };
        total.record(boot.total_ns)?;
        self.boots = self.boots.saturating_add(1);
        self.folded.push_back(boot.boot_id.clone());
        while self.folded.len() > REMEMBERED_BOOT_IDS {
            self.folded.pop_front();
        }
        self.last = Some(boot.clone());
        self.updated_unix_ns = now;
        Ok(Fold::Folded)
    }

    /// Reboots folded in.
    pub fn boots(&self) -> u64 {
        self.boots
    }

    /// One histogram per phase, in the order the phases were first seen (timeline order).
    pub fn phases(&self) -> &[PhaseHistogram] {
        &self.phases
    }

    /// The phase called `name`.
    pub fn phase(&self, name: &str) -> Option<&PhaseHistogram> {
        self.phases.iter().find(|p| p.name == name)
    }

    /// The whole-reboot histogram (`total_ns` of every boot); None before the first fold.
    pub fn total(&self) -> Option<&PhaseHistogram> {
        self.total.as_ref()
    }

    /// The last boot folded in, as it was given.
    pub fn last(&self) -> Option<&Boot> {
        self.last.as_ref()
    }

    /// Whether `boot_id` was folded in (among the last `REMEMBERED_BOOT_IDS`).
    pub fn contains(&self, boot_id: &str) -> bool {
        self.folded.iter().any(|id| id == boot_id)
    }

    pub fn created_unix_ns(&self) -> u64 {
        self.created_unix_ns
    }

    pub fn updated_unix_ns(&self) -> u64 {
        self.updated_unix_ns
    }

    /// `state.json.corrupt-*` files in the directory the state was read from.
    pub fn corrupt_files(&self) -> usize {
        self.corrupt_files
    }

    /// What went wrong while reading the state (a corrupt file moved aside), already logged.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The state as stored in `state.json`.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        let file = StateFile {
            format: FORMAT.to_string(),
            version: VERSION,
            significant_digits: SIGNIFICANT_DIGITS,
            created_unix_ns: self.created_unix_ns,
            updated_unix_ns: self.updated_unix_ns,
            boots: self.boots,
            folded_boot_ids: self.folded.iter().cloned().collect(),
            total: self.total.as_ref().map(HistFile::encode).transpose()?,
            phases: self
                .phases
                .iter()
                .map(HistFile::encode)
                .collect::<Result<_>>()?,
            last: self.last.clone(),
        };
        let mut out = serde_json::to_vec_pretty(&file).map_err(|e| Error::HistogramEncode {
            what: "the state".into(),
            problem: e.to_string(),
        })?;
        out.push(b'\n');
        Ok(out)
    }

    /// Parses the contents of a `state.json` as [`StateDir::read`] does, without touching any
    /// file; `Err` says why the bytes are not a state this fastkexec can use. Pure (the fuzz
    /// target `histogram_state` drives it).
    pub fn parse(bytes: &[u8]) -> std::result::Result<State, String> {
        State::from_json(bytes).map_err(|d| match d {
            Decode::Corrupt(problem) => problem,
            Decode::Newer(v) => {
                format!("state format version {v}, this fastkexec reads {VERSION}")
            }
        })
    }

    /// Parses what `to_json` wrote; `Err` says why the bytes are not a usable state.
    fn from_json(bytes: &[u8]) -> std::result::Result<State, Decode> {
        #[derive(Deserialize)]
        struct Header {
            format: Option<String>,
            version: Option<u32>,
        }
        let header: Header =
            serde_json::from_slice(bytes).map_err(|e| Decode::Corrupt(format!("not JSON: {e}")))?;
        if header.format.as_deref() != Some(FORMAT) {
            return Err(Decode::Corrupt(format!(
                "\"format\" is {:?}, not {FORMAT:?}",
                header.format
            )));
        }
        match header.version {
            Some(VERSION) => {}
            Some(v) if v > VERSION => return Err(Decode::Newer(v)),
            v => return Err(Decode::Corrupt(format!("unknown \"version\" {v:?}"))),
        }
        let file: StateFile = serde_json::from_slice(bytes)
            .map_err(|e| Decode::Corrupt(format!("bad field: {e}")))?;
        if file.significant_digits != SIGNIFICANT_DIGITS {
            return Err(Decode::Corrupt(format!(
                "\"significant_digits\" is {}, not {SIGNIFICANT_DIGITS}",
                file.significant_digits
            )));
        }
        let total = file.total.as_ref().map(HistFile::decode).transpose()?;
        let mut phases: Vec<PhaseHistogram> = Vec::with_capacity(file.phases.len());
        for f in &file.phases {
            let h = f.decode()?;
            if phases.iter().any(|p| p.name == h.name) {
                return Err(Decode::Corrupt(format!("phase {:?} twice", h.name)));
            }
            if h.count() == 0 || h.count() > file.boots {
                return Err(Decode::Corrupt(format!(
                    "phase {:?} holds {} values but {} boots were folded",
                    h.name,
                    h.count(),
                    file.boots
                )));
            }
            phases.push(h);
        }
        let phases = canonical_names(phases, file.boots)?;
        let mut last = file.last;
        if let Some(l) = &mut last {
            for p in &mut l.phases {
                if let Some(id) = crate::record::phases::canonical_id(&p.name) {
                    p.name = id.to_string();
                }
            }
        }
        let total_count = total.as_ref().map_or(0, PhaseHistogram::count);
        if total_count != file.boots {
            return Err(Decode::Corrupt(format!(
                "the total histogram holds {total_count} values but \"boots\" is {}",
                file.boots
            )));
        }
        if last.is_some() != (file.boots > 0)
            || file.folded_boot_ids.is_empty() != (file.boots == 0)
            || file.folded_boot_ids.len() > REMEMBERED_BOOT_IDS
        {
            return Err(Decode::Corrupt(format!(
                "\"last\", \"folded_boot_ids\" ({} ids) and \"boots\" ({}) disagree",
                file.folded_boot_ids.len(),
                file.boots
            )));
        }
        if let Some(last) = &last {
            validate(last).map_err(|e| Decode::Corrupt(format!("\"last\": {e}")))?;
        }
        Ok(State {
            created_unix_ns: file.created_unix_ns,
            updated_unix_ns: file.updated_unix_ns,
            boots: file.boots,
            folded: file.folded_boot_ids.into(),
            phases,
            total,
            last,
            corrupt_files: 0,
            warnings: Vec::new(),
        })
    }
}

/// The histograms of a state under their phases' machine names: earlier fastkexec builds
/// stored the names the text report shows (`"kernel early boot"`), this one stores
/// `kernel_early_boot` ([`crate::record::phases::PhaseDef::id`]). A state folded by both holds two
/// histograms of one phase: they are added (their boots are distinct, so the count stays at
/// most `boots`), keeping the older creation time. Names of no known phase stay as they are.
fn canonical_names(
    phases: Vec<PhaseHistogram>,
    boots: u64,
) -> std::result::Result<Vec<PhaseHistogram>, Decode> {
    let mut out: Vec<PhaseHistogram> = Vec::with_capacity(phases.len());
    for mut h in phases {
        if let Some(id) = crate::record::phases::canonical_id(&h.name) {
            h.name = id.to_string();
        }
        match out.iter_mut().find(|o| o.name == h.name) {
            None => out.push(h),
            Some(o) => {
                o.hist.add(&h.hist).map_err(|e| {
                    Decode::Corrupt(format!("histograms of phase {:?}: {e:?}", h.name))
                })?;
                o.sum_ns = o.sum_ns.saturating_add(h.sum_ns);
                o.created_unix_ns = o.created_unix_ns.min(h.created_unix_ns);
                if o.count() > boots {
                    return Err(Decode::Corrupt(format!(
                        "phase {:?} holds {} values under its two names but {boots} boots \
                         were folded",
                        o.name,
                        o.count()
                    )));
                }
            }
        }
    }
    Ok(out)
}

/// Locks the state in `dir`, folds `boot` in and writes the state back if it changed: what
/// `fastkexec report` calls. Returns what happened and the state after it.
pub fn fold_boot(dir: &Path, boot: &Boot) -> Result<(Fold, State)> {
    let sd = StateDir::lock(dir)?;
    let mut state = sd.load()?;
    let outcome = state.fold(boot)?;
    if outcome == Fold::Folded {
        sd.save(&state)?;
    }
    Ok((outcome, state))
}

/// A state directory, locked (exclusively, with flock(2)) for as long as this value lives.
#[derive(Debug)]
pub struct StateDir {
    dir: PathBuf,
    /// None only for a reader that may neither create nor open the lock file: it still reads
    /// a consistent file, because every writer replaces it with one rename.
    _lock: Option<File>,
}

impl StateDir {
    /// Creates `dir` if needed and waits for its lock: for a read-modify-write of the state.
    pub fn lock(dir: &Path) -> Result<StateDir> {
        create_state_dir(dir)?;
        let path = dir.join(LOCK_FILE);
        let f = open_lock_file(&path).map_err(|e| Error::io(&path, e))?;
        f.lock().map_err(|e| Error::io(&path, e))?;
        Ok(StateDir {
            dir: dir.to_path_buf(),
            _lock: Some(f),
        })
    }

    /// Like `lock`, but returns None at once when another process holds the lock.
    pub fn try_lock(dir: &Path) -> Result<Option<StateDir>> {
        create_state_dir(dir)?;
        let path = dir.join(LOCK_FILE);
        let f = open_lock_file(&path).map_err(|e| Error::io(&path, e))?;
        match f.try_lock() {
            Ok(()) => Ok(Some(StateDir {
                dir: dir.to_path_buf(),
                _lock: Some(f),
            })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
        }
    }

    /// For readers (`export`, `serve`): the lock if the file exists and can be opened (read
    /// access is enough for flock); a reader never creates it.
    fn open_existing(dir: &Path) -> Result<StateDir> {
        let path = dir.join(LOCK_FILE);
        let f = match open_existing_lock_file(&path) {
            Ok(f) => Some(f),
            Err(e)
                if e.kind() == ErrorKind::PermissionDenied || e.kind() == ErrorKind::NotFound =>
            {
                log::debug!(
                    "{}: {e}: reading the state without the lock",
                    path.display()
                );
                None
            }
            Err(e) => return Err(Error::io(&path, e)),
        };
        if let Some(f) = &f {
            f.lock().map_err(|e| Error::io(&path, e))?;
        }
        Ok(StateDir {
            dir: dir.to_path_buf(),
            _lock: f,
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Reads `state.json` for a read-modify-write (under the lock `lock` took): an empty state
    /// when there is none; a corrupt one is renamed to `state.json.corrupt-<unix seconds>` with
    /// a warning and an empty state returned, so the next save starts new histograms without
    /// destroying the evidence. A state written by a newer fastkexec is an error and is left
    /// alone.
    pub fn load(&self) -> Result<State> {
        let path = self.dir.join(STATE_FILE);
        let mut state = match self.decode()? {
            Ok(s) => s,
            Err(problem) => {
                let aside = self.move_aside(&path)?;
                let msg = format!(
                    "{}: corrupt ({problem}); moved to {} and starting new histograms",
                    path.display(),
                    aside.display()
                );
                log::warn!("{msg}");
                let mut s = State::new();
                s.warnings.push(msg);
                s
            }
        };
        state.corrupt_files = self.count_corrupt_files();
        Ok(state)
    }

    /// Reads `state.json` without changing anything: a corrupt one is reported (a warning, and
    /// counted in `corrupt_files` with the files already moved aside) and an empty state
    /// returned. For commands that only read.
    pub fn read(&self) -> Result<State> {
        let path = self.dir.join(STATE_FILE);
        let (mut state, live_corrupt) = match self.decode()? {
            Ok(s) => (s, 0),
            Err(problem) => {
                let msg = format!(
                    "{}: corrupt ({problem}); left in place (this command only reads): the \
                     next `fastkexec report` that folds a boot moves it aside, or move it away \
                     by hand",
                    path.display()
                );
                log::warn!("{msg}");
                let mut s = State::new();
                s.warnings.push(msg);
                (s, 1)
            }
        };
        state.corrupt_files = self.count_corrupt_files() + live_corrupt;
        Ok(state)
    }

    /// The state, or why it is corrupt; a newer format or an unreadable file is an error.
    fn decode(&self) -> Result<std::result::Result<State, String>> {
        let path = self.dir.join(STATE_FILE);
        let decoded = match read_limited(&path) {
            Ok(Some(bytes)) => State::from_json(&bytes),
            Ok(None) => Err(Decode::Corrupt(format!(
                "larger than {MAX_STATE_BYTES} bytes"
            ))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(State::new()),
            Err(e) => return Err(Error::io(&path, e)),
        };
        match decoded {
            Ok(s) => Ok(Ok(s)),
            Err(Decode::Newer(v)) => Err(Error::StateFile {
                path,
                problem: format!(
                    "written by a newer fastkexec (state format version {v}, this one \
                     reads {VERSION}); upgrade fastkexec or use another --state-dir"
                ),
            }),
            Err(Decode::Corrupt(problem)) => Ok(Err(problem)),
        }
    }

    /// Replaces `state.json` atomically.
    pub fn save(&self, state: &State) -> Result<()> {
        atomic_file::write(&self.dir.join(STATE_FILE), &state.to_json()?, STATE_MODE)
    }

    fn move_aside(&self, path: &Path) -> Result<PathBuf> {
        let secs = now_unix_ns() / 1_000_000_000;
        let base = format!("{CORRUPT_PREFIX}{secs}");
        let mut aside = self.dir.join(&base);
        let mut n = 1u32;
        // Never clobber an earlier corrupt file: each one is evidence.
        while aside.exists() {
            aside = self.dir.join(format!("{base}-{n}"));
            n = n.saturating_add(1);
        }
        fs::rename(path, &aside).map_err(|e| Error::StateFile {
            path: path.to_path_buf(),
            problem: format!(
                "corrupt, and cannot be moved aside to {}: {e}; move it away by hand",
                aside.display()
            ),
        })?;
        atomic_file::sync_dir(&self.dir)?;
        Ok(aside)
    }

    fn count_corrupt_files(&self) -> usize {
        match fs::read_dir(&self.dir) {
            Ok(entries) => entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(CORRUPT_PREFIX))
                .count(),
            Err(e) => {
                log::debug!("{}: {e}", self.dir.display());
                0
            }
        }
    }
}

/// The V2 deflate encoding of `h`, base64: the form every HdrHistogram implementation reads
/// (interval logs, `HdrHistogram.decode` in Python, `Histogram.decodeFromCompressedByteBuffer`).
pub fn encode_histogram(h: &Histogram<u64>, what: &str) -> Result<String> {
    let mut buf = Vec::new();
    V2DeflateSerializer::new()
        .serialize(h, &mut buf)
        .map_err(|e| Error::HistogramEncode {
            what: what.to_string(),
            problem: format!("{e:?}"),
        })?;
    Ok(BASE64.encode(buf))
}

/// Reverses `encode_histogram` for histograms of our shape (1 ns..=`MAX_DURATION_NS`, 3 digits).
///
/// The headers are checked before the histogram is built, with every size bounded: a damaged
/// length or range must not make the decoder allocate gigabytes.
pub fn decode_histogram(b64: &str) -> std::result::Result<Histogram<u64>, String> {
    const COMPRESSED_COOKIE: u32 = 0x1c84_9314;
    const COOKIE: u32 = 0x1c84_9313;
    const HEADER: usize = 40;
    // Our ~38k buckets take at most 9 bytes each as varints.
    const MAX_INNER: u64 = 1 << 20;
    let be32 = |b: &[u8], at: usize| -> Option<u32> {
        let s = b.get(at..at.checked_add(4)?)?;
        Some(u32::from_be_bytes(s.try_into().ok()?))
    };
    let be64 = |b: &[u8], at: usize| -> Option<u64> {
        let s = b.get(at..at.checked_add(8)?)?;
        Some(u64::from_be_bytes(s.try_into().ok()?))
    };
    let bytes = BASE64
        .decode(b64.as_bytes())
        .map_err(|e| format!("not base64: {e}"))?;
    if be32(&bytes, 0) != Some(COMPRESSED_COOKIE) {
        return Err("not a V2 compressed HdrHistogram (cookie)".into());
    }
    let len = be32(&bytes, 4).ok_or("truncated header")? as usize;
    let deflated = bytes
        .get(8..8usize.saturating_add(len))
        .ok_or("shorter than its length field")?;
    let mut inner = Vec::new();
    flate2::read::ZlibDecoder::new(deflated)
        .take(MAX_INNER + 1)
        .read_to_end(&mut inner)
        .map_err(|e| format!("bad zlib stream: {e}"))?;
    if inner.len() as u64 > MAX_INNER {
        return Err(format!("decompresses to more than {MAX_INNER} bytes"));
    }
    let payload = be32(&inner, 4).ok_or("truncated V2 header")? as usize;
    let digits = be32(&inner, 12).ok_or("truncated V2 header")?;
    let low = be64(&inner, 16).ok_or("truncated V2 header")?;
    let high = be64(&inner, 24).ok_or("truncated V2 header")?;
    if be32(&inner, 0) != Some(COOKIE) || HEADER.checked_add(payload) != Some(inner.len()) {
        return Err("inner V2 header damaged (cookie or payload length)".into());
    }
    if digits != u32::from(SIGNIFICANT_DIGITS)
        || low != 1
        || !(MAX_DURATION_NS..=MAX_DURATION_NS.saturating_mul(2)).contains(&high)
    {
        return Err(format!(
            "range 1..={MAX_DURATION_NS} ns at {SIGNIFICANT_DIGITS} digits expected, found \
             {low}..={high} at {digits}"
        ));
    }
    Deserializer::new()
        .deserialize(&mut inner.as_slice())
        .map_err(|e| format!("not a V2 HdrHistogram: {e:?}"))
}

enum Decode {
    Corrupt(String),
    Newer(u32),
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    format: String,
    version: u32,
    significant_digits: u8,
    created_unix_ns: u64,
    updated_unix_ns: u64,
    boots: u64,
    folded_boot_ids: Vec<String>,
    total: Option<HistFile>,
    phases: Vec<HistFile>,
    last: Option<Boot>,
}

#[derive(Serialize, Deserialize)]
struct HistFile {
    name: String,
    sum_ns: u64,
    created_unix_ns: u64,
    /// `encode_histogram`.
    hdr: String,
}

impl HistFile {
    fn encode(h: &PhaseHistogram) -> Result<HistFile> {
        Ok(HistFile {
            name: h.name.clone(),
            sum_ns: h.sum_ns,
            created_unix_ns: h.created_unix_ns,
            hdr: encode_histogram(&h.hist, &h.name)?,
        })
    }

    fn decode(&self) -> std::result::Result<PhaseHistogram, Decode> {
        let bad = |what: String| Decode::Corrupt(format!("histogram {:?}: {what}", self.name));
        if self.name.is_empty() || self.name.len() > MAX_NAME_LEN {
            return Err(bad("bad name".into()));
        }
        let hist = decode_histogram(&self.hdr).map_err(bad)?;
        // The exact sum must fall inside what the buckets allow.
        let n = u128::from(hist.len());
        let lo = n * u128::from(hist.lowest_equivalent(hist.min()));
        let hi = n * u128::from(hist.highest_equivalent(hist.max()));
        let sum = u128::from(self.sum_ns);
        if n > 0 && self.sum_ns != u64::MAX && (sum < lo || sum > hi) {
            return Err(bad(format!(
                "sum_ns {} outside what its {n} values allow ({lo}..={hi})",
                self.sum_ns
            )));
        }
        Ok(PhaseHistogram {
            name: self.name.clone(),
            hist,
            sum_ns: self.sum_ns,
            created_unix_ns: self.created_unix_ns,
        })
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

/// Creates a missing state directory with `STATE_DIR_MODE` (not whatever the umask makes of
/// it: under umask 0 it would be writable by everyone, and `atomic_file` then refuses it).
fn create_state_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(STATE_DIR_MODE)
        .create(dir)
        .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(STATE_DIR_MODE)))
        .map_err(|e| Error::io(dir, e))
}

fn open_lock_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    // O_NOFOLLOW: a link planted at `lock` must not make root create or open another file.
    match OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(STATE_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        // Created now: its mode is ours to set, whatever the umask made of it.
        Ok(f) => f
            .set_permissions(fs::Permissions::from_mode(STATE_MODE))
            .map(|()| f),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => open_existing_lock_file(path),
        Err(e) => Err(e),
    }
}

fn open_existing_lock_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        // flock(2) works on a read-only descriptor too: enough for a reader without write access.
        Err(e) if e.kind() == ErrorKind::PermissionDenied => OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path),
        r => r,
    }
}

/// The file's bytes, or None when it is larger than `MAX_STATE_BYTES`.
fn read_limited(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let f = File::open(path)?;
    let mut buf = Vec::new();
    f.take(MAX_STATE_BYTES + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_STATE_BYTES {
        return Ok(None);
    }
    Ok(Some(buf))
}

fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn boot(id: &str, scale: u64) -> Boot {
        Boot {
            boot_id: id.to_string(),
            phases: vec![
                Phase::new("device_shutdown", 6_000_000 * scale),
                Phase::new("purgatory", 40_000 * scale),
                Phase::new("kernel init", 900_000_000 * scale),
            ],
            total_ns: 2_000_000_000 * scale,
            reboot_unix_ns: 1_700_000_000_000_000_000 + scale,
            mode: "uncompressed".into(),
        }
    }

    #[test]
    fn each_boot_is_folded_once_and_refolding_changes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let (f, st) = fold_boot(d.path(), &boot("a", 1)).unwrap();
        assert_eq!(f, Fold::Folded);
        assert_eq!(st.boots(), 1);
        let before = fs::read(d.path().join(STATE_FILE)).unwrap();
        let (f, st) = fold_boot(d.path(), &boot("a", 2)).unwrap();
        assert_eq!(f, Fold::AlreadyFolded);
        assert_eq!(st.boots(), 1);
        assert_eq!(
            fs::read(d.path().join(STATE_FILE)).unwrap(),
            before,
            "a re-fold rewrote the state"
        );
        let (f, st) = fold_boot(d.path(), &boot("b", 2)).unwrap();
        assert_eq!(f, Fold::Folded);
        assert_eq!(st.boots(), 2);
        let reread = State::open(d.path()).unwrap();
        for name in ["device_shutdown", "purgatory", "kernel init"] {
            let p = reread.phase(name).unwrap();
            assert_eq!(p.count(), 2, "{name}");
        }
        let ds = reread.phase("device_shutdown").unwrap();
        assert_eq!(ds.sum_ns(), 18_000_000);
        assert_eq!(reread.total().unwrap().count(), 2);
        assert_eq!(reread.total().unwrap().sum_ns(), 6_000_000_000);
        assert_eq!(reread.last().unwrap().boot_id, "b");
        assert!(reread.contains("a") && reread.contains("b") && !reread.contains("c"));
        let names: Vec<_> = reread.phases().iter().map(|p| p.name()).collect();
        assert_eq!(names, ["device_shutdown", "purgatory", "kernel init"]);
        assert!(reread.warnings().is_empty());
        assert_eq!(reread.corrupt_files(), 0);
    }

    #[test]
    fn values_keep_three_significant_digits_across_a_save() {
        let d = tempfile::tempdir().unwrap();
        let mut st = State::new();
        let values = [1u64, 999, 123_456_789, 5_000_000_000, MAX_DURATION_NS];
        for (i, v) in values.iter().enumerate() {
            let b = Boot {
                boot_id: format!("id{i}"),
                phases: vec![Phase::new("p", *v)],
                total_ns: *v,
                reboot_unix_ns: 0,
                mode: String::new(),
            };
            st.fold(&b).unwrap();
        }
        StateDir::lock(d.path()).unwrap().save(&st).unwrap();
        let st = State::open(d.path()).unwrap();
        let h = st.phase("p").unwrap().histogram();
        assert_eq!(h.len(), values.len() as u64);
        for v in values {
            let got = h.highest_equivalent(v);
            assert!(
                got >= v && (got - v) as f64 <= v as f64 / 1000.0,
                "{v} -> {got}"
            );
            assert_eq!(h.count_at(v), 1);
        }
        assert_eq!(st.phase("p").unwrap().sum_ns(), values.iter().sum::<u64>());
    }

    #[test]
    fn names_an_earlier_build_stored_read_back_as_machine_names_and_merge() {
        // Boot "a" as earlier builds folded it (the text report's names), boot "b" as this
        // one does: one state holding both spellings of two phases.
        let mut st = State::new();
        let legacy = Boot {
            phases: vec![
                Phase::new("kernel early boot", 1_500_000),
                Phase::new("device shutdown", 6_000_000),
                Phase::new("kernel init", 7),
            ],
            ..boot("a", 1)
        };
        let current = Boot {
            phases: vec![
                Phase::new("device_shutdown", 9_000_000),
                Phase::new("kernel_early_boot", 2_500_000),
            ],
            ..boot("b", 1)
        };
        st.fold(&legacy).unwrap();
        st.fold(&current).unwrap();
        assert_eq!(st.phases().len(), 5);
        let back = State::from_json(&st.to_json().unwrap()).ok().unwrap();
        let names: Vec<&str> = back.phases().iter().map(|p| p.name()).collect();
        assert_eq!(
            names,
            ["kernel_early_boot", "device_shutdown", "kernel init"]
        );
        let early = back.phase("kernel_early_boot").unwrap();
        assert_eq!((early.count(), early.sum_ns()), (2, 4_000_000));
        assert_eq!(
            early.histogram().max(),
            early.histogram().highest_equivalent(2_500_000)
        );
        let ds = back.phase("device_shutdown").unwrap();
        assert_eq!((ds.count(), ds.sum_ns()), (2, 15_000_000));
        assert_eq!(back.phase("kernel init").unwrap().count(), 1);
        assert_eq!(back.boots(), 2);
        // The last boot's figures are renamed too.
        let legacy_last = State::from_json(&{
            let mut one = State::new();
            one.fold(&legacy).unwrap();
            one.to_json().unwrap()
        })
        .ok()
        .unwrap();
        let last: Vec<&str> = legacy_last
            .last()
            .unwrap()
            .phases
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(
            last,
            ["kernel_early_boot", "device_shutdown", "kernel init"]
        );
    }

    #[test]
    fn a_phase_missing_from_a_boot_keeps_its_count() {
        let mut st = State::new();
        st.fold(&boot("a", 1)).unwrap();
        let mut b = boot("b", 1);
        b.phases.retain(|p| p.name != "purgatory");
        st.fold(&b).unwrap();
        assert_eq!(st.phase("purgatory").unwrap().count(), 1);
        assert_eq!(st.phase("device_shutdown").unwrap().count(), 2);
        assert_eq!(st.boots(), 2);
    }

    #[test]
    fn bad_boots_are_refused_whole() {
        let mut st = State::new();
        let cases: Vec<(Boot, &str)> = vec![
            (boot("", 1), "boot id"),
            (boot("a\nb", 1), "boot id"),
            (boot(&"x".repeat(200), 1), "boot id"),
            (
                Boot {
                    phases: vec![Phase::new("p", 1), Phase::new("p", 2)],
                    ..boot("a", 1)
                },
                "twice",
            ),
            (
                Boot {
                    phases: vec![Phase::new("ok", 1), Phase::new("", 2)],
                    ..boot("a", 1)
                },
                "phase name",
            ),
            (
                Boot {
                    phases: vec![Phase::new("ok", 1), Phase::new("p", MAX_DURATION_NS + 1)],
                    ..boot("a", 1)
                },
                "more than a day",
            ),
            (
                Boot {
                    total_ns: u64::MAX,
                    ..boot("a", 1)
                },
                "total_ns",
            ),
            (
                Boot {
                    mode: "a\u{7}".into(),
                    ..boot("a", 1)
                },
                "mode",
            ),
        ];
        for (b, want) in cases {
            let err = st.fold(&b).unwrap_err().to_string();
            assert!(err.contains(want), "{err} lacks {want}");
        }
        assert_eq!(st.boots(), 0);
        assert!(st.phases().is_empty() && st.total().is_none() && st.last().is_none());
    }

    #[test]
    fn an_empty_or_missing_state_is_empty() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("nope");
        let st = State::open(&missing).unwrap();
        assert_eq!(st.boots(), 0);
        assert!(!missing.exists(), "a reader created the state directory");
        let st = State::open(d.path()).unwrap();
        assert!(st.phases().is_empty() && st.total().is_none() && st.last().is_none());
        // An empty state survives a save and a load.
        let sd = StateDir::lock(d.path()).unwrap();
        sd.save(&st).unwrap();
        let again = sd.load().unwrap();
        assert_eq!(again.boots(), 0);
        assert!(again.warnings().is_empty());
    }

    fn corrupt_cases() -> Vec<(&'static str, Vec<u8>)> {
        let mut st = State::new();
        st.fold(&boot("a", 1)).unwrap();
        st.fold(&boot("b", 3)).unwrap();
        let good = String::from_utf8(st.to_json().unwrap()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&good).unwrap();
        let with = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v = v.clone();
            f(&mut v);
            serde_json::to_vec(&v).unwrap()
        };
        vec![
            ("empty file", vec![]),
            ("truncated", good.as_bytes()[..good.len() / 2].to_vec()),
            ("garbage", b"\x00\xffnot json".to_vec()),
            ("other format", with(&|v| v["format"] = "x".into())),
            (
                "no version",
                with(&|v| v["version"] = serde_json::Value::Null),
            ),
            ("boots mismatch", with(&|v| v["boots"] = 5.into())),
            (
                "bad base64",
                with(&|v| v["phases"][0]["hdr"] = "!!!!".into()),
            ),
            (
                "not a histogram",
                with(&|v| v["phases"][0]["hdr"] = "AAAAAAAA".into()),
            ),
            (
                "duplicate phase",
                with(&|v| v["phases"][1]["name"] = v["phases"][0]["name"].clone()),
            ),
            ("sum off", with(&|v| v["phases"][0]["sum_ns"] = 1.into())),
            (
                "forgotten ids",
                with(&|v| v["folded_boot_ids"] = serde_json::json!([])),
            ),
            ("digits", with(&|v| v["significant_digits"] = 2.into())),
        ]
    }

    #[test]
    fn a_corrupt_state_is_moved_aside_with_a_warning_never_reset_silently() {
        for (what, bytes) in corrupt_cases() {
            let d = tempfile::tempdir().unwrap();
            let state = d.path().join(STATE_FILE);
            fs::write(&state, &bytes).unwrap();
            let (f, st) = fold_boot(d.path(), &boot("new", 1)).unwrap();
            assert_eq!(f, Fold::Folded, "{what}");
            assert_eq!(st.boots(), 1, "{what}");
            assert_eq!(st.warnings().len(), 1, "{what}");
            assert!(st.warnings()[0].contains("corrupt"), "{what}");
            assert_eq!(st.corrupt_files(), 1, "{what}");
            let aside: Vec<PathBuf> = fs::read_dir(d.path())
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| {
                    p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with(CORRUPT_PREFIX)
                })
                .collect();
            assert_eq!(aside.len(), 1, "{what}");
            assert_eq!(fs::read(&aside[0]).unwrap(), bytes, "{what}: evidence lost");
            assert!(
                st.warnings()[0].contains(&*aside[0].to_string_lossy()),
                "{what}"
            );
            // The next reader sees the new state and still counts the evidence.
            let st = State::open(d.path()).unwrap();
            assert_eq!(st.boots(), 1, "{what}");
            assert!(st.warnings().is_empty(), "{what}");
            assert_eq!(st.corrupt_files(), 1, "{what}");
        }
    }

    /// Every name in `dir` with its content (directories as None).
    fn listing(dir: &Path) -> Vec<(std::ffi::OsString, Option<Vec<u8>>)> {
        let mut v: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name(), fs::read(e.path()).ok())
            })
            .collect();
        v.sort();
        v
    }

    /// `export` and `serve` read through `State::open`: a corrupt state is reported and counted,
    /// and nothing in the directory is renamed or created.
    #[test]
    fn the_read_only_open_leaves_a_corrupt_state_in_place_and_counts_it() {
        for (what, bytes) in corrupt_cases() {
            let d = tempfile::tempdir().unwrap();
            fs::write(d.path().join(STATE_FILE), &bytes).unwrap();
            fs::write(d.path().join(format!("{CORRUPT_PREFIX}1")), b"older").unwrap();
            let before = listing(d.path());
            let st = State::open(d.path()).unwrap();
            assert_eq!(listing(d.path()), before, "{what}: the directory changed");
            assert_eq!(st.corrupt_files(), 2, "{what}");
            assert_eq!(st.boots(), 0, "{what}");
            assert!(
                st.warnings()[0].contains("corrupt") && st.warnings()[0].contains("left"),
                "{what}: {:?}",
                st.warnings()
            );
            let text =
                crate::metrics::export::render(crate::metrics::export::Format::Prometheus, &st)
                    .unwrap();
            assert!(
                text.contains("\nfastkexec_state_corrupt_files 2\n"),
                "{what}: {text}"
            );
        }
    }

    #[test]
    fn a_second_corruption_does_not_clobber_the_first() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..3 {
            fs::write(d.path().join(STATE_FILE), format!("junk {i}")).unwrap();
            let st = StateDir::lock(d.path()).unwrap().load().unwrap();
            assert_eq!(st.corrupt_files(), i + 1);
        }
    }

    #[test]
    fn flipping_any_byte_of_the_state_never_panics() {
        let mut st = State::new();
        st.fold(&boot("a", 1)).unwrap();
        let good = st.to_json().unwrap();
        let d = tempfile::tempdir().unwrap();
        let sd = StateDir::lock(d.path()).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x41;
            fs::write(d.path().join(STATE_FILE), &bad).unwrap();
            // Either it still parses (a flip inside a string) or it is moved aside.
            let st = sd.load().unwrap();
            assert!(st.boots() <= 1);
        }
    }

    #[test]
    fn damaged_histogram_bytes_are_refused_without_panicking() {
        use hdrhistogram::serialization::V2Serializer;
        use std::io::Write as _;
        let mut h = PhaseHistogram::new("p", 0).unwrap();
        for v in [1, 17, 40_000, 6_000_000, 900_000_000, MAX_DURATION_NS] {
            h.record(v).unwrap();
        }
        let good = encode_histogram(&h.hist, "p").unwrap();
        assert_eq!(decode_histogram(&good).unwrap(), h.hist);
        // Damage the compressed form...
        let raw = BASE64.decode(&good).unwrap();
        for i in 0..raw.len() {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut bad = raw.clone();
                bad[i] ^= mask;
                let _ = decode_histogram(&BASE64.encode(&bad));
            }
        }
        // ...and the V2 payload inside a well-formed zlib stream, where no checksum helps.
        let mut v2 = Vec::new();
        V2Serializer::new().serialize(&h.hist, &mut v2).unwrap();
        let wrap = |inner: &[u8]| {
            let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            z.write_all(inner).unwrap();
            let z = z.finish().unwrap();
            let mut out = 0x1c84_9314u32.to_be_bytes().to_vec();
            out.extend_from_slice(&(z.len() as u32).to_be_bytes());
            out.extend_from_slice(&z);
            BASE64.encode(out)
        };
        assert_eq!(decode_histogram(&wrap(&v2)).unwrap(), h.hist);
        let mut refused = 0;
        for i in 0..v2.len() {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut bad = v2.clone();
                bad[i] ^= mask;
                refused += usize::from(decode_histogram(&wrap(&bad)).is_err());
            }
        }
        assert!(refused > 0);
        // A header claiming a 4 GiB payload is refused before anything is allocated.
        let mut huge = v2.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_histogram(&wrap(&huge)).is_err());
    }

    #[test]
    fn a_newer_state_is_an_error_and_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let text = br#"{"format":"fastkexec-state","version":99}"#;
        fs::write(d.path().join(STATE_FILE), text).unwrap();
        let err = State::open(d.path()).unwrap_err().to_string();
        assert!(err.contains("newer fastkexec"), "{err}");
        assert_eq!(fs::read(d.path().join(STATE_FILE)).unwrap(), text);
    }

    #[test]
    fn only_recent_boot_ids_are_remembered() {
        let mut st = State::new();
        let one = |i: usize| Boot {
            boot_id: format!("boot-{i}"),
            phases: vec![],
            total_ns: 1,
            reboot_unix_ns: 0,
            mode: String::new(),
        };
        for i in 0..REMEMBERED_BOOT_IDS + 5 {
            assert_eq!(st.fold(&one(i)).unwrap(), Fold::Folded);
        }
        assert!(!st.contains("boot-0") && st.contains(&format!("boot-{REMEMBERED_BOOT_IDS}")));
        assert_eq!(st.boots() as usize, REMEMBERED_BOOT_IDS + 5);
        // And such a state reads back (the id list is shorter than the boot count).
        let back = State::from_json(&st.to_json().unwrap()).ok().unwrap();
        assert_eq!(back.boots(), st.boots());
    }

    #[test]
    fn the_lock_excludes_a_second_holder_until_released() {
        let d = tempfile::tempdir().unwrap();
        let held = StateDir::lock(d.path()).unwrap();
        assert!(StateDir::try_lock(d.path()).unwrap().is_none());
        // A blocked locker gets in only after the holder let go.
        let released = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let t = {
            let dir = d.path().to_path_buf();
            let released = released.clone();
            std::thread::spawn(move || {
                tx.send(()).unwrap();
                let _sd = StateDir::lock(&dir).unwrap();
                released.load(Ordering::SeqCst)
            })
        };
        rx.recv().unwrap();
        released.store(true, Ordering::SeqCst);
        drop(held);
        assert!(t.join().unwrap(), "got the lock while it was held");
        assert!(StateDir::try_lock(d.path()).unwrap().is_some());
    }

    #[test]
    fn concurrent_folds_lose_no_boot() {
        let d = tempfile::tempdir().unwrap();
        let per_thread = 25;
        let threads: Vec<_> = (0..2)
            .map(|t| {
                let dir = d.path().to_path_buf();
                std::thread::spawn(move || {
                    for i in 0..per_thread {
                        let (f, _) = fold_boot(&dir, &boot(&format!("t{t}-{i}"), 1)).unwrap();
                        assert_eq!(f, Fold::Folded);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let st = State::open(d.path()).unwrap();
        assert_eq!(st.boots(), 2 * per_thread);
        assert_eq!(st.phase("purgatory").unwrap().count(), 2 * per_thread);
    }
}
