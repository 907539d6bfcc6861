//! Where each segment goes in the next kernel's memory, and the zero page that describes it.

pub mod bootparams;
pub mod cmdline;
pub mod segments;

use crate::host::e820;
use crate::kexec::PAGE_SIZE;
use crate::{Error, Result};

/// `v` rounded up to a whole page (kexec segment sizes and destinations are pages).
pub fn page_up(v: u64) -> Result<u64> {
    e820::align_up(v, PAGE_SIZE).ok_or_else(|| Error::Plan {
        problem: format!("size {v:#x} overflows when rounded up to a page"),
    })
}
