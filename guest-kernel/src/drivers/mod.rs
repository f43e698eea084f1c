//! Device drivers. Each talks to its device only through MMIO or ports
//! mapped in the direct map, and never holds its lock across a context
//! switch.

pub mod virtio_blk;
