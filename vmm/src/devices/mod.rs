//! Emulated devices and the port-I/O bus that routes guest `in`/`out` to
//! them. Devices must never block a vCPU for long or panic on guest input.

pub mod bus;
pub mod serial;
