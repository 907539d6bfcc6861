//! Starting the tracer (programs loaded, record pages chained) and what it hands the load:
//! reserved pages, boot_params extras, the sealed header; pinning for follow mode.

use super::*;

impl Tracer {
    /// Loads the programs, maps and chains the record pages, attaches the probes.
    pub fn start(verbose: bool, lean: bool) -> Result<Self> {
        let t0 = Instant::now();
        let samples = clock::calibrate_monotonic(32);
        let boot_id = this_boot_id()?;
        let mut notes = Vec::new();

        let btf_path = Path::new("/sys/kernel/btf/vmlinux");
        let btf = if btf_path.exists() {
            match Btf::from_file(btf_path) {
                Ok(b) => Some(b),
                Err(e) => {
                    notes.push(format!(
                        "kernel BTF unusable ({e}): kprobes only, no device names"
                    ));
                    None
                }
            }
        } else {
            notes.push(format!(
                "{} missing: kprobes only, no device names",
                btf_path.display()
            ));
            None
        };
        log::info!("BTF parsed at {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);
        let aya_btf = if btf.is_some() {
            aya::Btf::from_sys_fs().ok()
        } else {
            None
        };

        let devices = count_devices(Path::new("/sys/devices"), 0);
        let pages =
            event_pages_for(devices).saturating_add(if lean { 0 } else { units::record_pages() });
        let (mut ebpf, mapped, phys) = allocate_record(1 + pages as usize)?;
        log::info!(
            "record: {} pages at {:.1} ms",
            phys.len(),
            t0.elapsed().as_secs_f64() * 1e3
        );

        // --- what the probes need to know about this kernel ---
        let syms = kallsyms(&["reboot_notifier_list"], &HashSet::new())?.names;
        log::info!("kallsyms at {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);
        let mut cfg = ProbeConfig {
            flags: if verbose { config::VERBOSE } else { 0 },
            ..ProbeConfig::default()
        };
        let mut device_names = false;
        if let Some(b) = &btf {
            let off = |s: &str, m: &str| b.member_offset(s, m);
            if let (Some(kobj), Some(name), Some(drv), Some(bus), Some(dn), Some(bn)) = (
                off("device", "kobj"),
                off("kobject", "name"),
                off("device", "driver"),
                off("device", "bus"),
                off("device_driver", "name"),
                off("bus_type", "name"),
            ) {
                cfg.dev_name_off = kobj + name;
                cfg.dev_driver_off = drv;
                cfg.dev_bus_off = bus;
                cfg.drv_name_off = dn;
                cfg.bus_name_off = bn;
                cfg.flags |= config::DEVICE_NAMES;
                device_names = true;
            } else {
                notes.push(
                    "BTF lacks a struct device member: devices are stamped without names".into(),
                );
            }
            if !lean {
                if let Err(e) = units::offsets(b, &mut cfg) {
                    notes.push(format!("systemd units are not traced: {e}"));
                }
            }
            let nb_ok = off("notifier_block", "notifier_call") == Some(0)
                && off("notifier_block", "next") == Some(8);
            match (
                syms.get("reboot_notifier_list"),
                off("blocking_notifier_head", "head"),
                nb_ok,
            ) {
                (Some(&list), Some(head), true) if list != 0 => {
                    cfg.reboot_list_head = list + u64::from(head)
                }
                (Some(0), _, _) => notes.push(
                    "/proc/kallsyms hides addresses (kptr_restrict): reboot notifiers are not \
                     traced"
                        .into(),
                ),
                _ => notes.push(
                    "reboot_notifier_list or its layout not found: reboot notifiers are not traced"
                        .into(),
                ),
            }
        }
        Array::<_, ProbeConfig>::try_from(ebpf.map_mut(ebpf::MAP_CONFIG).ok_or_else(|| {
            Error::Tracer {
                problem: "the eBPF object has no CONFIG map".into(),
            }
        })?)
        .and_then(|mut a| a.set(0, cfg, 0))
        .map_err(|e| Error::Tracer {
            problem: format!("writing the probe configuration failed: {}", render(&e)),
        })?;

        // --- chain the record pages ---
        let pages_total = phys.len();
        for (i, _) in phys.iter().enumerate() {
            let next = phys.get(i + 1).copied().unwrap_or(0);
            mapped.write(i * PAGE_SIZE, &next.to_le_bytes());
            if i == 0 {
                // type and len; the rest of the header page is sealed later.
                mapped.write(8, &handoff::event_page_prefix(0)[..8]);
            } else {
                mapped.write(i * PAGE_SIZE + 8, &handoff::event_page_prefix(i as u32));
            }
        }

        let mut tracer = Tracer {
            ebpf,
            pages: mapped,
            phys,
            attachments: Vec::new(),
            notifiers: Vec::new(),
            attached: 0,
            fentry: 0,
            device_names,
            boot_id,
            release: uname_release(),
            samples,
            links: Vec::new(),
            perf_links: Vec::new(),
            logger: None,
            notes,
            load_flags: 0,
            units: false,
        };

        // --- probes ---
        ensure_tracefs(&mut tracer.notes);
        let wanted: Vec<&str> = ebpf::PHASE_PROBES
            .iter()
            .chain([&ebpf::REBOOT_FALLBACK, &ebpf::DEVICE_PROBE])
            .map(|p| p.function)
            .collect();
        let ftrace = filter_functions(&wanted);
        if tracer.attach_tracepoint().is_err() {
            tracer.attach_point(
                &ebpf::REBOOT_FALLBACK,
                btf.as_ref(),
                aya_btf.as_ref(),
                ftrace.as_ref(),
            );
        }
        for p in &ebpf::PHASE_PROBES {
            tracer.attach_point(p, btf.as_ref(), aya_btf.as_ref(), ftrace.as_ref());
        }
        if lean {
            tracer
                .notes
                .push("--lean: no per-device, per-notifier or per-unit stamps".into());
        } else {
            if cfg.flags & config::UNIT_OFFSETS != 0 {
                tracer.attach_units();
            }
            tracer.attach_point(
                &ebpf::DEVICE_PROBE,
                btf.as_ref(),
                aya_btf.as_ref(),
                ftrace.as_ref(),
            );
        }
        log::info!(
            "probes attached at {:.1} ms",
            t0.elapsed().as_secs_f64() * 1e3
        );
        if cfg.reboot_list_head != 0 && !lean {
            if let Err(e) = tracer.attach_notifiers() {
                tracer
                    .notes
                    .push(format!("reboot notifiers are not traced: {e}"));
            }
        }
        if verbose {
            match aya_log::EbpfLogger::init(&mut tracer.ebpf) {
                Ok(l) => tracer.logger = Some(l),
                Err(e) => tracer
                    .notes
                    .push(format!("aya-log unavailable: {}", render(&e))),
            }
        }
        log::info!(
            "tracer ready in {:.1} ms: {} record pages ({} devices), {} probe points",
            t0.elapsed().as_secs_f64() * 1e3,
            pages_total,
            devices,
            tracer.attachments.len()
        );
        Ok(tracer)
    }
}

impl Tracer {
    /// Physical ranges of the record pages (no kexec segment may touch them).
    pub fn reserved(&self) -> Vec<(u64, u64)> {
        self.phys.iter().map(|&p| (p, PAGE_SIZE as u64)).collect()
    }

    /// What the load must add: reserved pages, the chain, the TSC target,
    /// and the boot id on the command line.
    pub fn load_extras(&self) -> LoadExtras {
        let head = self.phys.first().copied().unwrap_or(0);
        LoadExtras {
            reserved: self
                .reserved()
                .into_iter()
                .map(|(start, size)| crate::host::e820::PhysRange::from_len(start, size))
                .collect(),
            plan: PlanExtras {
                setup_data: Vec::new(),
                setup_data_tail: head,
                tsc_out: head + OFF_PURGATORY as u64,
            },
            trampoline_tsc_out: head + OFF_TRAMPOLINE as u64,
            cmdline_append: Some(format!(
                "{CMDLINE_BOOT_ID}={}",
                handoff::format_uuid(&self.boot_id)
            )),
            phys_delta: 0,
        }
    }

    /// Writes the header page: calibration (over every sample since `start`),
    /// probe set, notifier symbols, the request stamp; then the checksum.
    pub fn seal(&mut self, request: Option<(u64, u64)>, damage: Option<Damage>) -> Result<()> {
        self.samples.extend(clock::calibrate_monotonic(32));
        let calib = Fit::from_samples(&self.samples).ok_or_else(|| Error::Tracer {
            problem: "the TSC does not advance against CLOCK_MONOTONIC: no clock to put the \
                      trace on"
                .into(),
        })?;
        let mut fl = self.load_flags;
        if self.device_names {
            fl |= flags::DEVICE_NAMES;
        }
        let (request_tsc, request_mono_ns) = match request {
            Some(r) => {
                fl |= flags::REQUEST_STAMPED;
                r
            }
            None => {
                fl |= flags::FOLLOW;
                (0, 0)
            }
        };
        let mut boot_id = self.boot_id;
        if damage == Some(Damage::OtherBoot) {
            boot_id[0] ^= 0xff;
        }
        let info = HeaderInfo {
            page_count: self.phys.len() as u32,
            flags: fl,
            boot_id,
            kernel_release: self.release.clone(),
            attached: self.attached,
            fentry: self.fentry,
            request_tsc,
            request_mono_ns,
            calib,
            notifiers: self.notifiers.clone(),
        };
        let page = handoff::encode_header(&info);
        // Everything from the setup_data type up to the probe counters.
        self.pages.write(8, page.get(8..OFF_CLAIMED).unwrap_or(&[]));
        if damage == Some(Damage::HeaderByte) {
            let b = page.get(100).copied().unwrap_or(0) ^ 0x01;
            self.pages.write(100, &[b]);
        }
        log::info!(
            "record sealed: TSC {:.6} MHz (fit over {} pairs, worst residual {} ns)",
            calib.tsc_hz() / 1e6,
            self.samples.len(),
            calib.err_ns
        );
        Ok(())
    }

    /// Events stored so far and the number claimed.
    pub fn events(&self) -> (u64, Vec<Event>) {
        let claimed = self.pages.read_u64(OFF_CLAIMED);
        let cap = (self.phys.len() as u64 - 1) * EVENTS_PER_PAGE as u64;
        let mut out = Vec::new();
        for slot in 0..claimed.min(cap) {
            let (page, off) = handoff::slot_place(slot);
            let bytes = self.pages.read(
                page as usize * PAGE_SIZE + off,
                std::mem::size_of::<Event>(),
            );
            out.push(handoff::event_from(&bytes));
        }
        (claimed, out)
    }

    /// The probes' state bits.
    pub fn state(&self) -> u64 {
        self.pages.read_u64(OFF_STATE)
    }

    /// Starts stamping units ([`units`]: at `trace --exec`'s request, at attach in follow
    /// mode).
    pub fn arm_units(&mut self) -> Result<()> {
        if !self.units {
            return Ok(());
        }
        let mut cfg: Array<_, ProbeConfig> = Array::try_from(
            self.ebpf
                .map_mut(ebpf::MAP_CONFIG)
                .ok_or_else(|| Error::Tracer {
                    problem: "the eBPF object has no CONFIG map".into(),
                })?,
        )
        .map_err(|e| Error::Tracer {
            problem: format!("the CONFIG map: {}", render(&e)),
        })?;
        let mut c = cfg.get(&0, 0).map_err(|e| Error::Tracer {
            problem: format!("reading the probe configuration failed: {}", render(&e)),
        })?;
        c.flags |= config::UNITS_ARMED;
        cfg.set(0, c, 0).map_err(|e| Error::Tracer {
            problem: format!("arming the unit probes failed: {}", render(&e)),
        })
    }

    /// Drains aya-log records (with `-v`) into the log.
    pub fn flush_log(&mut self) {
        if let Some(l) = &mut self.logger {
            l.flush();
        }
    }

    /// Pins every link under `dir` (bpffs) so the probes, and the record
    /// pages their programs hold, outlive this process.
    pub fn pin(&mut self, dir: &Path) -> Result<()> {
        let unpinnable = || Error::Tracer {
            problem: "this kernel's kprobe/tracepoint links cannot be pinned (no BPF perf links \
                      before 5.15): use --exec --force, so this process holds the probes until \
                      the reboot"
                .into(),
        };
        for l in std::mem::take(&mut self.perf_links) {
            let link = match l {
                PerfLink::KProbe(prog, id) => {
                    let p: &mut KProbe = self
                        .ebpf
                        .program_mut(prog)
                        .and_then(|p| p.try_into().ok())
                        .ok_or_else(unpinnable)?;
                    let link = p.take_link(id).map_err(|_| unpinnable())?;
                    FdLink::try_from(link).map_err(|_| unpinnable())?
                }
                PerfLink::TracePoint(id) => {
                    let p: &mut TracePoint = self
                        .ebpf
                        .program_mut(ebpf::PROG_TP_REBOOT)
                        .and_then(|p| p.try_into().ok())
                        .ok_or_else(unpinnable)?;
                    let link = p.take_link(id).map_err(|_| unpinnable())?;
                    FdLink::try_from(link).map_err(|_| unpinnable())?
                }
            };
            self.links.push(link);
        }
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        for (i, link) in std::mem::take(&mut self.links).into_iter().enumerate() {
            let path = dir.join(format!("link{i}"));
            link.pin(&path).map_err(|e| Error::Tracer {
                problem: format!(
                    "pinning {} failed: {} (is bpffs mounted at /sys/fs/bpf?)",
                    path.display(),
                    render(&e)
                ),
            })?;
        }
        Ok(())
    }
}

/// A perf-event link still owned by its program.
#[derive(Debug)]
pub(super) enum PerfLink {
    KProbe(&'static str, KProbeLinkId),
    TracePoint(TracePointLinkId),
}

/// Removes pins a previous follow-mode tracer left in this boot.
pub fn unpin(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let _ = fs::remove_file(e.path());
        }
    }
    let _ = fs::remove_dir(dir);
}
