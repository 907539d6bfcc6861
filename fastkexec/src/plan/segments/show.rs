//! The plan as `load --dry-run` prints it.

use super::*;

pub(super) fn human(n: u64) -> String {
    const K: f64 = 1024.0;
    let f = n as f64;
    if f >= K * K * K {
        format!("{:.2} GiB", f / (K * K * K))
    } else if f >= K * K {
        format!("{:.2} MiB", f / (K * K))
    } else if f >= K {
        format!("{:.1} KiB", f / K)
    } else {
        format!("{n} B")
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.summary;
        writeln!(
            f,
            "kexec_load plan: {} segments, entry {:#x} (fastkexec purgatory)",
            self.segments.len(),
            self.entry
        )?;
        writeln!(
            f,
            "  {:>2}  {:<37}  {:>10}  {:>10}  what",
            "#", "physical range", "memsz", "data"
        )?;
        for (i, seg) in self.segments.iter().enumerate() {
            writeln!(
                f,
                "  {:>2}  {:#018x}-{:#018x}  {:>10}  {:>10}  {}",
                i,
                seg.mem,
                seg.mem.saturating_add(seg.memsz),
                human(seg.memsz),
                human(seg.data.len() as u64),
                seg.what
            )?;
        }
        writeln!(
            f,
            "kernel: entry {:#x} (startup_64), footprint {}{}",
            s.kernel_entry,
            s.kernel_footprint,
            if s.phys_delta != 0 {
                format!(", shifted by {:#x}", s.phys_delta)
            } else {
                String::new()
            }
        )?;
        writeln!(
            f,
            "boot_params at {:#x}: setup header {}, protocol {}.{:02}, loader type {:#04x}",
            s.boot_params_addr,
            if s.header_from_bzimage {
                "from the bzImage"
            } else {
                "synthesised"
            },
            s.protocol_version >> 8,
            s.protocol_version & 0xff,
            bootparams::LOADER_TYPE_UNDEFINED
        )?;
        writeln!(
            f,
            "  e820: {} entries ({} in the zero page, {} in SETUP_E820_EXT)",
            s.e820_entries, s.e820_in_zero_page, s.e820_ext_entries
        )?;
        match s.acpi_rsdp {
            Some(a) => writeln!(f, "  ACPI RSDP: {a:#x}")?,
            None => writeln!(
                f,
                "  ACPI RSDP: not known; the kernel scans the BIOS area for it"
            )?,
        }
        match &s.efi {
            EfiHandoff::NotEfi => writeln!(f, "  EFI: not an EFI boot")?,
            EfiHandoff::Passed { runtime_regions } => writeln!(
                f,
                "  EFI: efi_info, SETUP_EFI and the runtime map ({runtime_regions} regions) passed on"
            )?,
            EfiHandoff::Dropped { reason } => writeln!(
                f,
                "  EFI: not passed on ({reason}); the next kernel runs without EFI runtime services"
            )?,
        }
        match s.initrd {
            Some((a, n)) => writeln!(
                f,
                "  initrd: {:#x}-{:#x} ({} bytes){}",
                a,
                a.saturating_add(n),
                n,
                if s.ext_ramdisk_used {
                    ", above 4 GiB via ext_ramdisk_image/size"
                } else {
                    ""
                }
            )?,
            None => writeln!(f, "  initrd: none")?,
        }
        writeln!(
            f,
            "  command line at {:#x}: {} of at most {} bytes{}",
            s.cmdline_addr,
            self.cmdline.len(),
            s.cmdline_limit,
            if s.ext_cmdline_used {
                ", via ext_cmd_line_ptr"
            } else {
                ""
            }
        )?;
        if s.setup_data.is_empty() && s.setup_data_tail == 0 {
            writeln!(f, "  setup_data: none")?;
        } else {
            write!(f, "  setup_data:")?;
            for n in &s.setup_data {
                write!(
                    f,
                    " {:#x} {} ({} bytes) ->",
                    n.addr,
                    bootparams::setup_data_name(n.kind),
                    n.len
                )?;
            }
            if s.setup_data_tail != 0 {
                writeln!(f, " chain at {:#x}", s.setup_data_tail)?;
            } else {
                writeln!(f, " end")?;
            }
        }
        writeln!(
            f,
            "purgatory at {:#x}: TSC record at {:#x}{}; {}",
            s.purgatory_addr,
            s.tsc_record_addr,
            if s.tsc_out != 0 {
                format!(", copied to {:#x}", s.tsc_out)
            } else {
                String::new()
            },
            if s.verified_segments > 0 {
                format!("checksums {} segments before the jump", s.verified_segments)
            } else {
                "no checksum verification".to_string()
            }
        )?;
        writeln!(f, "command line: {:?}", self.cmdline)
    }
}
