//! The load report as `fastkexec load` prints it.

use super::*;

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = if self.dry_run {
            "dry run, nothing loaded"
        } else if self.loaded {
            "loaded"
        } else {
            "not loaded"
        };
        writeln!(f, "mode:     {} ({verb})", self.mode)?;
        writeln!(f, "why:      {}", self.mode_reason)?;
        writeln!(
            f,
            "kernel:   {} ({})",
            self.kernel.display(),
            self.kernel_format
        )?;
        if self.vmlinux.is_some() || self.compression.is_some() {
            let mut extra = Vec::new();
            if let Some(c) = &self.compression {
                extra.push(format!("payload {c}"));
            }
            match self.cache_hit {
                Some(true) => extra.push("cache hit".into()),
                Some(false) => extra.push("extracted now".into()),
                None => {}
            }
            let extra = if extra.is_empty() {
                String::new()
            } else {
                format!(" ({})", extra.join(", "))
            };
            let place = self.vmlinux.as_ref().map_or_else(
                || "extracted in memory".to_string(),
                |v| v.display().to_string(),
            );
            writeln!(f, "vmlinux:  {place}{extra}")?;
        }
        match (&self.initrd, self.initrd_size) {
            (Some(p), Some(n)) => writeln!(f, "initrd:   {} ({n} bytes)", p.display())?,
            (Some(p), None) => writeln!(f, "initrd:   {}", p.display())?,
            _ => writeln!(f, "initrd:   none")?,
        }
        writeln!(f, "cmdline:  {:?}", self.cmdline)?;
        if !self.cmdline_dropped.is_empty() {
            writeln!(
                f,
                "          (dropped from /proc/cmdline: {})",
                self.cmdline_dropped.join(" ")
            )?;
        }
        writeln!(f, "syscall:  {}", self.syscall)?;
        if let Some(plan) = &self.plan {
            writeln!(f, "plan:")?;
            for line in plan.lines() {
                writeln!(f, "  {line}")?;
            }
        }
        for n in &self.notes {
            writeln!(f, "note:     {n}")?;
        }
        let t: Vec<String> = self
            .timings
            .iter()
            .map(|t| format!("{} {:.1} ms", t.phase, t.ns as f64 / 1e6))
            .collect();
        // The laps and `total` come from separate clock reads; what lies between them (the
        // report's own bookkeeping) is shown, so a large gap cannot hide.
        let total = self
            .timings
            .iter()
            .find(|t| t.phase == "total")
            .map(|t| t.ns);
        let laps: u64 = self
            .timings
            .iter()
            .filter(|t| t.phase != "total")
            .map(|t| t.ns)
            .sum();
        let rest = match total {
            Some(total) => format!(
                " (outside the laps: {:.1} ms)",
                total.saturating_sub(laps) as f64 / 1e6
            ),
            None => String::new(),
        };
        writeln!(f, "time:     {}{rest}", t.join(", "))
    }
}
