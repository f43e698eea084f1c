//! The lab around the VMM: what people run to build guest workloads and to
//! measure the hypervisor, kept apart from the hypervisor library so that
//! a VMM carries none of it.
//!
//! - [`args`]: the command-line arguments of `vmm experiment`, `vmm
//!   gen-files` and `vmm mkdisk`, and the size syntax.
//! - [`tools`]: `gen-files` (files of verifiable blocks) and `mkdisk`.
//! - [`disk_image`]: the PHFS image builder and reader.
//! - [`experiment`]: the experiment runner, which starts `vmm run` children
//!   of the running `vmm` executable and reads their stats.
//!
//! Nothing here links the hypervisor: the experiment talks to it through
//! the `vmm run` command line and its stats file only, as a user would.
//! This crate must never touch KVM.

pub mod args;
pub mod disk_image;
pub mod experiment;
pub mod tools;
