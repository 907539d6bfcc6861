//! Helpers shared by the integration tests (each test file is its own crate and uses a
//! subset, hence the allow).
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

/// `fastkexec/tests/fixtures`.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Copies the tree `from` into `to` (created if missing), merging with what is there.
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            fs::copy(e.path(), dest).unwrap();
        }
    }
}
