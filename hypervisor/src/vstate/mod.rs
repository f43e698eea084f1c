//! Thin wrappers that own the KVM file descriptors of one VM and its vCPUs.
//! They apply state and run vCPUs; policy (what state, which devices) comes
//! from `arch` and `devices`, never from here.

pub mod dirty_log;
pub mod exit;
pub mod kvm;
pub mod pause;
pub mod step_count;
pub mod vcpu;
pub mod vm;
