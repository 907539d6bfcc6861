//! The state file: `State`'s fold and queries, and its JSON form (versioned, each histogram
//! in HdrHistogram's V2 deflate encoding), read back with every field checked.

use super::*;

impl State {
    /// An empty state, created now.
    pub fn new() -> State {
        let now = now_unix_ns();
        State {
            created_unix_ns: now,
            updated_unix_ns: now,
            boots: 0,
            folded: VecDeque::new(),
            phases: Vec::new(),
            total: None,
            unit_stop: Vec::new(),
            unit_start: Vec::new(),
            units_refused: 0,
            last: None,
            corrupt_files: 0,
            warnings: Vec::new(),
        }
    }

    /// Reads the state in `dir` for a command that only reads (`export`, `serve`): under its
    /// lock when the lock file exists and can be opened, so never half way through another
    /// run's update. A missing directory or file is an empty state. Nothing in `dir` is
    /// created, renamed or removed: a corrupt file is left in place, counted in
    /// `corrupt_files` and reported in `warnings`.
    pub fn open(dir: &Path) -> Result<State> {
        if !dir.exists() {
            log::info!(
                "{}: no such directory: no reboot has been folded there yet",
                dir.display()
            );
            return Ok(State::new());
        }
        StateDir::open_existing(dir)?.read()
    }

    /// Adds one reboot: each phase's duration to that phase's histogram, `total_ns` to the
    /// whole-reboot histogram. A boot id seen before changes nothing. The boot is checked first
    /// and refused whole: a state never holds half a boot.
    pub fn fold(&mut self, boot: &Boot) -> Result<Fold> {
        validate(boot)?;
        if self.folded.iter().any(|id| id == &boot.boot_id) {
            return Ok(Fold::AlreadyFolded);
        }
        let now = now_unix_ns();
        for p in &boot.phases {
            let i = match self.phases.iter().position(|h| h.name == p.name) {
                Some(i) => i,
                None => {
                    self.phases.push(PhaseHistogram::new(&p.name, now)?);
                    self.phases.len() - 1
                }
            };
            if let Some(h) = self.phases.get_mut(i) {
                h.record(p.duration_ns)?;
            }
        }
        let total = match &mut self.total {
            Some(t) => t,
            None => self.total.insert(PhaseHistogram::new("total", now)?),
        };
        total.record(boot.total_ns)?;
        for u in &boot.units {
            let level = match u.level {
                UnitLevel::Stop => &mut self.unit_stop,
                UnitLevel::Start => &mut self.unit_start,
            };
            let i = match level.iter().position(|h| h.name == u.unit) {
                Some(i) => i,
                None if level.len() < MAX_UNIT_HISTOGRAMS => {
                    level.push(PhaseHistogram::new(&u.unit, now)?);
                    level.len() - 1
                }
                None => {
                    self.units_refused = self.units_refused.saturating_add(1);
                    continue;
                }
            };
            if let Some(h) = level.get_mut(i) {
                h.record(u.duration_ns)?;
            }
        }
        self.boots = self.boots.saturating_add(1);
        self.folded.push_back(boot.boot_id.clone());
        while self.folded.len() > REMEMBERED_BOOT_IDS {
            self.folded.pop_front();
        }
        self.last = Some(boot.clone());
        self.updated_unix_ns = now;
        Ok(Fold::Folded)
    }

    /// Reboots folded in.
    pub fn boots(&self) -> u64 {
        self.boots
    }

    /// One histogram per phase, in the order the phases were first seen (timeline order).
    pub fn phases(&self) -> &[PhaseHistogram] {
        &self.phases
    }

    /// The phase called `name`.
    pub fn phase(&self, name: &str) -> Option<&PhaseHistogram> {
        self.phases.iter().find(|p| p.name == name)
    }

    /// Per-unit histograms of one level, in the order the units were first folded.
    pub fn units(&self, level: UnitLevel) -> &[PhaseHistogram] {
        match level {
            UnitLevel::Stop => &self.unit_stop,
            UnitLevel::Start => &self.unit_start,
        }
    }

    /// Unit samples not folded because their level already had `MAX_UNIT_HISTOGRAMS` units.
    pub fn units_refused(&self) -> u64 {
        self.units_refused
    }

    /// The whole-reboot histogram (`total_ns` of every boot); None before the first fold.
    pub fn total(&self) -> Option<&PhaseHistogram> {
        self.total.as_ref()
    }

    /// The last boot folded in, as it was given.
    pub fn last(&self) -> Option<&Boot> {
        self.last.as_ref()
    }

    /// Whether `boot_id` was folded in (among the last `REMEMBERED_BOOT_IDS`).
    pub fn contains(&self, boot_id: &str) -> bool {
        self.folded.iter().any(|id| id == boot_id)
    }

    pub fn created_unix_ns(&self) -> u64 {
        self.created_unix_ns
    }

    pub fn updated_unix_ns(&self) -> u64 {
        self.updated_unix_ns
    }

    /// `state.json.corrupt-*` files in the directory the state was read from.
    pub fn corrupt_files(&self) -> usize {
        self.corrupt_files
    }

    /// What went wrong while reading the state (a corrupt file moved aside), already logged.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The state as stored in `state.json`.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        let file = StateFile {
            format: FORMAT.to_string(),
            version: VERSION,
            significant_digits: SIGNIFICANT_DIGITS,
            created_unix_ns: self.created_unix_ns,
            updated_unix_ns: self.updated_unix_ns,
            boots: self.boots,
            folded_boot_ids: self.folded.iter().cloned().collect(),
            total: self.total.as_ref().map(HistFile::encode).transpose()?,
            phases: self
                .phases
                .iter()
                .map(HistFile::encode)
                .collect::<Result<_>>()?,
            unit_stop: self
                .unit_stop
                .iter()
                .map(HistFile::encode)
                .collect::<Result<_>>()?,
            unit_start: self
                .unit_start
                .iter()
                .map(HistFile::encode)
                .collect::<Result<_>>()?,
            units_refused: self.units_refused,
            last: self.last.clone(),
        };
        let mut out = serde_json::to_vec_pretty(&file).map_err(|e| Error::HistogramEncode {
            what: "the state".into(),
            problem: e.to_string(),
        })?;
        out.push(b'\n');
        Ok(out)
    }

    /// Parses the contents of a `state.json` as [`StateDir::read`] does, without touching any
    /// file; `Err` says why the bytes are not a state this fastkexec can use. Pure (the fuzz
    /// target `histogram_state` drives it).
    pub fn parse(bytes: &[u8]) -> std::result::Result<State, String> {
        State::from_json(bytes).map_err(|d| match d {
            Decode::Corrupt(problem) => problem,
            Decode::Newer(v) => {
                format!("state format version {v}, this fastkexec reads {VERSION}")
            }
        })
    }

    /// Parses what `to_json` wrote; `Err` says why the bytes are not a usable state.
    pub(super) fn from_json(bytes: &[u8]) -> std::result::Result<State, Decode> {
        #[derive(Deserialize)]
        struct Header {
            format: Option<String>,
            version: Option<u32>,
        }
        let header: Header =
            serde_json::from_slice(bytes).map_err(|e| Decode::Corrupt(format!("not JSON: {e}")))?;
        if header.format.as_deref() != Some(FORMAT) {
            return Err(Decode::Corrupt(format!(
                "\"format\" is {:?}, not {FORMAT:?}",
                header.format
            )));
        }
        match header.version {
            Some(VERSION) => {}
            Some(v) if v > VERSION => return Err(Decode::Newer(v)),
            v => return Err(Decode::Corrupt(format!("unknown \"version\" {v:?}"))),
        }
        let file: StateFile = serde_json::from_slice(bytes)
            .map_err(|e| Decode::Corrupt(format!("bad field: {e}")))?;
        if file.significant_digits != SIGNIFICANT_DIGITS {
            return Err(Decode::Corrupt(format!(
                "\"significant_digits\" is {}, not {SIGNIFICANT_DIGITS}",
                file.significant_digits
            )));
        }
        let total = file.total.as_ref().map(HistFile::decode).transpose()?;
        let mut phases: Vec<PhaseHistogram> = Vec::with_capacity(file.phases.len());
        for f in &file.phases {
            let h = f.decode()?;
            if phases.iter().any(|p| p.name == h.name) {
                return Err(Decode::Corrupt(format!("phase {:?} twice", h.name)));
            }
            if h.count() == 0 || h.count() > file.boots {
                return Err(Decode::Corrupt(format!(
                    "phase {:?} holds {} values but {} boots were folded",
                    h.name,
                    h.count(),
                    file.boots
                )));
            }
            phases.push(h);
        }
        let phases = canonical_names(phases, file.boots)?;
        let mut last = file.last;
        if let Some(l) = &mut last {
            for p in &mut l.phases {
                if let Some(id) = crate::record::phases::canonical_id(&p.name) {
                    p.name = id.to_string();
                }
            }
        }
        let total_count = total.as_ref().map_or(0, PhaseHistogram::count);
        if total_count != file.boots {
            return Err(Decode::Corrupt(format!(
                "the total histogram holds {total_count} values but \"boots\" is {}",
                file.boots
            )));
        }
        if last.is_some() != (file.boots > 0)
            || file.folded_boot_ids.is_empty() != (file.boots == 0)
            || file.folded_boot_ids.len() > REMEMBERED_BOOT_IDS
        {
            return Err(Decode::Corrupt(format!(
                "\"last\", \"folded_boot_ids\" ({} ids) and \"boots\" ({}) disagree",
                file.folded_boot_ids.len(),
                file.boots
            )));
        }
        if let Some(last) = &last {
            validate(last).map_err(|e| Decode::Corrupt(format!("\"last\": {e}")))?;
        }
        let units = |files: &[HistFile], level: &str| {
            let mut out: Vec<PhaseHistogram> = Vec::with_capacity(files.len());
            if files.len() > MAX_UNIT_HISTOGRAMS {
                return Err(Decode::Corrupt(format!(
                    "{} {level} unit histograms, at most {MAX_UNIT_HISTOGRAMS} are kept",
                    files.len()
                )));
            }
            for f in files {
                let h = f.decode()?;
                if out.iter().any(|o| o.name == h.name) || h.count() > file.boots {
                    return Err(Decode::Corrupt(format!(
                        "{level} unit {:?}: twice, or more values ({}) than boots ({})",
                        h.name,
                        h.count(),
                        file.boots
                    )));
                }
                out.push(h);
            }
            Ok(out)
        };
        let unit_stop = units(&file.unit_stop, "stop")?;
        let unit_start = units(&file.unit_start, "start")?;
        Ok(State {
            created_unix_ns: file.created_unix_ns,
            updated_unix_ns: file.updated_unix_ns,
            boots: file.boots,
            folded: file.folded_boot_ids.into(),
            phases,
            total,
            unit_stop,
            unit_start,
            units_refused: file.units_refused,
            last,
            corrupt_files: 0,
            warnings: Vec::new(),
        })
    }
}

/// The histograms of a state under their phases' machine names: earlier fastkexec builds
/// stored the names the text report shows (`"kernel early boot"`), this one stores
/// `kernel_early_boot` ([`crate::record::phases::PhaseDef::id`]). A state folded by both holds two
/// histograms of one phase: they are added (their boots are distinct, so the count stays at
/// most `boots`), keeping the older creation time. Names of no known phase stay as they are.
pub(super) fn canonical_names(
    phases: Vec<PhaseHistogram>,
    boots: u64,
) -> std::result::Result<Vec<PhaseHistogram>, Decode> {
    let mut out: Vec<PhaseHistogram> = Vec::with_capacity(phases.len());
    for mut h in phases {
        if let Some(id) = crate::record::phases::canonical_id(&h.name) {
            h.name = id.to_string();
        }
        match out.iter_mut().find(|o| o.name == h.name) {
            None => out.push(h),
            Some(o) => {
                o.hist.add(&h.hist).map_err(|e| {
                    Decode::Corrupt(format!("histograms of phase {:?}: {e:?}", h.name))
                })?;
                o.sum_ns = o.sum_ns.saturating_add(h.sum_ns);
                o.created_unix_ns = o.created_unix_ns.min(h.created_unix_ns);
                if o.count() > boots {
                    return Err(Decode::Corrupt(format!(
                        "phase {:?} holds {} values under its two names but {boots} boots \
                         were folded",
                        o.name,
                        o.count()
                    )));
                }
            }
        }
    }
    Ok(out)
}

pub(super) enum Decode {
    Corrupt(String),
    Newer(u32),
}

#[derive(Serialize, Deserialize)]
pub(super) struct StateFile {
    format: String,
    version: u32,
    significant_digits: u8,
    created_unix_ns: u64,
    updated_unix_ns: u64,
    boots: u64,
    folded_boot_ids: Vec<String>,
    total: Option<HistFile>,
    phases: Vec<HistFile>,
    /// Per-unit histograms (opt-in; absent from states that never had one, so older readers
    /// and writers keep working).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    unit_stop: Vec<HistFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    unit_start: Vec<HistFile>,
    #[serde(default, skip_serializing_if = "is_zero")]
    units_refused: u64,
    last: Option<Boot>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Serialize, Deserialize)]
pub(super) struct HistFile {
    name: String,
    sum_ns: u64,
    created_unix_ns: u64,
    /// `encode_histogram`.
    hdr: String,
}

impl HistFile {
    pub(super) fn encode(h: &PhaseHistogram) -> Result<HistFile> {
        Ok(HistFile {
            name: h.name.clone(),
            sum_ns: h.sum_ns,
            created_unix_ns: h.created_unix_ns,
            hdr: encode_histogram(&h.hist, &h.name)?,
        })
    }

    pub(super) fn decode(&self) -> std::result::Result<PhaseHistogram, Decode> {
        let bad = |what: String| Decode::Corrupt(format!("histogram {:?}: {what}", self.name));
        if self.name.is_empty() || self.name.len() > MAX_NAME_LEN {
            return Err(bad("bad name".into()));
        }
        let hist = decode_histogram(&self.hdr).map_err(bad)?;
        // The exact sum must fall inside what the buckets allow.
        let n = u128::from(hist.len());
        let lo = n * u128::from(hist.lowest_equivalent(hist.min()));
        let hi = n * u128::from(hist.highest_equivalent(hist.max()));
        let sum = u128::from(self.sum_ns);
        if n > 0 && self.sum_ns != u64::MAX && (sum < lo || sum > hi) {
            return Err(bad(format!(
                "sum_ns {} outside what its {n} values allow ({lo}..={hi})",
                self.sum_ns
            )));
        }
        Ok(PhaseHistogram {
            name: self.name.clone(),
            hist,
            sum_ns: self.sum_ns,
            created_unix_ns: self.created_unix_ns,
        })
    }
}
