//! What the running machine's firmware told the running kernel, which the
//! next kernel must be told again because no firmware runs in between:
//! the memory map, the ACPI root pointer, EFI state and a few boot_params
//! fields. Read from sysfs under a root prefix so tests can point it at a
//! fixture tree (`tests/fixtures/host/<name>/sys/...`).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::host::e820::{self, E820Entry, PhysRange};
use crate::image::bootproto::off::ACPI_RSDP_ADDR;

/// Size of `struct boot_params` (the zero page).
pub const BOOT_PARAMS_SIZE: usize = 4096;

/// The `KEY=0xADDR` lines of `/sys/firmware/efi/systab`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EfiSystab {
    pub acpi20: Option<u64>,
    pub acpi: Option<u64>,
    pub smbios: Option<u64>,
    pub smbios3: Option<u64>,
}

/// One EFI memory descriptor of a region the runtime services use, as the
/// running kernel mapped it (`/sys/firmware/efi/runtime-map/N/`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EfiMemoryDescriptor {
    pub kind: u32,
    pub phys_addr: u64,
    pub virt_addr: u64,
    pub num_pages: u64,
    pub attribute: u64,
}

/// Size of `efi_memory_desc_t` as we write it for the next kernel.
pub const EFI_MEMORY_DESC_SIZE: usize = 40;

impl EfiMemoryDescriptor {
    /// `efi_memory_desc_t`: u32 type, u32 pad, u64 phys, u64 virt, u64 pages, u64 attribute.
    pub fn to_bytes(&self) -> [u8; EFI_MEMORY_DESC_SIZE] {
        let mut b = [0u8; EFI_MEMORY_DESC_SIZE];
        b[0..4].copy_from_slice(&self.kind.to_le_bytes());
        b[8..16].copy_from_slice(&self.phys_addr.to_le_bytes());
        b[16..24].copy_from_slice(&self.virt_addr.to_le_bytes());
        b[24..32].copy_from_slice(&self.num_pages.to_le_bytes());
        b[32..40].copy_from_slice(&self.attribute.to_le_bytes());
        b
    }
}

/// What a kexec'd kernel needs to keep using EFI runtime services: SetVirtualAddressMap
/// can only be called once per boot, so the next kernel must reuse the
/// running kernel's mappings (the runtime map) instead of making new ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EfiRuntime {
    /// `/sys/firmware/efi/fw_vendor`: physical address of the vendor string.
    pub fw_vendor: u64,
    /// `/sys/firmware/efi/runtime`: physical address of the runtime services table.
    pub runtime: u64,
    /// `/sys/firmware/efi/config_table`: physical address of the configuration table.
    pub config_table: u64,
    /// `/sys/firmware/efi/runtime-map/*`, in index order.
    pub runtime_map: Vec<EfiMemoryDescriptor>,
}

/// Facts about the running machine that the next kernel's boot_params are
/// built from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostBootInfo {
    /// `/sys/kernel/boot_params/data`: the zero page the running kernel
    /// booted with (exactly [`BOOT_PARAMS_SIZE`] bytes), if readable.
    pub boot_params: Option<Vec<u8>>,
    /// `/sys/firmware/efi/systab`, on EFI machines.
    pub efi_systab: Option<EfiSystab>,
    /// Physical address of the ACPI RSDP: the running kernel's
    /// `acpi_rsdp_addr` (boot_params 0x070) if non-zero, else the systab's
    /// `ACPI20=` then `ACPI=` line. `None` on a legacy BIOS machine whose
    /// loader did not fill the field: the next kernel then scans the EBDA and
    /// the 0xE0000–0xFFFFF BIOS area itself, as it did on this boot.
    pub acpi_rsdp: Option<u64>,
    /// `/sys/firmware/memmap`, sorted by address.
    pub memmap: Vec<E820Entry>,
    /// `/sys/firmware/efi` exists: the running kernel was booted by EFI.
    pub efi_booted: bool,
    /// What the next kernel needs to keep EFI runtime services; `None` when
    /// not EFI-booted or when the running kernel exposes no runtime map
    /// (then the next kernel boots as on a legacy machine).
    pub efi_runtime: Option<EfiRuntime>,
    /// The top-level "System RAM" ranges of `/proc/iomem`: RAM as the
    /// running kernel sees it now, which is narrower than the firmware map
    /// where the kernel keeps firmware data alive (EFI tables it reserved,
    /// page 0, ...). Segments we place go only where both agree. `None` when
    /// unreadable or shown without addresses (not root).
    pub iomem_ram: Option<Vec<PhysRange>>,
    /// 32 random bytes for the next kernel's `SETUP_RNG_SEED`, taken with
    /// getrandom(2) while reading; `None` if the kernel had none to give.
    pub rng_seed: Option<[u8; 32]>,
}

impl HostBootInfo {
    /// A little-endian field of the running kernel's boot_params.
    pub fn boot_param_bytes(&self, off: usize, len: usize) -> Option<&[u8]> {
        self.boot_params.as_ref()?.get(off..off.checked_add(len)?)
    }

    pub fn boot_param_u32(&self, off: usize) -> Option<u32> {
        crate::bytes::u32_at(self.boot_params.as_ref()?, off)
    }

    pub fn boot_param_u64(&self, off: usize) -> Option<u64> {
        crate::bytes::u64_at(self.boot_params.as_ref()?, off)
    }
}

/// Reads everything below `root` (`/` on a live system).
pub fn read(root: &Path) -> Result<HostBootInfo> {
    let sys = |rel: &str| -> PathBuf { root.join(rel) };

    let memmap = e820::read_sysfs_memmap(&sys("sys/firmware/memmap")).map_err(|e| match e {
        Error::Io { path, source } if source.kind() == std::io::ErrorKind::NotFound => {
            Error::HostInfo {
                path,
                problem: "no firmware memory map; the running kernel needs CONFIG_FIRMWARE_MEMMAP=y for fastkexec to build the next kernel's e820 table".into(),
            }
        }
        other => other,
    })?;

    let bp_path = sys("sys/kernel/boot_params/data");
    let boot_params = match std::fs::read(&bp_path) {
        Ok(data) if data.len() == BOOT_PARAMS_SIZE => Some(data),
        Ok(data) => {
            return Err(Error::HostInfo {
                path: bp_path,
                problem: format!(
                    "{} bytes, expected the {BOOT_PARAMS_SIZE}-byte zero page",
                    data.len()
                ),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(bp_path, e)),
    };

    let efi_dir = sys("sys/firmware/efi");
    let efi_booted = efi_dir.is_dir();
    let efi_systab = if efi_booted {
        read_optional(&efi_dir.join("systab"))?.map(|t| parse_systab(&t))
    } else {
        None
    };
    let efi_runtime = if efi_booted {
        read_efi_runtime(&efi_dir)?
    } else {
        None
    };

    let from_boot_params = boot_params
        .as_ref()
        .and_then(|bp| crate::bytes::u64_at(bp, ACPI_RSDP_ADDR))
        .filter(|&a| a != 0);
    let acpi_rsdp = from_boot_params.or_else(|| {
        let t = efi_systab.as_ref()?;
        t.acpi20.or(t.acpi)
    });

    let iomem_ram = read_optional(&sys("proc/iomem"))?.and_then(|t| parse_iomem_ram(&t));

    Ok(HostBootInfo {
        boot_params,
        efi_systab,
        acpi_rsdp,
        memmap,
        efi_booted,
        efi_runtime,
        iomem_ram,
        rng_seed: random_seed(),
    })
}

/// Top-level `START-END : System RAM` lines of `/proc/iomem` (END
/// inclusive; nested lines are indented and skipped). `None` if there are
/// none with a non-zero end, which is how the file looks to non-root users.
pub fn parse_iomem_ram(text: &str) -> Option<Vec<PhysRange>> {
    let mut ram = Vec::new();
    for line in text.lines() {
        if line.starts_with(' ') {
            continue;
        }
        let Some((range, name)) = line.split_once(" : ") else {
            continue;
        };
        if name.trim() != "System RAM" {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Some(start), Some(end)) = (e820::parse_hex(start.trim()), e820::parse_hex(end.trim()))
        else {
            continue;
        };
        if end == 0 || end < start {
            continue;
        }
        ram.push(PhysRange::new(start, end.saturating_add(1)));
    }
    let ram = e820::merge(ram);
    (!ram.is_empty()).then_some(ram)
}

/// 32 bytes from getrandom(2), without blocking: at kexec time the pool is
/// long initialised; if it is not, the next kernel seeds itself as usual.
fn random_seed() -> Option<[u8; 32]> {
    let mut seed = [0u8; 32];
    match getrandom::fill(&mut seed) {
        Ok(()) => Some(seed),
        Err(e) => {
            log::warn!("getrandom failed ({e}); the next kernel gets no SETUP_RNG_SEED");
            None
        }
    }
}

fn read_optional(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// `ACPI20=0x...`, `ACPI=0x...`, `SMBIOS=0x...`, `SMBIOS3=0x...`, one per
/// line; lines we do not know (or cannot parse) are skipped — the file
/// carries more keys on some machines and none of them is essential.
pub fn parse_systab(text: &str) -> EfiSystab {
    let mut t = EfiSystab::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let Some(v) = e820::parse_hex(value.trim()) else {
            continue;
        };
        match key.trim() {
            "ACPI20" => t.acpi20 = Some(v),
            "ACPI" => t.acpi = Some(v),
            "SMBIOS" => t.smbios = Some(v),
            "SMBIOS3" => t.smbios3 = Some(v),
            _ => {}
        }
    }
    t
}

fn read_hex(path: &Path) -> Result<Option<u64>> {
    let Some(text) = read_optional(path)? else {
        return Ok(None);
    };
    e820::parse_hex(text.trim())
        .map(Some)
        .ok_or_else(|| Error::Parse {
            path: path.to_path_buf(),
            what: "hexadecimal value",
            content: text.trim().to_string(),
        })
}

fn read_efi_runtime(efi_dir: &Path) -> Result<Option<EfiRuntime>> {
    let (Some(fw_vendor), Some(runtime), Some(config_table)) = (
        read_hex(&efi_dir.join("fw_vendor"))?,
        read_hex(&efi_dir.join("runtime"))?,
        read_hex(&efi_dir.join("config_table"))?,
    ) else {
        return Ok(None);
    };
    let map_dir = efi_dir.join("runtime-map");
    let rd = match std::fs::read_dir(&map_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(map_dir, e)),
    };
    let mut numbered = Vec::new();
    for item in rd {
        let item = item.map_err(|e| Error::io(&map_dir, e))?;
        let name = item.file_name();
        let Some(index) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        numbered.push((index, item.path()));
    }
    numbered.sort();
    let mut runtime_map = Vec::with_capacity(numbered.len());
    for (_, dir) in numbered {
        let field = |name: &str| -> Result<u64> {
            let p = dir.join(name);
            read_hex(&p)?.ok_or_else(|| Error::HostInfo {
                path: p,
                problem: "missing from the EFI runtime map entry".into(),
            })
        };
        let kind_path = dir.join("type");
        let kind = u32::try_from(field("type")?).map_err(|_| Error::Parse {
            path: kind_path,
            what: "32-bit EFI memory type",
            content: String::new(),
        })?;
        runtime_map.push(EfiMemoryDescriptor {
            kind,
            phys_addr: field("phys_addr")?,
            virt_addr: field("virt_addr")?,
            num_pages: field("num_pages")?,
            attribute: field("attribute")?,
        });
    }
    if runtime_map.is_empty() {
        return Ok(None);
    }
    Ok(Some(EfiRuntime {
        fw_vendor,
        runtime,
        config_table,
        runtime_map,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::e820::E820Type;

    pub(crate) fn fixture_root(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/host")
            .join(name)
    }

    #[test]
    fn qemu_seabios_host() {
        let h = read(&fixture_root("qemu-seabios")).unwrap();
        assert!(!h.efi_booted);
        assert_eq!(h.efi_systab, None);
        assert_eq!(h.efi_runtime, None);
        // SeaBIOS leaves acpi_rsdp_addr zero and there is no systab: the
        // next kernel scans the BIOS area.
        assert_eq!(h.acpi_rsdp, None);
        assert_eq!(h.memmap.len(), 7);
        let bp = h.boot_params.as_ref().unwrap();
        assert_eq!(bp.len(), BOOT_PARAMS_SIZE);
        assert_eq!(&bp[0x202..0x206], b"HdrS");
        // The fixture's own e820 table agrees with its memmap directory.
        assert_eq!(bp[0x1e8] as usize, h.memmap.len());
        assert!(h.rng_seed.is_some());
        // /proc/iomem: page 0 is reserved by the running kernel, unlike in
        // the firmware map; nested lines are not top-level RAM.
        let ram = h.iomem_ram.unwrap();
        assert_eq!(ram[0], PhysRange::new(0x1000, 0x9fc00));
        assert_eq!(ram[1], PhysRange::new(0x10_0000, 0x7ffe_0000));
        assert_eq!(ram.len(), 2);
    }

    #[test]
    fn efi_host_reads_systab_runtime_map_and_rsdp_fallback() {
        let h = read(&fixture_root("efi-large")).unwrap();
        assert!(h.efi_booted);
        let t = h.efi_systab.clone().unwrap();
        assert_eq!(t.acpi20, Some(0x7f77e014));
        assert_eq!(t.acpi, Some(0x7f77e000));
        assert_eq!(t.smbios, Some(0x7f5d0000));
        // boot_params.acpi_rsdp_addr is 0 on EFI-stub boots: ACPI20 wins.
        assert_eq!(h.boot_param_u64(0x070), Some(0));
        assert_eq!(h.acpi_rsdp, Some(0x7f77e014));
        let rt = h.efi_runtime.clone().unwrap();
        assert_eq!(rt.fw_vendor, 0x7f7a1018);
        assert_eq!(rt.config_table, 0x7f7a0c18);
        assert!(rt.runtime_map.len() >= 10);
        // Index order (10 sorts after 9, not after 1).
        assert!(rt
            .runtime_map
            .windows(2)
            .all(|w| w[0].phys_addr < w[1].phys_addr));
        assert!(rt
            .runtime_map
            .iter()
            .all(|d| d.virt_addr >= 0xffff_ffee_0000_0000));
        assert!(h.memmap.len() > 128);
        assert!(h
            .memmap
            .iter()
            .any(|e| e.kind == E820Type::Other(E820Type::SOFT_RESERVED)));
    }

    #[test]
    fn firecracker_host_is_this_machine_snapshot() {
        // Copied from the development VM this was written on (a Firecracker
        // guest): real sysfs content, not hand-made.
        let h = read(&fixture_root("firecracker")).unwrap();
        assert!(!h.efi_booted);
        assert_eq!(h.memmap.len(), 5);
        assert_eq!(h.memmap[4].addr, 0x1_0000_0000);
        assert_eq!(h.memmap[4].end(), 0x6_4000_0000);
        let bp = h.boot_params.as_ref().unwrap();
        assert_eq!(u16::from_le_bytes([bp[0x206], bp[0x207]]), 0x020c);
    }

    #[test]
    fn rsdp_from_boot_params_wins_over_systab() {
        let dir = tempfile::tempdir().unwrap();
        copy_tree(&fixture_root("efi-large"), dir.path());
        let bp_path = dir.path().join("sys/kernel/boot_params/data");
        let mut bp = std::fs::read(&bp_path).unwrap();
        bp[0x70..0x78].copy_from_slice(&0xf_5a40u64.to_le_bytes());
        std::fs::write(&bp_path, &bp).unwrap();
        let h = read(dir.path()).unwrap();
        assert_eq!(h.acpi_rsdp, Some(0xf_5a40));

        // Only ACPI= (ACPI 1.0 machine): that one.
        bp[0x70..0x78].fill(0);
        std::fs::write(&bp_path, &bp).unwrap();
        std::fs::write(
            dir.path().join("sys/firmware/efi/systab"),
            "ACPI=0x7f77e000\nSMBIOS=0x7f5d0000\n",
        )
        .unwrap();
        assert_eq!(read(dir.path()).unwrap().acpi_rsdp, Some(0x7f77e000));

        // A truncated boot_params is an error naming the file.
        std::fs::write(&bp_path, &bp[..100]).unwrap();
        let err = read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("boot_params/data"), "{err}");
    }

    #[test]
    fn missing_memmap_says_which_config_option() {
        let dir = tempfile::tempdir().unwrap();
        let err = read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("CONFIG_FIRMWARE_MEMMAP"), "{err}");
    }

    #[test]
    fn efi_without_runtime_map_has_no_runtime_handoff() {
        let dir = tempfile::tempdir().unwrap();
        copy_tree(&fixture_root("efi-large"), dir.path());
        std::fs::remove_dir_all(dir.path().join("sys/firmware/efi/runtime-map")).unwrap();
        let h = read(dir.path()).unwrap();
        assert!(h.efi_booted);
        assert_eq!(h.efi_runtime, None);
    }

    #[test]
    fn iomem_system_ram_top_level_only() {
        // Real: the development VM's /proc/iomem.
        let h = read(&fixture_root("firecracker")).unwrap();
        assert_eq!(
            h.iomem_ram,
            Some(vec![
                PhysRange::new(0x1000, 0x9fc00),
                PhysRange::new(0x10_0000, 0xc000_0000),
                PhysRange::new(0x1_0000_0000, 0x6_4000_0000),
            ])
        );
        // Non-root view: every address zero.
        assert_eq!(
            parse_iomem_ram("00000000-00000000 : System RAM\n  00000000-00000000 : Kernel code\n"),
            None
        );
        assert_eq!(
            parse_iomem_ram("00001000-00001fff : Reserved\n  00001000-00001fff : System RAM\n"),
            None
        );
    }

    #[test]
    fn systab_parser_skips_noise() {
        let t = parse_systab("MPS=0x9fc00\nACPI20=0x1000\ngarbage\nSMBIOS3=zz\nSMBIOS3=0x2000\n");
        assert_eq!(
            t,
            EfiSystab {
                acpi20: Some(0x1000),
                acpi: None,
                smbios: None,
                smbios3: Some(0x2000)
            }
        );
    }

    #[test]
    fn efi_descriptor_layout() {
        let d = EfiMemoryDescriptor {
            kind: 5,
            phys_addr: 0x7f00_0000,
            virt_addr: 0xffff_ffef_0000_0000,
            num_pages: 0x20,
            attribute: 0x8000_0000_0000_000f,
        };
        let b = d.to_bytes();
        assert_eq!(&b[0..8], &[5, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[8..16], &0x7f00_0000u64.to_le_bytes());
        assert_eq!(&b[16..24], &0xffff_ffef_0000_0000u64.to_le_bytes());
        assert_eq!(&b[24..32], &0x20u64.to_le_bytes());
        assert_eq!(&b[32..40], &0x8000_0000_0000_000fu64.to_le_bytes());
    }

    pub(crate) fn copy_tree(from: &Path, to: &Path) {
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let dst = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                std::fs::create_dir_all(&dst).unwrap();
                copy_tree(&e.path(), &dst);
            } else {
                std::fs::copy(e.path(), &dst).unwrap();
            }
        }
    }
}
