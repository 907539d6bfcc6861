//! The handoff record, its clocks, phases and the report built from it.

pub mod clock;
pub mod handoff;
pub mod initcalls;
pub mod next;
pub mod phases;
pub mod probes;
pub mod report;
pub mod svg;
pub mod units_start;
pub mod units_stop;
