//! The handoff record, its clocks, phases and the report built from it.

pub mod clock;
pub mod fold;
pub mod handoff;
pub mod initcalls;
pub mod phases;
pub mod report;
pub mod svg;
