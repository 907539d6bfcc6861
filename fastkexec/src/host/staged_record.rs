//! The record of a staged load (`/run/fastkexec/staged.json`): what `load --mode staged` put
//! into the crashkernel reservation during this boot. A fact of the running machine like
//! `kexec_crash_loaded`, read by `status`, `load`, `exec` and `unload`; `staged` writes it.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::files::atomic_file;
use crate::host::e820::PhysRange;
use crate::{Error, Result};

/// Where `load` records what it staged (under the root; /run is a tmpfs, so
/// the record dies with the boot it describes).
pub const STATE_FILE: &str = "run/fastkexec/staged.json";
/// 2: with [`StagedState::segments`], the complete checksums `exec` checks.
pub const STATE_VERSION: u32 = 2;

/// What the trampoline knows about the header it checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderRef {
    pub addr: u64,
    pub len: u64,
    pub sum: u64,
    pub nonce: [u8; 16],
}

/// What `load` recorded at [`STATE_FILE`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedState {
    pub version: u32,
    /// `/proc/sys/kernel/random/boot_id` of the boot that staged it.
    pub boot_id: Option<String>,
    pub loaded_at_unix: u64,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub panic_cmdline: String,
    pub reservation_start: u64,
    /// Exclusive.
    pub reservation_end: u64,
    pub crash_entry: u64,
    pub trampoline: u64,
    pub header_addr: u64,
    pub header_len: u64,
    pub header_sum: u64,
    /// 32 hex digits.
    pub nonce: String,
    pub sampled_blocks: u64,
    /// Every segment of the crash image, summed over its whole destination (the zero fill
    /// included): what `exec` checks, completely, before the reboot.
    pub segments: Vec<SegmentSum>,
}

/// One staged segment's complete checksum ([`crate::blobs::purgatory::checksum`] over `len` bytes at
/// `addr`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentSum {
    pub addr: u64,
    /// A multiple of 8.
    pub len: u64,
    pub sum: u64,
}

impl StagedState {
    pub fn reservation(&self) -> PhysRange {
        PhysRange::new(self.reservation_start, self.reservation_end)
    }

    pub fn header(&self) -> Option<HeaderRef> {
        Some(HeaderRef {
            addr: self.header_addr,
            len: self.header_len,
            sum: self.header_sum,
            nonce: unhex16(&self.nonce)?,
        })
    }
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex16(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// This boot's id, if the kernel exposes it.
pub fn boot_id(root: &Path) -> Option<String> {
    fs::read_to_string(root.join("proc/sys/kernel/random/boot_id"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Writes the record atomically (an exclusive temporary file, then rename), 0600 in a 0700
/// directory: it is root's account of what kexec holds.
pub fn write_state(root: &Path, state: &StagedState) -> Result<()> {
    let path = root.join(STATE_FILE);
    let dir = path.parent().unwrap_or(root);
    if !dir.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io(dir, e))?;
    }
    let text = serde_json::to_string_pretty(state).map_err(|e| Error::HostInfo {
        path: path.clone(),
        problem: format!("cannot encode: {e}"),
    })?;
    atomic_file::write(&path, text.as_bytes(), 0o600)
}

/// What to do about a record `exec`, `load` and `unload` cannot use.
pub const STATE_FIX: &str = "check what is loaded with `fastkexec status`, then run `fastkexec \
                         unload` (it clears both images and removes this record) and load again";

/// The record of what `load --mode staged` staged during this boot: `None` when there is
/// none, or when it is from an earlier boot (a /run that is not a tmpfs; the kernel has
/// forgotten that load). A record that cannot be read or parsed, or of another version, is
/// an error naming the file: guessing "nothing staged" would let `exec` skip its check and
/// `load` leave a staged crash image behind (issue 13, defect 5).
pub fn read_state(root: &Path) -> Result<Option<StagedState>> {
    let path = root.join(STATE_FILE);
    let bad = |problem: String| Error::StagedState {
        path: path.clone(),
        problem: format!("{problem}; {STATE_FIX}"),
    };
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(format!("cannot read the staged-mode record ({e})"))),
    };
    // The version first, so a newer record says so rather than "missing field".
    let version = serde_json::from_str::<serde_json::Value>(&text)
        .map_err(|e| bad(format!("not a staged-mode record ({e})")))?
        .get("version")
        .and_then(serde_json::Value::as_u64);
    if version != Some(u64::from(STATE_VERSION)) {
        return Err(bad(format!(
            "staged-mode record version {} (this fastkexec reads version {STATE_VERSION})",
            version.map_or_else(|| "missing".into(), |v| v.to_string())
        )));
    }
    let state: StagedState =
        serde_json::from_str(&text).map_err(|e| bad(format!("not a staged-mode record ({e})")))?;
    let now = boot_id(root);
    if state.boot_id.is_some() && now.is_some() && state.boot_id != now {
        log::info!(
            "{}: left over from an earlier boot; ignored",
            path.display()
        );
        return Ok(None);
    }
    Ok(Some(state))
}

pub fn remove_state(root: &Path) -> Result<()> {
    let path = root.join(STATE_FILE);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, e)),
        _ => Ok(()),
    }
}
