//! The one way the `fastkexec` command writes to standard output and standard error.
//!
//! `println!` panics (exit 101) when a write fails: EIO from a terminal that hung up, EPIPE
//! from a reader that went away. A tool that reboots machines must not die half-way because
//! nobody is listening, so every command writes through here instead:
//!
//! - human-readable text ([`say!`], [`warn_user`], [`Stdout`]) is best effort: a failed write
//!   is remembered and otherwise ignored; the command carries on and its exit status does not
//!   change;
//! - a command's *product* on standard output (`--json`, `export` without `--output`,
//!   `completions`, `man` without `--dir`) is written with [`product`] or [`json`]: the
//!   command still does all its work, and then exits with [`crate::exit::OUTPUT_LOST`] if the product
//!   could not be written, so a caller never mistakes a lost answer for a delivered one.
//!
//! A closed standard output needs nothing special: Rust's runtime reopens a closed descriptor
//! 0, 1 or 2 on /dev/null before `main`, so the writes succeed into nothing.

use std::fmt;
use std::io::{self, Write};
use std::sync::Mutex;

/// The first failed write to standard output, for the warning at exit.
static STDOUT_LOST: Mutex<Option<String>> = Mutex::new(None);

fn remember(e: &io::Error) {
    if let Ok(mut lost) = STDOUT_LOST.lock() {
        lost.get_or_insert_with(|| e.to_string());
    }
}

/// Writes human-readable text to standard output, best effort (see the module doc).
pub fn text(args: fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        remember(&e);
    }
}

/// `println!` for human-readable text: best effort, never panics.
macro_rules! say {
    () => {
        $crate::out::text(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::out::text(format_args!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use say;

/// Writes human-readable text to standard error, best effort: when stderr is gone too there
/// is nobody left to tell.
pub fn err_text(args: fmt::Arguments<'_>) {
    let mut err = io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.flush());
}

/// Writes a command's product to standard output, then flushes it.
pub fn product(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    // Not remembered for `warn_if_lost`: the error this returns already says it.
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| {
            ExitStatus(
                crate::exit::OUTPUT_LOST,
                format!("the output could not be written to standard output: {e}"),
            )
            .into()
        })
}

/// The version of every `--json` document's layout (`schema_version`, its first field):
/// bumped when a field changes meaning or goes away; new fields do not bump it.
pub const JSON_SCHEMA_VERSION: u64 = 1;

/// A value as pretty JSON (and a newline): a product. An object gets `schema_version` first.
pub fn json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let value = match serde_json::to_value(value)? {
        serde_json::Value::Object(fields) => {
            let mut doc = serde_json::Map::new();
            doc.insert("schema_version".into(), JSON_SCHEMA_VERSION.into());
            doc.extend(fields);
            serde_json::Value::Object(doc)
        }
        other => other,
    };
    let mut buf = serde_json::to_vec_pretty(&value)?;
    buf.push(b'\n');
    product(&buf)
}

/// After the command: if human-readable output was lost, say so on standard error (which may
/// well be gone too).
pub fn warn_if_lost() {
    let lost = STDOUT_LOST.lock().ok().and_then(|mut l| l.take());
    if let Some(e) = lost {
        err_text(format_args!(
            "fastkexec: warning: standard output could not be written ({e}); the command went \
             on regardless\n"
        ));
    }
}

/// Standard output as an `io::Write` for library code that reports progress (`trace`): every
/// write succeeds, failures are remembered as for [`text`].
pub struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Err(e) = io::stdout().lock().write_all(buf) {
            remember(&e);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Err(e) = io::stdout().lock().flush() {
            remember(&e);
        }
        Ok(())
    }
}

/// Standard error as an `io::Write` for progress when standard output carries JSON: best
/// effort, every write succeeds.
pub struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = io::stderr().lock().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().lock().flush();
        Ok(())
    }
}

/// An error that asks for a specific exit status (`report` without a record: 3).
#[derive(Debug)]
pub struct ExitStatus(pub u8, pub String);

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for ExitStatus {}
