//! The hypervisor library: boots a PVH guest kernel on KVM, serves its page
//! hints, reclaims what it hints droppable and runs it until the guest
//! writes its exit status, fails, or runs out of time.
//!
//! The caller builds a [`VmConfig`] and calls [`run`]; the `vmm` binary does
//! so from its command line. The rooms, from the top down: `machine` (build,
//! run and tear down one VM; the only room that knows every other), `api`
//! (the operators' socket),
//! `vcpu_devices` (what a vCPU's exits reach), the clients of guest memory
//! (`hypercall`, `reclaim`, `discard_fault`, `devices`), and below them
//! `vstate` (the KVM file descriptors, importing none of the rooms above),
//! `frames`, and the ground floor: `arch`, `memory`, `worker` (the one
//! thread handle), `metrics` (and `latency`, its fine histograms),
//! `seccomp`. No room imports one above it and
//! none import each other in a circle; `docs/design.md` draws them.
//! Nothing here may panic on anything the guest or the user sends.

pub mod api;
pub mod arch;
pub mod config;
pub mod devices;
pub mod discard_fault;
pub mod error;
pub mod fatal;
pub mod fault_inject;
pub mod frames;
pub mod hypercall;
pub mod latency;
pub mod loader;
pub mod logger;
pub mod machine;
pub mod memory;
pub mod metrics;
pub mod periodic;
pub mod reclaim;
pub mod seccomp;
pub mod signals;
pub mod stats;
pub mod vcpu_devices;
pub mod vstate;
pub mod worker;

pub use config::{DiskConfig, HintMode, Kernel, ReclaimOptions, StatsOptions, Transport, VmConfig};
pub use error::VmmError;
pub use machine::run;
