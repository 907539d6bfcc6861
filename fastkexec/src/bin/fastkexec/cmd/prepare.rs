//! `fastkexec prepare`: extract the vmlinux into the cache ahead of a load.

use std::time::Instant;

use anyhow::{Context, Result};

use crate::cli::PrepareArgs;
use crate::out::{self, say};
use fastkexec::image::prepare;

pub fn run(args: PrepareArgs) -> Result<()> {
    let t = Instant::now();
    let kernel = args.kernel();
    let p = prepare::prepare(&kernel, &args.cache_dir)
        .with_context(|| format!("cannot prepare {}", kernel.display()))?;
    let elapsed = t.elapsed();
    if args.json {
        return out::json(&serde_json::json!({
            "kernel": kernel,
            "vmlinux": p.vmlinux,
            "setup_header": p.setup_header,
            "compression": p.compression,
            "key": p.key,
            "cache_hit": p.cached,
            "vmlinux_bytes": p.vmlinux_len,
            "elapsed_ns": u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
        }));
    }
    say!("vmlinux:      {}", p.vmlinux.display());
    say!("setup header: {}", p.setup_header.display());
    say!("compression:  {}", p.compression);
    say!("size:         {} bytes", p.vmlinux_len);
    say!(
        "cache:        {}",
        if p.cached {
            "hit (already extracted)"
        } else {
            "miss (extracted now)"
        }
    );
    say!("time:         {:.1} ms", elapsed.as_secs_f64() * 1e3);
    Ok(())
}
