//! Port I/O: the device trait, the port bus (the one `Bus` over 16-bit
//! port numbers) and the exit port.
//!
//! A vCPU thread hands every `in`/`out` exit to [`PioBus::read`] or
//! [`PioBus::write`]. A device gets the access when its range holds the
//! first port. Ports no device claims read as all-ones and swallow writes,
//! as on a PC, and are counted. It must never panic on a port, size or
//! value the guest chooses.

use std::sync::{Arc, Mutex};

use crate::devices::bus::{Bus, BusError};
use crate::metrics::Metrics;
/// What the VMM must do after a port write (the vCPU's exit vocabulary).
pub use crate::vstate::exit::PioOutcome;

/// A device on the port bus. `offset` is relative to the start of the
/// device's range; `data` is 1, 2 or 4 bytes, little-endian.
pub trait PioDevice: Send {
    /// Fills `data` for an `in`.
    fn read(&mut self, offset: u16, data: &mut [u8]);
    /// Handles an `out`.
    fn write(&mut self, offset: u16, data: &[u8]) -> PioOutcome;
}

/// A shared device.
pub type SharedDevice = Arc<Mutex<dyn PioDevice>>;

/// The port-I/O bus.
#[derive(Debug)]
pub struct PioBus {
    bus: Bus<dyn PioDevice>,
    metrics: Arc<Metrics>,
}

impl PioBus {
    /// An empty bus over ports 0..=0xffff.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            bus: Bus::new(0x1_0000),
            metrics,
        }
    }

    /// Claims ports `base..base + len` for `device`.
    pub fn insert(&mut self, base: u16, len: u16, device: SharedDevice) -> Result<(), BusError> {
        self.bus.insert(u64::from(base), u64::from(len), device)
    }

    /// Handles an `in` from `port`.
    pub fn read(&self, port: u16, data: &mut [u8]) {
        match self.bus.find(u64::from(port), 1) {
            // The offset is below the window's length, itself a u16.
            Some((mut device, offset)) => device.read(offset as u16, data),
            None => {
                self.metrics.bus.unhandled_reads.inc();
                log::debug!(
                    "bus: unhandled read of port {port:#x} ({} bytes)",
                    data.len()
                );
                data.fill(0xff);
            }
        }
    }

    /// Handles an `out` to `port`.
    pub fn write(&self, port: u16, data: &[u8]) -> PioOutcome {
        match self.bus.find(u64::from(port), 1) {
            Some((mut device, offset)) => device.write(offset as u16, data),
            None => {
                self.metrics.bus.unhandled_writes.inc();
                log::debug!("bus: unhandled write of {data:02x?} to port {port:#x}");
                PioOutcome::Continue
            }
        }
    }
}

/// Zero-extends a 1-, 2- or 4-byte little-endian port value (longer input
/// keeps its first four bytes).
pub fn le_value(data: &[u8]) -> u32 {
    let mut bytes = [0u8; 4];
    for (dst, src) in bytes.iter_mut().zip(data) {
        *dst = *src;
    }
    u32::from_le_bytes(bytes)
}

/// QEMU's `isa-debug-exit` semantics on the exit port: a write of a status
/// value stops the machine. The last value written is kept for inspection.
#[derive(Debug, Default)]
pub struct ExitDevice {
    status: Option<u32>,
}

impl ExitDevice {
    /// A device that has not been written yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value the guest wrote, if any.
    pub fn status(&self) -> Option<u32> {
        self.status
    }
}

impl PioDevice for ExitDevice {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u16, data: &[u8]) -> PioOutcome {
        let value = le_value(data);
        self.status = Some(value);
        PioOutcome::Exit(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);
    impl PioDevice for Echo {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            data.fill(self.0.wrapping_add(offset as u8));
        }
        fn write(&mut self, _offset: u16, data: &[u8]) -> PioOutcome {
            self.0 = data[0];
            PioOutcome::Continue
        }
    }

    #[test]
    fn routes_by_range_and_counts_the_rest() {
        let metrics = Arc::new(Metrics::default());
        let mut bus = PioBus::new(metrics.clone());
        bus.insert(0x3f8, 8, Arc::new(Mutex::new(Echo(0x10))))
            .unwrap();
        bus.insert(0xf4, 4, Arc::new(Mutex::new(ExitDevice::new())))
            .unwrap();
        assert!(matches!(
            bus.insert(0x3fc, 8, Arc::new(Mutex::new(Echo(0)))),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(0xfffe, 8, Arc::new(Mutex::new(Echo(0)))),
            Err(BusError::BadRange { .. })
        ));
        bus.insert(0xfff8, 8, Arc::new(Mutex::new(Echo(0))))
            .unwrap();

        let mut b = [0u8; 1];
        bus.read(0x3fa, &mut b);
        assert_eq!(b, [0x12]);
        assert_eq!(bus.write(0x3f8, &[0x20]), PioOutcome::Continue);
        bus.read(0x3f8, &mut b);
        assert_eq!(b, [0x20]);

        let mut w = [0u8; 4];
        bus.read(0x80, &mut w);
        assert_eq!(w, [0xff; 4]);
        assert_eq!(bus.write(0x80, &[1]), PioOutcome::Continue);
        assert_eq!(metrics.bus.unhandled_reads.get(), 1);
        assert_eq!(metrics.bus.unhandled_writes.get(), 1);

        assert_eq!(bus.write(0xf4, &7u32.to_le_bytes()), PioOutcome::Exit(7));
        assert_eq!(bus.write(0xf4, &[3]), PioOutcome::Exit(3));
        bus.read(0xffff, &mut b);
    }

    #[test]
    fn le_value_zero_extends() {
        assert_eq!(le_value(&[]), 0);
        assert_eq!(le_value(&[0x34, 0x12]), 0x1234);
        assert_eq!(le_value(&[1, 2, 3, 4, 5]), 0x0403_0201);
    }
}
