//! The operators' API (issue 25, work in progress): HTTP/1.1 over a Unix
//! socket, JSON bodies, in the conventions of Firecracker's and Cloud
//! Hypervisor's APIs (`GET` reads, `PUT`/`PATCH` change, 204 on success,
//! `{"fault_message": ...}` on an error).
//!
//! `http` reads one request and writes one response; `routes` maps a
//! request to the VMM through the `VmControl` trait. Still to build: the
//! socket thread (one client at a time, a read deadline, its own seccomp
//! filter), `VmControl` over the machine (the live stats, the frame
//! table's counts, a budget the reclaimer reads every round), `vmm run
//! --api-sock` and `vmm ctl`.
//!
//! Nothing here may block a vCPU or panic on what a client sends.

pub mod client;
pub mod control;
pub mod http;
pub mod routes;
pub mod server;
