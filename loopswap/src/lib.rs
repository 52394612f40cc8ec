//! loopswap: count the threads executing inside a kernel module, exactly,
//! as the quiescence signal for replacing that module while it serves.
//!
//! [`counters::ModuleWatch`] attaches entry/return probes to a module's
//! functions, seeds the count from kernel stacks for threads that were
//! already inside, and produces [`snapshot::Snapshot`]s.

pub mod btf;
pub mod control;
pub mod counters;
pub mod doctor;
mod error;
pub mod kallsyms;
pub mod kmod;
pub mod module;
pub mod preflight;
pub mod raw_bpf;
pub mod realtime;
pub mod run_cache;
pub mod snapshot;
pub mod stacks;
pub mod swap;
pub mod time_in_flight;
pub mod tracefs;

pub use error::Error;
