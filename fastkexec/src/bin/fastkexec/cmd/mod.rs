//! One file per command, each a thin layer from its clap arguments to the library.

pub mod docs;
pub mod exec;
pub mod export;
pub mod load;
pub mod prepare;
pub mod report;
pub mod serve;
pub mod status;
pub mod trace;
pub mod unload;
