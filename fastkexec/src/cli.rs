//! The command-line interface (clap derive). Kept apart from `main.rs` so the man pages and
//! shell completions are generated from the very same definitions.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

const ABOUT: &str = "Load the next Linux kernel fast with kexec";

const LONG_ABOUT: &str = "\
Load the next Linux kernel fast with kexec, and switch to it.

Typical use, as root: `fastkexec status` shows what this kernel allows; `fastkexec prepare \
--kernel /boot/vmlinuz-NEW` extracts the vmlinux once, ahead of time; `fastkexec load --kernel \
/boot/vmlinuz-NEW --initrd /boot/initrd.img-NEW --reuse-cmdline` loads it; `fastkexec exec` \
syncs and reboots into it through a clean `systemctl kexec`.";

const LOAD_AFTER_HELP: &str = "\
Modes:

file: kexec_file_load(2) of the bzImage. The kernel places the segments, its purgatory
SHA-256-hashes them at reboot, and the bzImage decompresses itself at boot. Works under
lockdown / Secure Boot when the bzImage is signed with a key the kernel trusts. Needs
CONFIG_KEXEC_FILE.

uncompressed: kexec_load(2) of the kernel's vmlinux (extracted from the bzImage once and
cached, see `fastkexec prepare`) with boot_params and a small purgatory built by fastkexec: no
decompression and no hashing at reboot (--verify adds a checksum). Needs kexec_load, which is
refused under lockdown (Secure Boot) and when kernel.kexec_load_disabled=1. The next kernel
runs without kernel-text KASLR. Not for SEV/TDX confidential guests. Also accepts a vmlinux
ELF as --kernel.

auto (the default): uncompressed when this kernel allows kexec_load, else file; the report
says which and why. `fastkexec status` shows what is allowed here.

A failed load leaves the previously loaded kernel in place: everything is checked before the
single load syscall, and the kernel replaces the old image only when that call succeeds.
--dry-run prints the plan without root and without writing anything.

Examples:

fastkexec load --kernel /boot/vmlinuz-6.12.0 --initrd /boot/initrd.img-6.12.0 --reuse-cmdline

fastkexec load --kernel /boot/vmlinuz-6.12.0 --append 'root=/dev/vda1 console=ttyS0' --mode file

fastkexec load --kernel /boot/vmlinuz-6.12.0 --reuse-cmdline --append initcall_debug --dry-run";

const EXEC_AFTER_HELP: &str = "\
Without --force, when PID 1 is systemd, this runs `systemctl kexec`: systemd stops the
services, unmounts the file systems and then jumps into the kernel fastkexec loaded. Without
systemd (busybox init, an initramfs shell) --force is the only path, as with `kexec -e`.
Both paths call sync(2) first.";

/// `fastkexec`: top-level options and the command.
#[derive(Debug, Parser)]
#[command(name = "fastkexec", version, propagate_version = true, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Read /proc and /sys under this directory instead of / (tests, captured machine trees).
    #[arg(
        long,
        global = true,
        hide = true,
        default_value = "/",
        value_name = "DIR"
    )]
    pub root: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load a kernel to boot at the next `fastkexec exec`, replacing any loaded one.
    #[command(after_long_help = LOAD_AFTER_HELP)]
    Load(LoadArgs),
    /// Boot the loaded kernel now (sync, then a clean `systemctl kexec` or, with --force, at once).
    #[command(after_long_help = EXEC_AFTER_HELP)]
    Exec(ExecArgs),
    /// Unload the loaded kernel (nothing happens at the next reboot).
    Unload,
    /// Show what is loaded, the crashkernel reservation, lockdown, and which modes work here.
    Status(StatusArgs),
    /// Extract and cache the vmlinux of a bzImage now, so `load --mode uncompressed` is fast.
    Prepare(PrepareArgs),
    /// Print a shell completion script (e.g. `fastkexec completions bash > /etc/bash_completion.d/fastkexec`).
    Completions {
        /// The shell to generate completions for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the fastkexec(1) man page, or write one page per command with --dir.
    Man {
        /// Write fastkexec.1 and fastkexec-<command>.1 into this directory instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// How to load: see the MODES section of `fastkexec load --help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// uncompressed when kexec_load is allowed, else file
    Auto,
    /// kexec_file_load of the bzImage (works under lockdown with a signed kernel)
    File,
    /// kexec_load of the cached vmlinux (no decompression, no hashing at reboot)
    Uncompressed,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The kernel: a bzImage (e.g. /boot/vmlinuz-VERSION), or a vmlinux ELF in uncompressed mode.
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,

    /// The initramfs to hand to the new kernel.
    #[arg(long, visible_alias = "ramdisk", value_name = "PATH")]
    pub initrd: Option<PathBuf>,

    /// The new kernel's command line; with --reuse-cmdline, added after the reused one.
    #[arg(long, visible_alias = "command-line", value_name = "STRING")]
    pub append: Option<String>,

    /// Start from the running kernel's /proc/cmdline (without BOOT_IMAGE= and initrd=).
    #[arg(long)]
    pub reuse_cmdline: bool,

    /// How to load the kernel.
    #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
    pub mode: ModeArg,

    /// Print what would be loaded and where; load nothing, write nothing, no root needed.
    #[arg(long)]
    pub dry_run: bool,

    /// Uncompressed mode: have the purgatory checksum every segment before jumping.
    #[arg(long)]
    pub verify: bool,

    /// Cache of extracted vmlinux files (uncompressed mode).
    #[arg(long, value_name = "DIR", default_value = fastkexec::prepare::DEFAULT_CACHE_DIR)]
    pub cache_dir: PathBuf,

    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Skip the clean shutdown: sync, then reboot(LINUX_REBOOT_CMD_KEXEC) immediately.
    #[arg(long, short)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PrepareArgs {
    /// The bzImage whose vmlinux to extract.
    #[arg(long, value_name = "BZIMAGE")]
    pub kernel: PathBuf,

    /// Cache directory.
    #[arg(long, value_name = "DIR", default_value = fastkexec::prepare::DEFAULT_CACHE_DIR)]
    pub cache_dir: PathBuf,

    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(args).unwrap()
    }

    #[test]
    fn kexec_tools_spellings_are_accepted() {
        let cli = parse(&[
            "fastkexec",
            "load",
            "--kernel",
            "/k",
            "--ramdisk",
            "/i",
            "--command-line",
            "quiet",
            "--reuse-cmdline",
        ]);
        let Command::Load(a) = cli.command else {
            panic!("not load")
        };
        assert_eq!(a.initrd.as_deref(), Some(std::path::Path::new("/i")));
        assert_eq!(a.append.as_deref(), Some("quiet"));
        assert!(a.reuse_cmdline);
        assert_eq!(a.mode, ModeArg::Auto);
        assert_eq!(
            a.cache_dir,
            PathBuf::from(fastkexec::prepare::DEFAULT_CACHE_DIR)
        );
    }

    #[test]
    fn modes_and_flags_parse() {
        let cli = parse(&[
            "fastkexec",
            "-vv",
            "load",
            "--kernel=/k",
            "--mode",
            "uncompressed",
            "--dry-run",
            "--verify",
        ]);
        assert_eq!(cli.verbose, 2);
        let Command::Load(a) = cli.command else {
            panic!("not load")
        };
        assert_eq!(a.mode, ModeArg::Uncompressed);
        assert!(a.dry_run && a.verify);
        assert!(
            Cli::try_parse_from(["fastkexec", "load", "--kernel", "/k", "--mode", "x"]).is_err()
        );
        assert!(
            Cli::try_parse_from(["fastkexec", "load"]).is_err(),
            "--kernel is required"
        );
        let cli = parse(&["fastkexec", "exec", "--force"]);
        assert!(matches!(
            cli.command,
            Command::Exec(ExecArgs { force: true })
        ));
        let cli = parse(&["fastkexec", "status", "--json"]);
        assert!(matches!(
            cli.command,
            Command::Status(StatusArgs { json: true })
        ));
        let cli = parse(&["fastkexec", "completions", "zsh"]);
        assert!(matches!(
            cli.command,
            Command::Completions {
                shell: clap_complete::Shell::Zsh
            }
        ));
    }
}
