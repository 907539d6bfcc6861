//! Reading the record back in the new kernel: the setup_data nodes from sysfs, assembled
//! and checked page by page into a [`Record`].

use super::*;

/// One setup_data node as the new kernel shows it in sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Its number (directory name), for messages.
    pub nr: u32,
    pub kind: u32,
    pub data: Vec<u8>,
}

/// Where the running kernel lists the setup_data nodes it was booted with.
pub fn setup_data_dir(root: &Path) -> PathBuf {
    root.join("sys/kernel/boot_params/setup_data")
}

/// Reads every setup_data node of our type (other types are skipped without
/// reading their data). A missing directory means no nodes at all.
pub fn read_nodes(root: &Path) -> Result<Vec<Node>> {
    let dir = setup_data_dir(root);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(&dir, e)),
    };
    let mut nodes = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(&dir, e))?;
        let Some(nr) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let tpath = entry.path().join("type");
        let text = fs::read_to_string(&tpath).map_err(|e| Error::io(&tpath, e))?;
        let t = text.trim();
        let kind =
            u32::from_str_radix(t.trim_start_matches("0x"), 16).map_err(|_| Error::Parse {
                path: tpath.clone(),
                what: "setup_data type",
                content: t.to_string(),
            })?;
        if kind != SETUP_TYPE_TRACE {
            continue;
        }
        let dpath = entry.path().join("data");
        let data = fs::read(&dpath).map_err(|e| Error::io(&dpath, e))?;
        nodes.push(Node { nr, kind, data });
    }
    nodes.sort_by_key(|n| n.nr);
    Ok(nodes)
}

/// Assembles and validates the record from the setup_data nodes.
pub fn parse(nodes: &[Node]) -> std::result::Result<Record, RecordError> {
    let ours: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.kind == SETUP_TYPE_TRACE)
        .collect();
    if ours.is_empty() {
        return Err(RecordError::Missing(format!(
            "no boot_params setup_data node of type {SETUP_TYPE_TRACE:#x}: the previous kernel did \
             not run `fastkexec trace`, or loaded this kernel in file mode or with another loader \
             (the record can only ride along in uncompressed or staged mode)"
        )));
    }
    // Rebuild whole pages: the 16-byte setup_data header is not in `data`.
    let mut header: Option<Vec<u8>> = None;
    let mut pages: Vec<(u32, u32, Vec<u8>)> = Vec::new();
    for n in &ours {
        if n.data.len() != PAGE_DATA_LEN {
            return Err(RecordError::Torn(format!(
                "setup_data node {} holds {} bytes, a record page holds {PAGE_DATA_LEN}",
                n.nr,
                n.data.len()
            )));
        }
        let mut page = vec![0u8; SETUP_DATA_HEADER_SIZE];
        page.extend_from_slice(&n.data);
        if get_u64(&page, offset_of!(HeaderPage, magic)) == RECORD_MAGIC {
            if header.is_some() {
                return Err(RecordError::Torn(
                    "two header pages: records of two reboots are mixed".into(),
                ));
            }
            header = Some(page);
        } else if get_u32(&page, offset_of!(EventPage, magic)) == PAGE_MAGIC {
            pages.push((n.nr, get_u32(&page, offset_of!(EventPage, index)), page));
        } else {
            return Err(RecordError::Torn(format!(
                "setup_data node {} has neither the record magic nor the page magic",
                n.nr
            )));
        }
    }
    let Some(hp) = header else {
        return Err(RecordError::Torn("the header page is missing".into()));
    };

    let version = get_u32(&hp, offset_of!(HeaderPage, version));
    if version != RECORD_VERSION {
        return Err(RecordError::Torn(format!(
            "record version {version}, this fastkexec reads version {RECORD_VERSION} (use the \
             fastkexec build that wrote it)"
        )));
    }
    let stored = get_u64(&hp, HEADER_SUM_AT);
    let computed = header_checksum(&hp);
    if stored != computed {
        return Err(RecordError::Torn(format!(
            "header checksum {stored:#018x} stored, {computed:#018x} computed: the header page was \
             changed after the tracer sealed it"
        )));
    }
    if hp
        .get(OFF_LAST_EXIT + 8..)
        .is_some_and(|t| t.iter().any(|&b| b != 0))
    {
        return Err(RecordError::Torn(
            "unused bytes of the header page are not zero".into(),
        ));
    }
    let page_count = get_u32(&hp, offset_of!(HeaderPage, page_count));
    let event_size = get_u32(&hp, offset_of!(HeaderPage, event_size));
    let epp = get_u32(&hp, offset_of!(HeaderPage, events_per_page));
    if event_size as usize != size_of::<Event>() || epp as usize != EVENTS_PER_PAGE {
        return Err(RecordError::Torn(format!(
            "events of {event_size} bytes, {epp} per page; this fastkexec reads {} and {}",
            size_of::<Event>(),
            EVENTS_PER_PAGE
        )));
    }
    if !(1..=MAX_EVENT_PAGES + 1).contains(&page_count) {
        return Err(RecordError::Torn(format!(
            "length of {page_count} pages is impossible"
        )));
    }
    if ours.len() != page_count as usize {
        return Err(RecordError::Torn(format!(
            "the header says {page_count} pages, {} setup_data nodes of the record arrived",
            ours.len()
        )));
    }
    let mut by_index: Vec<Option<&Vec<u8>>> = vec![None; page_count as usize];
    for (nr, idx, page) in &pages {
        match by_index.get_mut(*idx as usize) {
            Some(slot @ None) if *idx != 0 => *slot = Some(page),
            _ => {
                return Err(RecordError::Torn(format!(
                    "setup_data node {nr} claims page index {idx}, which is out of range or taken"
                )))
            }
        }
    }
    if let Some(missing) = (1..page_count as usize).find(|&i| by_index[i].is_none()) {
        return Err(RecordError::Torn(format!(
            "event page {missing} is missing"
        )));
    }

    let counters = ProbeCounters {
        claimed: get_u64(&hp, OFF_CLAIMED),
        event_sum: get_u64(&hp, OFF_EVENT_SUM),
        probe_ns: get_u64(&hp, OFF_PROBE_NS),
        state: get_u64(&hp, OFF_STATE),
        last_exit_ns: get_u64(&hp, OFF_LAST_EXIT),
    };
    let capacity = u64::from(page_count - 1) * EVENTS_PER_PAGE as u64;
    let stored_n = counters.claimed.min(capacity);
    let mut events = Vec::with_capacity(stored_n as usize);
    let mut sum = 0u64;
    for slot in 0..capacity {
        let (page, off) = slot_place(slot);
        let Some(Some(p)) = by_index.get(page as usize) else {
            return Err(RecordError::Torn(format!("event page {page} is missing")));
        };
        let bytes = p.get(off..off + size_of::<Event>()).unwrap_or(&[]);
        if slot < stored_n {
            let e = event_from(bytes);
            if e.kind == 0 {
                return Err(RecordError::Torn(format!(
                    "event {slot} was claimed but never written (the reboot overtook a probe)"
                )));
            }
            sum = sum.wrapping_add(event_hash(slot as u32, &e));
            events.push(e);
        } else if bytes.iter().any(|&b| b != 0) {
            return Err(RecordError::Torn(format!(
                "slot {slot} after the last of {stored_n} events is not empty"
            )));
        }
    }
    if sum != counters.event_sum {
        return Err(RecordError::Torn(format!(
            "the events do not add up to the probes' checksum ({sum:#018x} computed, {:#018x} \
             stored): an event was changed or lost after it was written",
            counters.event_sum
        )));
    }
    // Bytes the record never uses must still be zero.
    for (i, p) in by_index.iter().enumerate().skip(1) {
        if let Some(p) = p {
            let used = PAGE_EVENTS_OFFSET + EVENTS_PER_PAGE * size_of::<Event>();
            let reserved = offset_of!(EventPage, reserved);
            if p.get(used..).is_some_and(|t| t.iter().any(|&b| b != 0)) || get_u64(p, reserved) != 0
            {
                return Err(RecordError::Torn(format!(
                    "unused bytes of event page {i} are not zero"
                )));
            }
        }
    }

    // A TSC record (magic, entry, exit, one more word) as our blobs copy it.
    let stamps = |off: usize, magic: u64, who: &str| match get_u64(&hp, off) == magic {
        false => Ok(None),
        true => {
            let (entry, exit) = (get_u64(&hp, off + 8), get_u64(&hp, off + 16));
            if exit < entry {
                return Err(RecordError::Torn(format!(
                    "{who} stamps run backwards (entry {entry} > exit {exit})"
                )));
            }
            Ok(Some((entry, exit, get_u64(&hp, off + 24))))
        }
    };
    let purgatory = stamps(OFF_PURGATORY, PURGATORY_MAGIC, "purgatory")?.map(
        |(entry_tsc, exit_tsc, verified)| PurgatoryStamps {
            entry_tsc,
            exit_tsc,
            verified,
        },
    );
    let trampoline = stamps(OFF_TRAMPOLINE, TRAMPOLINE_MAGIC, "trampoline")?.map(
        |(entry_tsc, exit_tsc, result)| TrampolineStamps {
            entry_tsc,
            exit_tsc,
            result,
        },
    );
    if let Some(t) = trampoline {
        // It jumps to the purgatory, so it cannot have run after it.
        if let Some(p) = purgatory.filter(|p| p.entry_tsc < t.exit_tsc) {
            return Err(RecordError::Torn(format!(
                "the trampoline's exit stamp {} is after the purgatory's entry stamp {}",
                t.exit_tsc, p.entry_tsc
            )));
        }
    }

    let mut boot_id = [0u8; 16];
    if let Some(b) = hp.get(offset_of!(HeaderPage, boot_id)..offset_of!(HeaderPage, boot_id) + 16) {
        boot_id.copy_from_slice(b);
    }
    let release_at = offset_of!(HeaderPage, kernel_release);
    let n_notifiers =
        (get_u32(&hp, offset_of!(HeaderPage, notifier_count)) as usize).min(NOTIFIER_MAX);
    let notifiers = (0..n_notifiers)
        .map(|i| {
            let base = offset_of!(HeaderPage, notifiers) + i * size_of::<NotifierSym>();
            (
                get_u64(&hp, base),
                until_nul(
                    hp.get(base + 8..base + 8 + NOTIFIER_NAME_LEN)
                        .unwrap_or(&[]),
                ),
            )
        })
        .collect();
    let header = HeaderInfo {
        page_count,
        flags: get_u32(&hp, offset_of!(HeaderPage, flags)),
        boot_id,
        kernel_release: until_nul(hp.get(release_at..release_at + 64).unwrap_or(&[])),
        attached: get_u64(&hp, offset_of!(HeaderPage, attached)),
        fentry: get_u64(&hp, offset_of!(HeaderPage, fentry)),
        request_tsc: get_u64(&hp, offset_of!(HeaderPage, request_tsc)),
        request_mono_ns: get_u64(&hp, offset_of!(HeaderPage, request_mono_ns)),
        calib: Fit {
            tsc_a: get_u64(&hp, offset_of!(HeaderPage, calib_tsc_a)),
            ns_a: get_u64(&hp, offset_of!(HeaderPage, calib_mono_a)),
            tsc_b: get_u64(&hp, offset_of!(HeaderPage, calib_tsc_b)),
            ns_b: get_u64(&hp, offset_of!(HeaderPage, calib_mono_b)),
            err_ns: get_u64(&hp, offset_of!(HeaderPage, calib_err_ns)),
        },
        notifiers,
    };
    let rec = Record {
        dropped: counters.claimed.saturating_sub(capacity),
        header,
        events,
        counters,
        purgatory,
        trampoline,
    };
    check_plausible(&rec)?;
    Ok(rec)
}
