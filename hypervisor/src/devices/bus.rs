//! A tiny port-I/O bus: port ranges mapped to devices, plus the exit port.
//!
//! A vCPU thread hands every `in`/`out` exit to [`PioBus::read`] or
//! [`PioBus::write`]. Ports no device claims read as all-ones and swallow
//! writes, as on a PC, and are counted. The bus is built once before the
//! vCPUs start and is immutable afterwards; it must never panic on a port,
//! size or value the guest chooses.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::metrics::Metrics;

/// What the VMM must do after a port write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PioOutcome {
    /// Nothing: the guest continues.
    Continue,
    /// The guest asked the machine to stop with this status value.
    Exit(u32),
}

/// A device on the port bus. `offset` is relative to the start of the
/// device's range; `data` is 1, 2 or 4 bytes, little-endian.
pub trait PioDevice: Send {
    /// Fills `data` for an `in`.
    fn read(&mut self, offset: u16, data: &mut [u8]);
    /// Handles an `out`.
    fn write(&mut self, offset: u16, data: &[u8]) -> PioOutcome;
}

/// Why a device could not be added.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The range is empty or runs past port 0xffff.
    #[error("invalid port range {base:#x}+{len}")]
    BadRange { base: u16, len: u16 },
    /// The range overlaps one already on the bus.
    #[error("port range {base:#x}+{len} overlaps another device")]
    Overlap { base: u16, len: u16 },
}

/// A shared device.
pub type SharedDevice = Arc<Mutex<dyn PioDevice>>;

struct Range {
    base: u16,
    /// One past the last port (u32 so that 0xffff + 1 fits).
    end: u32,
    device: SharedDevice,
}

/// The port-I/O bus.
pub struct PioBus {
    ranges: Vec<Range>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for PioBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<(u16, u32)> = self.ranges.iter().map(|r| (r.base, r.end)).collect();
        f.debug_struct("PioBus").field("ranges", &ranges).finish()
    }
}

/// Locks a device even if a previous holder panicked: device state is plain
/// data and a poisoned lock must not take the whole VMM down.
fn lock(device: &SharedDevice) -> MutexGuard<'_, dyn PioDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl PioBus {
    /// An empty bus.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            ranges: Vec::new(),
            metrics,
        }
    }

    /// Claims ports `base..base + len` for `device`.
    pub fn insert(&mut self, base: u16, len: u16, device: SharedDevice) -> Result<(), BusError> {
        let end = u32::from(base) + u32::from(len);
        if len == 0 || end > 0x1_0000 {
            return Err(BusError::BadRange { base, len });
        }
        if self
            .ranges
            .iter()
            .any(|r| u32::from(base) < r.end && u32::from(r.base) < end)
        {
            return Err(BusError::Overlap { base, len });
        }
        self.ranges.push(Range { base, end, device });
        self.ranges.sort_by_key(|r| r.base);
        Ok(())
    }

    fn find(&self, port: u16) -> Option<(&SharedDevice, u16)> {
        let p = u32::from(port);
        self.ranges
            .iter()
            .find(|r| u32::from(r.base) <= p && p < r.end)
            .map(|r| (&r.device, port - r.base))
    }

    /// Handles an `in` from `port`.
    pub fn read(&self, port: u16, data: &mut [u8]) {
        match self.find(port) {
            Some((device, offset)) => lock(device).read(offset, data),
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
        match self.find(port) {
            Some((device, offset)) => lock(device).write(offset, data),
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
