//! A tiny MMIO bus: guest-physical address windows mapped to devices.
//!
//! A vCPU thread hands every `KVM_EXIT_MMIO` to [`MmioBus::read`] or
//! [`MmioBus::write`]. An access that starts inside a device's window goes to
//! that device with the offset from the window's base; anything else is left
//! to the caller (which answers reads with all-ones and counts them, as it
//! always did). The bus is built before the vCPUs start and is immutable
//! afterwards. It must never panic on an address, width or value the guest
//! chooses, and never hand a device an access that runs past its window.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::metrics::Metrics;

/// A device on the MMIO bus. `offset` is relative to the window's base;
/// `data` is whatever width the guest used (1, 2, 4 or 8 bytes),
/// little-endian.
pub trait MmioDevice: Send {
    /// Fills `data` for a load.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a store.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Why a device could not be added.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MmioError {
    /// The window is empty or wraps around the address space.
    #[error("invalid MMIO window {base:#x}+{len:#x}")]
    BadRange { base: u64, len: u64 },
    /// The window overlaps one already on the bus.
    #[error("MMIO window {base:#x}+{len:#x} overlaps another device")]
    Overlap { base: u64, len: u64 },
}

/// A shared MMIO device.
pub type SharedMmioDevice = Arc<Mutex<dyn MmioDevice>>;

struct Window {
    base: u64,
    /// One past the last byte (checked not to wrap on insert).
    end: u64,
    device: SharedMmioDevice,
}

/// The MMIO bus.
pub struct MmioBus {
    windows: Vec<Window>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for MmioBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let w: Vec<(u64, u64)> = self.windows.iter().map(|w| (w.base, w.end)).collect();
        f.debug_struct("MmioBus").field("windows", &w).finish()
    }
}

/// Locks a device even if a previous holder panicked: the state is plain
/// data and a poisoned lock must not take the whole VMM down.
fn lock(device: &SharedMmioDevice) -> MutexGuard<'_, dyn MmioDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MmioBus {
    /// An empty bus.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            windows: Vec::new(),
            metrics,
        }
    }

    /// Claims `base..base + len` for `device`.
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        device: SharedMmioDevice,
    ) -> Result<(), MmioError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(MmioError::BadRange { base, len })?;
        if self.windows.iter().any(|w| base < w.end && w.base < end) {
            return Err(MmioError::Overlap { base, len });
        }
        self.windows.push(Window { base, end, device });
        self.windows.sort_by_key(|w| w.base);
        Ok(())
    }

    /// The device whose window holds the whole access, and its offset.
    fn find(&self, addr: u64, len: usize) -> Option<(&SharedMmioDevice, u64)> {
        let last = addr.checked_add(u64::try_from(len).ok()?.saturating_sub(1))?;
        self.windows
            .iter()
            .find(|w| w.base <= addr && last < w.end)
            .map(|w| (&w.device, addr - w.base))
    }

    /// Handles a load from `addr`. Returns false, leaving `data` alone, if
    /// no device claims the whole access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((device, offset)) => {
                lock(device).read(offset, data);
                true
            }
            None => {
                self.metrics.bus.unhandled_mmio_reads.inc();
                false
            }
        }
    }

    /// Handles a store to `addr`. Returns false if no device claims the
    /// whole access (the store is then ignored).
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((device, offset)) => {
                lock(device).write(offset, data);
                true
            }
            None => {
                self.metrics.bus.unhandled_mmio_writes.inc();
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Remembers the last store and answers loads with offset + a tag.
    struct Probe {
        tag: u8,
        last: Option<(u64, Vec<u8>)>,
    }

    impl MmioDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.tag.wrapping_add(offset as u8));
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last = Some((offset, data.to_vec()));
        }
    }

    fn probe(tag: u8) -> Arc<Mutex<Probe>> {
        Arc::new(Mutex::new(Probe { tag, last: None }))
    }

    #[test]
    fn routes_by_window_and_counts_the_rest() {
        let metrics = Arc::new(Metrics::default());
        let mut bus = MmioBus::new(metrics.clone());
        let a = probe(0x10);
        bus.insert(0xd000_0000, 0x1000, a.clone()).unwrap();
        assert_eq!(
            bus.insert(0xd000_0800, 0x1000, probe(0)),
            Err(MmioError::Overlap {
                base: 0xd000_0800,
                len: 0x1000
            })
        );
        assert!(matches!(
            bus.insert(u64::MAX - 4, 8, probe(0)),
            Err(MmioError::BadRange { .. })
        ));
        assert!(matches!(
            bus.insert(0x1000, 0, probe(0)),
            Err(MmioError::BadRange { .. })
        ));
        bus.insert(0xd000_1000, 0x1000, probe(0x80)).unwrap();

        let mut w = [0u8; 4];
        assert!(bus.read(0xd000_0004, &mut w));
        assert_eq!(w, [0x14; 4]);
        assert!(bus.read(0xd000_1000, &mut w));
        assert_eq!(w, [0x80; 4]);
        assert!(bus.write(0xd000_0070, &[1, 0, 0, 0]));
        let last = a.lock().unwrap().last.clone();
        assert_eq!(last, Some((0x70, vec![1, 0, 0, 0])));

        // Unclaimed, and straddling the end of the last window.
        let mut w = [0xaau8; 4];
        assert!(!bus.read(0xc000_0000, &mut w));
        assert_eq!(w, [0xaa; 4]);
        assert!(!bus.read(0xd000_1ffe, &mut w));
        assert!(!bus.write(u64::MAX, &[1, 2]));
        assert!(bus.read(0xd000_0000, &mut []));
        assert_eq!(metrics.bus.unhandled_mmio_writes.get(), 1);
        assert!(metrics.bus.unhandled_mmio_reads.get() >= 2);
    }
}
