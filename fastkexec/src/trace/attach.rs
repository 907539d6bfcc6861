//! Attaching each probe point: fentry/fexit when BTF and ftrace allow, else kprobe, and the
//! reboot notifier callbacks found by walking the notifier list.

use super::*;

/// The program `name` of `ebpf` as a `T` (a kprobe, a tracepoint, ...), or why not.
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> std::result::Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("missing program {name}"))?;
    <&mut T>::try_from(p).map_err(|e| render(&e))
}

impl Tracer {
    pub(super) fn attach_tracepoint(&mut self) -> std::result::Result<(), String> {
        let r = (|| -> std::result::Result<TracePointLinkId, String> {
            let p: &mut TracePoint = program(&mut self.ebpf, ebpf::PROG_TP_REBOOT)?;
            p.load().map_err(|e| render(&e))?;
            p.attach("syscalls", "sys_enter_reboot")
                .map_err(|e| render(&e))
        })();
        match r {
            Ok(id) => {
                self.perf_links.push(PerfLink::TracePoint(id));
                self.attached |= EventKind::REBOOT_ENTER.bit();
                self.attachments.push(Attachment {
                    function: "syscalls/sys_enter_reboot".into(),
                    kind: "reboot_enter".into(),
                    how: "tracepoint",
                    why: None,
                });
                Ok(())
            }
            Err(e) => {
                log::info!("tracepoint syscalls/sys_enter_reboot: {e}; trying __do_sys_reboot");
                Err(e)
            }
        }
    }

    /// Attaches one probe point, fentry/fexit first where allowed, else kprobe.
    pub(super) fn attach_point(
        &mut self,
        p: &ProbePoint,
        btf: Option<&Btf>,
        aya_btf: Option<&aya::Btf>,
        ftrace: Option<&HashSet<String>>,
    ) {
        // The same rule `status` states (tracing_support), applied for real here.
        let mut why = match aya_btf {
            Some(_) => support::fentry_blocker(btf, ftrace, p.function),
            None => Some("no kernel BTF".into()),
        };
        let fentry_ok = why.is_none();
        if let (true, Some(aya_btf)) = (fentry_ok, aya_btf) {
            match self.attach_fentry(p, aya_btf) {
                Ok(link) => {
                    self.links.push(link);
                    self.attached |= p.kind.bit();
                    self.fentry |= p.kind.bit();
                    self.attachments.push(Attachment {
                        function: p.function.into(),
                        kind: p.kind.name().unwrap_or("?").into(),
                        how: if p.exit { "fexit" } else { "fentry" },
                        why: None,
                    });
                    log::info!(
                        "{} {}: {}",
                        if p.exit { "fexit" } else { "fentry" },
                        p.function,
                        p.fentry
                    );
                    return;
                }
                Err(e) => why = Some(format!("fentry/fexit failed: {e}")),
            }
        }
        match self.attach_kprobe(p.kprobe, p.function) {
            Ok(id) => {
                self.perf_links.push(PerfLink::KProbe(p.kprobe, id));
                self.attached |= p.kind.bit();
                log::info!(
                    "{} {} ({})",
                    if p.exit { "kretprobe" } else { "kprobe" },
                    p.function,
                    why.as_deref().unwrap_or("")
                );
                self.attachments.push(Attachment {
                    function: p.function.into(),
                    kind: p.kind.name().unwrap_or("?").into(),
                    how: if p.exit { "kretprobe" } else { "kprobe" },
                    why,
                });
            }
            Err(e) => {
                let why = format!("{}; kprobe failed: {e}", why.unwrap_or_default());
                log::warn!("cannot probe {}: {why}", p.function);
                self.attachments.push(Attachment {
                    function: p.function.into(),
                    kind: p.kind.name().unwrap_or("?").into(),
                    how: "none",
                    why: Some(why),
                });
            }
        }
    }

    pub(super) fn attach_fentry(
        &mut self,
        p: &ProbePoint,
        btf: &aya::Btf,
    ) -> std::result::Result<FdLink, String> {
        if p.exit {
            let f: &mut FExit = program(&mut self.ebpf, p.fentry)?;
            f.load(p.function, btf).map_err(|e| render(&e))?;
            let id = f.attach().map_err(|e| render(&e))?;
            Ok(f.take_link(id).map_err(|e| render(&e))?.into())
        } else {
            let f: &mut FEntry = program(&mut self.ebpf, p.fentry)?;
            f.load(p.function, btf).map_err(|e| render(&e))?;
            let id = f.attach().map_err(|e| render(&e))?;
            Ok(f.take_link(id).map_err(|e| render(&e))?.into())
        }
    }

    /// Attaches a kprobe program (loading it the first time); the link stays
    /// in the program (see `perf_links`).
    pub(super) fn attach_kprobe(
        &mut self,
        prog: &str,
        function: &str,
    ) -> std::result::Result<KProbeLinkId, String> {
        let p: &mut KProbe = program(&mut self.ebpf, prog)?;
        if p.fd().is_err() {
            p.load().map_err(|e| render(&e))?;
        }
        p.attach(function, 0).map_err(|e| render(&e))
    }

    /// Walks `reboot_notifier_list` and probes every callback on it.
    pub(super) fn attach_notifiers(&mut self) -> std::result::Result<(), String> {
        let fd = {
            let p: &mut RawTracePoint = program(&mut self.ebpf, ebpf::PROG_WALK_NOTIFIERS)?;
            p.load().map_err(|e| render(&e))?;
            p.fd().map_err(|e| render(&e))?.as_fd().as_raw_fd()
        };
        test_run(fd).map_err(|e| e.to_string())?;
        let walk = Array::<_, u64>::try_from(
            self.ebpf
                .map(ebpf::MAP_NOTIFIER_WALK)
                .ok_or("no NOTIFIER_WALK map")?,
        )
        .map_err(|e| render(&e))?;
        let raw = walk.get(&0, 0).map_err(|e| render(&e))?;
        let truncated = raw >> 63 != 0;
        let count = (raw & !(1 << 63)).min(u64::from(NOTIFIER_WALK_SLOTS - 1)) as u32;
        let mut addrs = Vec::new();
        for i in 1..=count {
            addrs.push(walk.get(&i, 0).map_err(|e| render(&e))?);
        }
        if truncated {
            self.notes.push(format!(
                "more than {} reboot notifiers: only the first are traced",
                NOTIFIER_WALK_SLOTS - 1
            ));
        }
        let want: HashSet<u64> = addrs.iter().copied().collect();
        let ksyms = kallsyms(&[], &want).map_err(|e| e.to_string())?;
        let names = &ksyms.at;
        let mut attached_any = false;
        for a in addrs {
            let Some(name) = names.get(&a) else {
                self.notes.push(format!(
                    "reboot notifier at {a:#x} has no symbol: not traced"
                ));
                continue;
            };
            if ksyms.count(name) > 1 {
                self.notes.push(format!(
                    "reboot notifier {name} shares its name with other functions: not traced"
                ));
                continue;
            }
            if self.notifiers.len() >= NOTIFIER_MAX {
                self.notes.push(format!(
                    "more than {NOTIFIER_MAX} reboot notifiers: {name} not traced"
                ));
                continue;
            }
            let enter = self.attach_kprobe(ebpf::PROG_NOTIFIER_ENTER, name);
            let exit = self.attach_kprobe(ebpf::PROG_NOTIFIER_EXIT, name);
            match (enter, exit) {
                (Ok(a1), Ok(a2)) => {
                    self.perf_links
                        .push(PerfLink::KProbe(ebpf::PROG_NOTIFIER_ENTER, a1));
                    self.perf_links
                        .push(PerfLink::KProbe(ebpf::PROG_NOTIFIER_EXIT, a2));
                    self.notifiers.push((a, name.clone()));
                    attached_any = true;
                    log::info!("kprobe+kretprobe on reboot notifier {name}");
                }
                (e1, e2) => {
                    let why = [e1.err(), e2.err()]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>();
                    self.notes.push(format!(
                        "reboot notifier {name} not traced: {}",
                        why.join("; ")
                    ));
                }
            }
        }
        if attached_any {
            self.attached |= EventKind::NOTIFIER_ENTER.bit() | EventKind::NOTIFIER_EXIT.bit();
        }
        self.attachments.push(Attachment {
            function: "reboot notifier callbacks".into(),
            kind: "notifier_enter".into(),
            how: if attached_any { "kprobe" } else { "none" },
            why: Some(format!(
                "{} on reboot_notifier_list",
                self.notifiers
                    .iter()
                    .map(|(_, n)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        });
        Ok(())
    }

    /// Attaches both unit tracepoints ([`units`]; their links are kept for pinning).
    /// Either both attach or neither stays: a stop without its removal measures nothing.
    pub(super) fn attach_units(&mut self) {
        let mut links: Vec<FdLink> = Vec::new();
        let mut failed = None;
        for (tp, prog, _) in units::TRACEPOINTS {
            let r = (|| -> std::result::Result<FdLink, String> {
                let p: &mut RawTracePoint = program(&mut self.ebpf, prog)?;
                p.load().map_err(|e| render(&e))?;
                let id = p.attach(tp).map_err(|e| render(&e))?;
                Ok(p.take_link(id).map_err(|e| render(&e))?.into())
            })();
            match r {
                Ok(l) => links.push(l),
                Err(e) => {
                    failed = Some(format!("raw tracepoint {tp}: {e}"));
                    break;
                }
            }
        }
        let (how, why) = match failed {
            Some(why) => {
                // Dropping the links detaches what did attach.
                drop(links);
                self.notes
                    .push(format!("systemd units are not traced: {why}"));
                ("none", Some(why))
            }
            None => {
                self.links.extend(links);
                self.units = true;
                ("raw_tracepoint", None)
            }
        };
        for (tp, _, kind) in units::TRACEPOINTS {
            if self.units {
                self.attached |= kind.bit();
            }
            self.attachments.push(Attachment {
                function: format!("raw_tracepoint/{tp}"),
                kind: kind.name().unwrap_or("?").into(),
                how,
                why: why.clone(),
            });
        }
    }
}
