//! Orchestration behind the `load` and `exec` commands.

pub mod exec;
pub mod load;
