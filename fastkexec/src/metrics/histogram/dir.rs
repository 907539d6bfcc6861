//! The state directory: created with a deliberate mode, locked with flock(2) while a fold
//! reads and writes it, a corrupt state moved aside rather than reset.

use super::*;

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
    pub(super) fn open_existing(dir: &Path) -> Result<StateDir> {
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
    pub(super) fn decode(&self) -> Result<std::result::Result<State, String>> {
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

    pub(super) fn move_aside(&self, path: &Path) -> Result<PathBuf> {
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

    pub(super) fn count_corrupt_files(&self) -> usize {
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

/// Creates a missing state directory with `STATE_DIR_MODE` (not whatever the umask makes of
/// it: under umask 0 it would be writable by everyone, and `atomic_file` then refuses it).
pub(super) fn create_state_dir(dir: &Path) -> Result<()> {
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

pub(super) fn open_lock_file(path: &Path) -> std::io::Result<File> {
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

pub(super) fn open_existing_lock_file(path: &Path) -> std::io::Result<File> {
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
pub(super) fn read_limited(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let f = File::open(path)?;
    let mut buf = Vec::new();
    f.take(MAX_STATE_BYTES + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_STATE_BYTES {
        return Ok(None);
    }
    Ok(Some(buf))
}
