//! The trace record's pages: the `EVENTS` map mapped into this process, and the physical
//! address of each page (from /proc/self/pagemap) that the next kernel is told about.

use super::*;

/// The pages of the `EVENTS` map, mapped into this process.
pub(super) struct MappedPages {
    ptr: *mut u8,
    len: usize,
}

impl MappedPages {
    pub(super) fn map(fd: std::os::fd::BorrowedFd<'_>, pages: usize) -> Result<Self> {
        let len = pages * PAGE_SIZE;
        // SAFETY: mapping a BPF array map fd (BPF_F_MMAPABLE) shared, at a
        // kernel-chosen address, for exactly its value area; the result is
        // checked against MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::Tracer {
                problem: format!(
                    "mmap of the EVENTS map failed: {} (needs a kernel with BPF_F_MMAPABLE, 5.5+)",
                    std::io::Error::last_os_error()
                ),
            });
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }

    pub(super) fn write(&self, off: usize, bytes: &[u8]) {
        if off.checked_add(bytes.len()).is_some_and(|e| e <= self.len) {
            // SAFETY: the range is inside the mapping (checked above); the
            // probes never write these bytes (user-space fields only).
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(off), bytes.len())
            };
        }
    }

    pub(super) fn read_u64(&self, off: usize) -> u64 {
        if off.is_multiple_of(8) && off + 8 <= self.len {
            // SAFETY: aligned and inside the mapping; volatile because the
            // probes write it concurrently.
            unsafe { std::ptr::read_volatile(self.ptr.add(off).cast::<u64>()) }
        } else {
            0
        }
    }

    pub(super) fn read(&self, off: usize, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        if off.checked_add(len).is_some_and(|e| e <= self.len) {
            // SAFETY: inside the mapping; a racing probe write yields a stale
            // or half-written copy, which is only ever displayed.
            unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(off), v.as_mut_ptr(), len) };
        }
        v
    }

    /// Faults every page in so it has a physical page behind it.
    pub(super) fn touch(&self) {
        for off in (0..self.len).step_by(PAGE_SIZE) {
            // SAFETY: inside the mapping.
            unsafe { std::ptr::read_volatile(self.ptr.add(off)) };
        }
    }
}

impl Drop for MappedPages {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Physical address of each page of `pages` (from /proc/self/pagemap; root only).
pub(super) fn physical_addresses(pages: &MappedPages) -> Result<Vec<u64>> {
    let path = Path::new("/proc/self/pagemap");
    let f = fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for i in 0..pages.len / PAGE_SIZE {
        let va = pages.ptr as usize + i * PAGE_SIZE;
        let mut entry = [0u8; 8];
        let off = (va / PAGE_SIZE * 8) as u64;
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut entry, off)
            .map_err(|e| Error::io(path, e))?;
        let e = u64::from_le_bytes(entry);
        let pfn = e & ((1 << 55) - 1);
        if e >> 63 == 0 || pfn == 0 {
            return Err(Error::Tracer {
                problem: format!(
                    "{}: page {i} of the trace record has no visible physical address (needs \
                     CAP_SYS_ADMIN: run as root)",
                    path.display()
                ),
            });
        }
        out.push(pfn * PAGE_SIZE as u64);
    }
    Ok(out)
}

/// Loads the eBPF object (which creates the `EVENTS` map of `pages` pages),
/// maps the map and finds the physical address of every page.
pub(super) fn allocate_record(pages: usize) -> Result<(Ebpf, MappedPages, Vec<u64>)> {
    let object = ebpf::object().ok_or_else(|| Error::Tracer {
        problem: ebpf::NO_PROBES.into(),
    })?;
    let ebpf = EbpfLoader::new()
        .map_max_entries(ebpf::MAP_EVENTS, pages as u32)
        .load(object)
        .map_err(|e| Error::Tracer {
            problem: format!("loading the eBPF object failed: {}", render(&e)),
        })?;
    let mapped = {
        let Some(aya::maps::Map::Array(data)) = ebpf.map(ebpf::MAP_EVENTS) else {
            return Err(Error::Tracer {
                problem: "the eBPF object has no EVENTS array".into(),
            });
        };
        let data: &MapData = data;
        MappedPages::map(data.fd().as_fd(), pages)?
    };
    mapped.touch();
    let phys = physical_addresses(&mapped)?;
    Ok((ebpf, mapped, phys))
}
