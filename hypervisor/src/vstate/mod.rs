//! Thin wrappers that own the KVM file descriptors of one VM and its vCPUs.
//! They apply state and run vCPUs; policy (what state, which devices) comes
//! from `arch` and the caller, never from here.
//!
//! This is the lowest floor of the VMM's KVM side: it must never import
//! the clients of guest memory above it (`devices`, `hypercall`,
//! `discard_fault`, `reclaim`). They reach a vCPU through traits defined
//! here: its exits through `exit::ExitDevices` (served by
//! `crate::vcpu_devices`), an interrupted run through `vcpu::KickHandler`
//! (the discard faults); the dirty log speaks frame ranges, and the block
//! device calls it through its own trait, wired by `crate::machine`.

pub mod dirty_log;
pub mod exit;
pub mod kick_mask;
pub mod kvm;
pub mod pause;
pub mod step_count;
pub mod vcpu;
pub mod vm;
