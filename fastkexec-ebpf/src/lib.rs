//! Empty on purpose: the programs live in the `fastkexec-probes` binary
//! (src/main.rs). This library target only lets fastkexec declare a
//! build-dependency on the crate so cargo tracks its changes.
#![no_std]
