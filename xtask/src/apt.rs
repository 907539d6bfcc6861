//! Installs the host's Debian packages without ever removing one the user has.
//!
//! The clash this exists for: Debian 12 machines that carry `qemu-utils` from
//! bookworm-backports (QEMU 10) but no backports line in their sources. Asking
//! for `qemu-system-x86` then resolves to bookworm's QEMU 7.2, whose
//! `qemu-system-common` cannot sit beside QEMU 10's `qemu-utils`, and apt's
//! answer is to remove `qemu-utils`. Every install here is simulated first and
//! run with `--no-remove`; a clash with a backports package is resolved by
//! taking the clashing source's packages from the same backports suite, through
//! a private apt configuration (the system's sources are never edited). Any
//! other clash stops setup with the packages named.

use crate::util::{lab_dir, output, run, step};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// A package apt would remove to satisfy an install.
#[derive(Debug, PartialEq, Eq)]
pub struct Removal {
    pub package: String,
    pub version: String,
}

/// Installs `packages` (none of which is installed yet), removing nothing.
pub fn install(packages: &[&str]) -> Result<()> {
    run(
        "apt-get update",
        Command::new("apt-get").args(["-q", "update"]),
    )?;
    let removals = simulate(&Apt::System, None, packages)?;
    if removals.is_empty() {
        return install_with(&Apt::System, None, packages);
    }
    let sources: Vec<String> = removals
        .iter()
        .map(|r| source_of_installed(&r.package))
        .collect::<Result<_>>()?;
    let mut clashing = Vec::new();
    let mut rest = Vec::new();
    for &p in packages {
        if sources.contains(&source_of_candidate(p)?) {
            clashing.push(p);
        } else {
            rest.push(p);
        }
    }
    let from_backports = removals.iter().all(|r| r.version.contains("~bpo"));
    if from_backports && !clashing.is_empty() {
        let suite = format!("{}-backports", codename()?);
        step(format!(
            "Debian packages: {} from {suite}, to match the installed {}",
            clashing.join(" "),
            describe(&removals)
        ));
        let backports = Apt::Private(backports_config(&suite)?);
        if simulate(&backports, Some(&suite), &clashing)?.is_empty() {
            install_with(&backports, Some(&suite), &clashing)?;
            if simulate(&Apt::System, None, &rest)?.is_empty() {
                return install_with(&Apt::System, None, &rest);
            }
        }
    }
    bail!(
        "installing {} would remove {}, which this machine already has; nothing was changed. \
         Install {} at the version that matches the installed package (or remove that package \
         yourself if you do not need it), then run `cargo xtask setup` again",
        packages.join(" "),
        describe(&removals),
        if clashing.is_empty() {
            packages.join(" ")
        } else {
            clashing.join(" ")
        }
    )
}

fn describe(removals: &[Removal]) -> String {
    removals
        .iter()
        .map(|r| format!("{} {}", r.package, r.version))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Which apt configuration a call uses.
enum Apt {
    /// The system's own sources.
    System,
    /// `-o` options pointing apt at a private sources directory and lists.
    Private(Vec<String>),
}

impl Apt {
    fn command(&self, prog: &str) -> Command {
        let mut c = Command::new(prog);
        c.env("DEBIAN_FRONTEND", "noninteractive");
        if let Apt::Private(opts) = self {
            for o in opts {
                c.arg("-o").arg(o);
            }
        }
        c
    }
}

fn install_args(target: Option<&str>) -> Vec<String> {
    let mut args: Vec<String> = ["-q", "-y", "--no-install-recommends", "--no-remove"]
        .map(String::from)
        .to_vec();
    if let Some(suite) = target {
        args.extend(["-t".into(), suite.into()]);
    }
    args.push("install".into());
    args
}

/// What apt would remove to install `packages` (apt's own dry run).
fn simulate(apt: &Apt, target: Option<&str>, packages: &[&str]) -> Result<Vec<Removal>> {
    if packages.is_empty() {
        return Ok(vec![]);
    }
    // No --no-remove here: the dry run must show the removals, not stop at them.
    let mut args = install_args(target);
    args.retain(|a| a != "--no-remove");
    let plan = output(
        "apt-get install (dry run)",
        apt.command("apt-get").arg("-s").args(args).args(packages),
    )?;
    Ok(removals(&plan))
}

fn install_with(apt: &Apt, target: Option<&str>, packages: &[&str]) -> Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    run(
        "apt-get install",
        apt.command("apt-get")
            .args(install_args(target))
            .args(packages),
    )
}

/// The `Remv NAME [VERSION]` lines of `apt-get -s` output.
pub fn removals(plan: &str) -> Vec<Removal> {
    plan.lines()
        .filter_map(|l| l.strip_prefix("Remv "))
        .filter_map(|rest| {
            let (package, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            let version = tail
                .trim()
                .strip_prefix('[')
                .and_then(|v| v.split(']').next())
                .unwrap_or("");
            (!package.is_empty()).then(|| Removal {
                package: package.to_string(),
                version: version.to_string(),
            })
        })
        .collect()
}

fn source_of_installed(package: &str) -> Result<String> {
    let out = output(
        &format!("dpkg-query {package}"),
        Command::new("dpkg-query").args(["-W", "-f=${source:Package}", package]),
    )?;
    Ok(out.trim().to_string())
}

fn source_of_candidate(package: &str) -> Result<String> {
    let out = output(
        &format!("apt-cache show {package}"),
        Command::new("apt-cache").args(["show", "--no-all-versions", package]),
    )?;
    Ok(source_field(&out).unwrap_or(package).to_string())
}

/// `Source: qemu (1:7.2+dfsg-7)` → `qemu`; absent when the source is the package's name.
pub fn source_field(show: &str) -> Option<&str> {
    show.lines()
        .find_map(|l| l.strip_prefix("Source: "))
        .and_then(|s| s.split_whitespace().next())
}

fn codename() -> Result<String> {
    let os = std::fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    os.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_string())
        .filter(|c| !c.is_empty())
        .context("/etc/os-release has no VERSION_CODENAME: cannot name the backports suite")
}

/// The system's sources plus `suite`, in a private directory under target/lab.
fn backports_config(suite: &str) -> Result<Vec<String>> {
    let dir: PathBuf = lab_dir().join("apt-host");
    let parts = dir.join("sources");
    for d in [parts.clone(), dir.join("lists/partial")] {
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    if let Ok(list) = std::fs::read("/etc/apt/sources.list") {
        std::fs::write(parts.join("system.list"), list)?;
    }
    if let Ok(entries) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for e in entries.flatten() {
            let name = e.file_name();
            let n = name.to_string_lossy();
            if n.ends_with(".list") || n.ends_with(".sources") {
                std::fs::copy(e.path(), parts.join(&name))
                    .with_context(|| format!("copying {}", e.path().display()))?;
            }
        }
    }
    std::fs::write(
        parts.join("fastkexec-backports.list"),
        format!("deb [signed-by={KEYRING}] http://deb.debian.org/debian {suite} main\n"),
    )?;
    let opts = vec![
        "Dir::Etc::SourceList=/dev/null".to_string(),
        format!("Dir::Etc::SourceParts={}", parts.display()),
        format!("Dir::State::Lists={}", dir.join("lists").display()),
        "APT::Sandbox::User=root".into(),
        "Acquire::Languages=none".into(),
    ];
    run(
        "apt-get update (private configuration with backports)",
        Apt::Private(opts.clone())
            .command("apt-get")
            .args(["-q", "update"]),
    )?;
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `apt-get -s install --no-install-recommends qemu-system-x86 …` on a Debian 12
    /// machine with qemu-utils from bookworm-backports (trimmed, lines verbatim).
    const PLAN: &str = "\
The following packages will be REMOVED:
  qemu-utils
The following NEW packages will be installed:
  qemu-system-common qemu-system-data qemu-system-x86
0 upgraded, 3 newly installed, 1 to remove and 165 not upgraded.
Remv qemu-utils [1:10.0.2+ds-2+deb13u1~bpo12+1]
Inst qemu-system-common (1:7.2+dfsg-7+deb12u18+b3 Debian:12.15/oldstable [amd64])
Inst qemu-system-data (1:7.2+dfsg-7+deb12u18 Debian:12.15/oldstable [all])
Conf qemu-system-x86 (1:7.2+dfsg-7+deb12u18+b3 Debian:12.15/oldstable [amd64])
";

    #[test]
    fn removals_are_read_from_the_dry_run() {
        assert_eq!(
            removals(PLAN),
            vec![Removal {
                package: "qemu-utils".into(),
                version: "1:10.0.2+ds-2+deb13u1~bpo12+1".into()
            }]
        );
        assert!(removals("Inst cpio (2.13+dfsg-7.1 Debian:12.15/oldstable [amd64])\n").is_empty());
    }

    #[test]
    fn source_field_names_the_source_package() {
        let show =
            "Package: qemu-system-x86\nSource: qemu (1:7.2+dfsg-7+deb12u18)\nVersion: 1:7.2\n";
        assert_eq!(source_field(show), Some("qemu"));
        assert_eq!(source_field("Package: cpio\nVersion: 2.13\n"), None);
    }
}
