//! Reboot histograms across boots, their export and the HTTP endpoint.

pub mod export;
pub mod histogram;
pub mod serve;
