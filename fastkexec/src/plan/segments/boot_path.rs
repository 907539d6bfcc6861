//! A way into the planned kernel: a boot block (zero page, command line, EFI map, setup_data)
//! and a purgatory that jumps to the kernel with it; staged mode adds a second one.

use super::*;

/// What one way into the kernel is built from: a boot block (zero page with
/// its e820 map, command line, EFI map, setup_data) and a purgatory that
/// jumps to `entry` with it.
pub(super) struct BootPathInput<'a> {
    pub(super) host: &'a HostBootInfo,
    pub(super) e820: &'a [e820::E820Entry],
    pub(super) setup_header: Option<&'a SetupHeader>,
    pub(super) cmdline: &'a str,
    /// Physical address and exact size.
    pub(super) initrd: Option<(u64, u64)>,
    pub(super) entry: u64,
    pub(super) extras: &'a PlanExtras,
    pub(super) within: Option<PhysRange>,
    /// Segments the purgatory checksums before the jump (the new boot block
    /// is added to them); `None` = no verification.
    pub(super) verify: Option<&'a [Segment]>,
}

/// The two segments of a boot path and what the summary shows of them.
pub(super) struct BootPath {
    pub(super) block: Segment,
    pub(super) purgatory: Segment,
    pub(super) boot_params_addr: u64,
    pub(super) cmdline_addr: u64,
    pub(super) setup_data: Vec<SetupDataSummary>,
    pub(super) efi: EfiHandoff,
    pub(super) verified: usize,
}

/// Places and builds a boot block and its purgatory top-down, clear of
/// `used` (which grows by both).
pub(super) fn boot_path(b: &BootPathInput, used: &mut Vec<PhysRange>) -> Result<BootPath> {
    let host = b.host;
    let (efi, efi_state) = match bootparams::efi_parts(host) {
        Ok(p) => {
            let state = EfiHandoff::Passed {
                runtime_regions: p.runtime_regions,
            };
            (Some(p), state)
        }
        Err(state) => (None, state),
    };
    let mut nodes: Vec<SetupData> = Vec::new();
    nodes.extend(bootparams::e820_ext_node(b.e820));
    if let Some(p) = &efi {
        nodes.push(p.setup.clone());
    }
    if let Some(seed) = &host.rng_seed {
        nodes.push(bootparams::rng_seed_node(seed));
    }
    nodes.extend(b.extras.setup_data.iter().cloned());
    let layout = bootparams::layout_boot_block(
        b.cmdline.len(),
        efi.as_ref().map_or(0, |p| p.memmap.len()),
        &nodes,
    );
    let boot_base = place_low(
        host,
        used,
        layout.size,
        "boot_params, command line and setup_data",
        b.within,
    )?;
    used.push(PhysRange::from_len(boot_base, layout.size));

    let mut purg = Purgatory::new()?;
    let purg_memsz = page_up(purg.bytes().len() as u64)?;
    let purg_base = place_low(host, used, purg_memsz, "the purgatory", b.within)?;
    used.push(PhysRange::from_len(purg_base, purg_memsz));

    let at = |off: u64| boot_base + off;
    let setup_data_head = match layout.nodes.first() {
        Some(&o) => at(o),
        None => b.extras.setup_data_tail,
    };
    let cmdline_addr = at(layout.cmdline);
    let zero_page = bootparams::build_zero_page(&ZeroPageInput {
        host,
        setup_header: b.setup_header,
        e820: b.e820,
        cmdline_addr,
        initrd: b.initrd,
        setup_data_head,
        efi: efi.as_ref().zip(layout.efi_memmap.map(at)),
    })?;
    let data = bootparams::build_boot_block(
        boot_base,
        &layout,
        &zero_page,
        b.cmdline,
        efi.as_ref().map(|p| p.memmap.as_slice()),
        &nodes,
        b.extras.setup_data_tail,
    )?;
    let block = Segment {
        data: data.into(),
        mem: boot_base,
        memsz: layout.size,
        what: "boot_params, command line, setup_data".into(),
    };

    let verify: Vec<VerifyEntry> = match b.verify {
        Some(segs) => segs
            .iter()
            .chain(std::iter::once(&block))
            .filter(|s| !s.data.is_empty())
            .map(|s| VerifyEntry::for_data(s.mem, &s.data))
            .collect(),
        None => Vec::new(),
    };
    purg.set(purgatory::ENTRY, b.entry);
    purg.set(purgatory::BOOT_PARAMS, at(layout.zero_page));
    purg.set(purgatory::STACK_TOP, purg_base + purg.stack_end() as u64);
    purg.set(purgatory::TSC_OUT, b.extras.tsc_out);
    purg.set_verify(&verify)?;
    let setup_data = layout
        .nodes
        .iter()
        .zip(&nodes)
        .map(|(&o, n)| SetupDataSummary {
            addr: at(o),
            kind: n.kind,
            len: n.data.len() as u32,
        })
        .collect();
    Ok(BootPath {
        block,
        purgatory: Segment {
            data: purg.into_bytes().into(),
            mem: purg_base,
            memsz: purg_memsz,
            what: "purgatory".into(),
        },
        boot_params_addr: at(layout.zero_page),
        cmdline_addr,
        setup_data,
        efi: efi_state,
        verified: verify.len(),
    })
}

/// Test only (`load --test-wrong-verify-sum`, the lab's `fastkexec-verify-mismatch`): records
/// a wrong checksum for the first segment in the purgatory's verify table, as if that segment
/// had changed after load, so the purgatory must stop with its mismatch message at exec.
/// Rewriting the table is cleaner than corrupting a loaded segment: nothing but the expected
/// sum changes, the segments the kernel copies are exactly the good ones, and no memory is
/// written behind the kernel's back. Returns the segment's address.
pub fn spoil_first_verify_sum(plan: &mut Plan) -> Result<u64> {
    let fail = |problem: &str| Error::Plan {
        problem: problem.into(),
    };
    let seg = plan
        .segments
        .iter_mut()
        .find(|s| s.mem == plan.entry)
        .ok_or_else(|| fail("no purgatory segment at the entry point"))?;
    let mut purg = Purgatory::from_bytes(seg.data.to_vec())?;
    let mut entries = purg.verify_entries();
    let first = entries
        .first_mut()
        .ok_or_else(|| fail("the verify table is empty: load with --verify"))?;
    first.sum ^= 0x5a5a;
    let addr = first.addr;
    purg.set_verify(&entries)?;
    seg.data = purg.into_bytes().into();
    Ok(addr)
}

/// A second way into a planned kernel, as [`add_boot_path`] placed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtraBootPath {
    /// Where its purgatory starts: the entry point of this path.
    pub purgatory_addr: u64,
    pub boot_params_addr: u64,
    pub cmdline_addr: u64,
    pub e820_entries: usize,
}

/// Adds a second way into the kernel of `plan` (staged mode's panic path):
/// another boot block with its own e820 map and command line, no tracer chain
/// and no TSC copy, and another purgatory that jumps to the same kernel entry
/// with it. Both are placed clear of every segment of the plan and of
/// `input.reserved`, inside `within` when given. `input` must be the one the
/// plan was made from (its host facts and setup header are reused).
pub fn add_boot_path(
    plan: &mut Plan,
    input: &UncompressedInput,
    e820_map: &[e820::E820Entry],
    cmdline: &str,
    within: Option<PhysRange>,
) -> Result<ExtraBootPath> {
    let caps = bootparams::header_caps(input.setup_header);
    check_cmdline(cmdline, &caps)?;
    let reserved = input.reserved_ranges();
    let mut used: Vec<PhysRange> = plan.segments.iter().map(Segment::range).collect();
    used.extend(reserved.iter().copied());
    let path = boot_path(
        &BootPathInput {
            host: input.host,
            e820: e820_map,
            setup_header: input.setup_header,
            cmdline,
            initrd: plan.summary.initrd,
            entry: plan.summary.kernel_entry,
            extras: &PlanExtras::default(),
            within,
            verify: None,
        },
        &mut used,
    )?;
    let extra = ExtraBootPath {
        purgatory_addr: path.purgatory.mem,
        boot_params_addr: path.boot_params_addr,
        cmdline_addr: path.cmdline_addr,
        e820_entries: e820_map.len(),
    };
    let before = plan.segments.len();
    plan.segments.push(path.block);
    plan.segments.push(path.purgatory);
    if let Err(e) = validate(&plan.segments, &input.host.memmap, &reserved) {
        plan.segments.truncate(before);
        return Err(e);
    }
    Ok(extra)
}
