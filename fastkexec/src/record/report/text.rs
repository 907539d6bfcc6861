//! The report as a table for people.

use super::*;

pub(super) fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.record;
        match r.status {
            "ok" => writeln!(
                f,
                "kexec reboot {} → {}{}: record ok ({} events{}; probes: {} fentry/fexit, {} \
                 kprobe)",
                r.old_kernel.as_deref().unwrap_or("?"),
                self.new_kernel.as_deref().unwrap_or("?"),
                r.mode.map(|m| format!(" ({m})")).unwrap_or_default(),
                r.events,
                if r.events_dropped > 0 {
                    format!(", {} dropped", r.events_dropped)
                } else {
                    String::new()
                },
                r.fentry.len(),
                r.kprobe.len()
            )?,
            _ => writeln!(
                f,
                "{}: only this kernel's own phases are shown",
                r.detail.as_deref().unwrap_or(r.status)
            )?,
        }
        let end = match (&self.end.kind, &self.end.text) {
            (&"kmsg", Some(t)) => format!("the kernel log line {t:?}"),
            (&"systemd", Some(t)) => t.clone(),
            _ => "this report".to_string(),
        };
        writeln!(
            f,
            "from {} to {end}: {:.3} ms",
            self.origin
                .map_or_else(|| "?".to_string(), |o| o.to_string()),
            ms(self.total_ns)
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "{:>10} {:>12} {:>7}  phase",
            "start ms", "duration ms", "share"
        )?;
        for p in &self.phases {
            write!(
                f,
                "{:>10.3} {:>12.3} {:>6.1}%  {}",
                ms(p.start_ns),
                ms(p.duration_ns),
                p.share * 100.0,
                phases::label(&p.name)
            )?;
            if let Some(n) = &p.note {
                write!(f, "  ({n})")?;
            }
            writeln!(f)?;
        }
        writeln!(
            f,
            "{:>10} {:>12.3} {:>6.1}%  total",
            "",
            ms(self.total_ns),
            if self.total_ns > 0 { 100.0 } else { 0.0 }
        )?;
        if let Some(ns) = self.spans.kexec_to_purgatory_ns {
            writeln!(
                f,
                "machine_kexec → purgatory entry: {:.3} ms{}",
                ms(ns),
                match self.record.trampoline_check_ns {
                    Some(c) => format!(
                        " (relocation + staged trampoline; its check of the staged image {:.3} ms)",
                        ms(c)
                    ),
                    None => String::new(),
                }
            )?;
        }
        if !self.devices.is_empty() {
            writeln!(f)?;
            writeln!(
                f,
                "slowest devices ({} of {} shut down; each from its start to the next device's{}):",
                self.devices.len(),
                self.device_count,
                self.device_prologue_ns
                    .map(|p| format!("; {:.3} ms before the first", ms(p)))
                    .unwrap_or_default()
            )?;
            for d in &self.devices {
                let driver = if d.driver.is_empty() { "-" } else { &d.driver };
                writeln!(
                    f,
                    "{:>10.3} ms  {} ({}, {driver})",
                    ms(d.duration_ns),
                    d.device,
                    if d.bus.is_empty() { "-" } else { &d.bus }
                )?;
            }
        }
        if !self.notifiers.is_empty() {
            writeln!(f)?;
            writeln!(f, "slowest reboot notifiers:")?;
            for n in &self.notifiers {
                writeln!(f, "{:>10.3} ms  {}", ms(n.duration_ns), n.symbol)?;
            }
        }
        writeln!(f)?;
        write!(f, "{}", self.initcalls)?;
        if let Some(u) = &self.units_stop {
            writeln!(f)?;
            write!(f, "{u}")?;
        }
        if let Some(u) = &self.units_start {
            writeln!(f)?;
            write!(f, "{u}")?;
        }
        if !self.unseen.is_empty() {
            writeln!(f)?;
            writeln!(f, "not on the timeline:")?;
            for u in &self.unseen {
                writeln!(f, "  {}: {}", phases::label(&u.phase), u.why)?;
            }
        }
        if r.tracer_self_ns > 0 {
            writeln!(
                f,
                "tracer: {:.3} ms inside the probes themselves",
                ms(r.tracer_self_ns)
            )?;
        }
        if !self.where_next.is_empty() {
            writeln!(f)?;
            write!(f, "{}", next::WhereNext(&self.where_next))?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        Ok(())
    }
}
