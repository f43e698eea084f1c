//! The operators' API (`vmm run --api-sock PATH`): HTTP/1.1 over a Unix
//! socket, JSON bodies, in the conventions of Firecracker's and Cloud
//! Hypervisor's APIs (`GET` reads, `PUT`/`PATCH` change, 204 on success,
//! `{"fault_message": ...}` on an error). README "The API" lists the
//! resources; `docs/design.md` "The API" says how it is built.
//!
//! - `http`: one request read from a client's bytes (on `httparse`, with
//!   bounded head and body), one response written back;
//! - `routes`: which request reaches which part of the VMM, over the
//!   `VmControl` trait;
//! - `server`: the socket's thread (one client at a time, deadlines, its
//!   own seccomp filter);
//! - `control`: `VmControl` over a running machine's counters, frame
//!   table and budget;
//! - `client`: one request from the outside (`vmm ctl`, the tests).
//!
//! Nothing here may block a vCPU or panic on what a client sends.

pub mod client;
pub mod control;
pub mod http;
pub mod routes;
pub mod server;
