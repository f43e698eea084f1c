//! Emulated devices and the buses that route guest port I/O and MMIO to
//! them. Devices must never block a vCPU for long or panic on guest input.

pub mod blk_worker;
pub mod bus;
pub mod console_out;
pub mod disk;
pub mod mmio;
pub mod pio;
pub mod serial;
pub mod virtio_blk;
pub mod virtio_mmio;
