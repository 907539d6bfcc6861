//! Where each segment goes in the next kernel's memory, and the zero page that describes it.

pub mod bootparams;
pub mod segments;
