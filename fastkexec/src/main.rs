//! The `fastkexec` command: a thin clap layer over the library.

fn main() -> anyhow::Result<()> {
    Ok(())
}
