//! The next kernel's command line: built from `--append` or the running kernel's, split into
//! parameters the way the kernel splits them.

use std::path::Path;

use crate::host::status;
use crate::{Error, Result};

/// The kernel's `COMMAND_LINE_SIZE` on x86 is 2048 including the NUL; a vmlinux carries no
/// setup header to tell its own limit, so this is the limit used for it.
pub const X86_COMMAND_LINE_MAX: usize = 2047;

/// Parameters of the running kernel's command line that make no sense for the next kernel:
/// `BOOT_IMAGE` names the file the boot loader loaded (kexec-tools drops it too) and `initrd`
/// is a boot-loader/EFI-stub path — the initrd is passed with `--initrd` instead.
/// `fastkexec.boot_id` is the tracer's tie between a trace record and the boot that wrote it
/// (see `handoff`): the next `trace` sets a fresh one.
pub const REUSE_CMDLINE_DROPPED: [&str; 3] = ["BOOT_IMAGE", "initrd", "fastkexec.boot_id"];

/// Where the next kernel's command line comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmdlineSource {
    /// Exactly this string (`--append`/`--command-line`; empty when not given).
    Append(String),
    /// The running kernel's `/proc/cmdline` without [`REUSE_CMDLINE_DROPPED`], then `append`.
    ReuseCmdline { append: Option<String> },
}

/// Builds the next kernel's command line. Returns it and the parameters dropped from
/// `/proc/cmdline`.
pub fn build_cmdline(source: &CmdlineSource, root: &Path) -> Result<(String, Vec<String>)> {
    let (line, dropped) = match source {
        CmdlineSource::Append(s) => (s.trim().to_string(), Vec::new()),
        CmdlineSource::ReuseCmdline { append } => {
            let current = status::read_proc_cmdline(root)?;
            let (mut kept, dropped): (Vec<&str>, Vec<&str>) = split_params(&current)
                .into_iter()
                .partition(|p| !REUSE_CMDLINE_DROPPED.contains(&param_key(p)));
            if let Some(extra) = append.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
                kept.push(extra);
            }
            (
                kept.join(" "),
                dropped.into_iter().map(str::to_string).collect(),
            )
        }
    };
    if let Some(c) = line
        .chars()
        .find(|c| *c == '\0' || *c == '\n' || *c == '\r')
    {
        let from = match source {
            CmdlineSource::ReuseCmdline { .. } => format!(
                "drop --reuse-cmdline or fix {}",
                root.join("proc/cmdline").display()
            ),
            CmdlineSource::Append(_) => "remove it from --append".to_string(),
        };
        return Err(Error::InvalidCmdline(format!(
            "it contains the control character {c:?}, which ends or breaks a kernel command \
             line; {from}"
        )));
    }
    Ok((line, dropped))
}

/// Splits a command line into parameters the way the kernel does: on whitespace, except inside
/// double quotes (`dyndbg="file x.c +p"` is one parameter).
pub fn split_params(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = None;
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        if c == '"' {
            quoted = !quoted;
        }
        let sep = c.is_whitespace() && !quoted;
        match (start, sep) {
            (None, false) => start = Some(i),
            (Some(s), true) => {
                out.push(&line[s..i]);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push(&line[s..]);
    }
    out
}

/// The key of `key=value` (or the whole flag parameter).
fn param_key(param: &str) -> &str {
    param.split_once('=').map_or(param, |(k, _)| k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn status_fixture(case: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/status")
            .join(case)
    }

    #[test]
    fn reuse_cmdline_drops_boot_loader_params_and_appends() {
        let root = status_fixture("plain");
        let (line, dropped) =
            build_cmdline(&CmdlineSource::ReuseCmdline { append: None }, &root).unwrap();
        assert_eq!(
            line,
            "root=UUID=0b6c1e0e-5bd3-4f3a-9d1c-6d6f3a0f9c11 ro console=ttyS0 quiet"
        );
        assert_eq!(dropped, ["BOOT_IMAGE=/boot/vmlinuz-6.1.0-28-cloud-amd64"]);

        let (line, _) = build_cmdline(
            &CmdlineSource::ReuseCmdline {
                append: Some(" initcall_debug ".into()),
            },
            &root,
        )
        .unwrap();
        assert!(line.ends_with("quiet initcall_debug"), "{line}");

        // initrd= from an EFI boot loader goes too; double spaces collapse.
        let (line, dropped) = build_cmdline(
            &CmdlineSource::ReuseCmdline { append: None },
            &status_fixture("unprivileged"),
        )
        .unwrap();
        assert_eq!(line, "root=/dev/sda2 quiet");
        assert_eq!(dropped.len(), 2);
    }

    #[test]
    fn crashkernel_is_kept_for_the_next_kernel() {
        let (line, _) = build_cmdline(
            &CmdlineSource::ReuseCmdline { append: None },
            &status_fixture("crashkernel"),
        )
        .unwrap();
        assert!(line.contains("crashkernel=256M"), "{line}");
    }

    #[test]
    fn append_is_taken_verbatim_and_checked() {
        let root = status_fixture("plain");
        let (line, dropped) =
            build_cmdline(&CmdlineSource::Append("  console=ttyS0 ".into()), &root).unwrap();
        assert_eq!(line, "console=ttyS0");
        assert!(dropped.is_empty());
        let e = build_cmdline(&CmdlineSource::Append("a\nb".into()), &root).unwrap_err();
        assert!(matches!(e, Error::InvalidCmdline(_)), "{e}");
        let e = build_cmdline(
            &CmdlineSource::ReuseCmdline { append: None },
            &status_fixture("does-not-exist"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("proc/cmdline"), "{e}");
    }

    #[test]
    fn params_split_like_the_kernel() {
        assert_eq!(
            split_params(r#"  a=1 dyndbg="file x.c +p"  b "#),
            ["a=1", r#"dyndbg="file x.c +p""#, "b"]
        );
        assert!(split_params("").is_empty());
        assert_eq!(param_key("BOOT_IMAGE=/x"), "BOOT_IMAGE");
        assert_eq!(param_key("quiet"), "quiet");
    }
}
