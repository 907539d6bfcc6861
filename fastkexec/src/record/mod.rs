//! The handoff record, its clocks, phases and the report built from it.

pub mod clock;
pub mod fold;
pub mod handoff;
pub mod next;
pub mod phases;
pub mod report;
pub mod svg;
pub mod units_start;
pub mod units_stop;
