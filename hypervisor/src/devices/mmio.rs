//! MMIO: the device trait and the MMIO bus (the one `Bus` over
//! guest-physical addresses).
//!
//! A vCPU thread hands every `KVM_EXIT_MMIO` to [`MmioBus::read`] or
//! [`MmioBus::write`]. An access that starts inside a device's window goes to
//! that device with the offset from the window's base; anything else is left
//! to the caller (which answers reads with all-ones and counts them, as it
//! always did). The bus is built before the vCPUs start and is immutable
//! afterwards. It must never panic on an address, width or value the guest
//! chooses, and never hand a device an access that runs past its window.

use std::sync::{Arc, Mutex};

use pagehint_abi::GuestPhys;

use crate::devices::bus::{Bus, BusError};
use crate::metrics::{Counter, Metrics};

/// A device on the MMIO bus. `offset` is relative to the window's base;
/// `data` is whatever width the guest used (1, 2, 4 or 8 bytes),
/// little-endian.
pub trait MmioDevice: Send {
    /// Fills `data` for a load.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a store.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A shared MMIO device.
pub type SharedMmioDevice = Arc<Mutex<dyn MmioDevice>>;

/// The MMIO bus.
#[derive(Debug)]
pub struct MmioBus {
    bus: Bus<dyn MmioDevice>,
    metrics: Arc<Metrics>,
}

impl MmioBus {
    /// An empty bus.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            bus: Bus::new(u64::MAX),
            metrics,
        }
    }

    /// Claims `base..base + len` for `device`.
    pub fn insert(
        &mut self,
        base: GuestPhys,
        len: u64,
        device: SharedMmioDevice,
    ) -> Result<(), BusError> {
        self.bus.insert(base.as_u64(), len, device)
    }

    /// Handles a load from `addr`. Returns false, leaving `data` alone, if
    /// no device claims the whole access.
    pub fn read(&self, addr: GuestPhys, data: &mut [u8]) -> bool {
        let miss = &self.metrics.bus.unhandled_mmio_reads;
        self.route(addr, data.len(), miss, |device, offset| {
            device.read(offset, data)
        })
    }

    /// Handles a store to `addr`. Returns false if no device claims the
    /// whole access (the store is then ignored).
    pub fn write(&self, addr: GuestPhys, data: &[u8]) -> bool {
        let miss = &self.metrics.bus.unhandled_mmio_writes;
        self.route(addr, data.len(), miss, |device, offset| {
            device.write(offset, data)
        })
    }

    /// Hands an access of `len` bytes at `addr` to the device whose window
    /// holds all of it, with the offset into that window; counts `miss`
    /// and returns false if no device does.
    fn route(
        &self,
        addr: GuestPhys,
        len: usize,
        miss: &Counter,
        access: impl FnOnce(&mut dyn MmioDevice, u64),
    ) -> bool {
        match self.bus.find(addr.as_u64(), len) {
            Some((mut device, offset)) => {
                access(&mut *device, offset);
                true
            }
            None => {
                miss.inc();
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
        bus.insert(GuestPhys(0xd000_0000), 0x1000, a.clone())
            .unwrap();
        assert_eq!(
            bus.insert(GuestPhys(0xd000_0800), 0x1000, probe(0)),
            Err(BusError::Overlap {
                base: 0xd000_0800,
                len: 0x1000
            })
        );
        assert!(matches!(
            bus.insert(GuestPhys(u64::MAX - 4), 8, probe(0)),
            Err(BusError::BadRange { .. })
        ));
        assert!(matches!(
            bus.insert(GuestPhys(0x1000), 0, probe(0)),
            Err(BusError::BadRange { .. })
        ));
        bus.insert(GuestPhys(0xd000_1000), 0x1000, probe(0x80))
            .unwrap();

        let mut w = [0u8; 4];
        assert!(bus.read(GuestPhys(0xd000_0004), &mut w));
        assert_eq!(w, [0x14; 4]);
        assert!(bus.read(GuestPhys(0xd000_1000), &mut w));
        assert_eq!(w, [0x80; 4]);
        assert!(bus.write(GuestPhys(0xd000_0070), &[1, 0, 0, 0]));
        let last = a.lock().unwrap().last.clone();
        assert_eq!(last, Some((0x70, vec![1, 0, 0, 0])));

        // Unclaimed, and straddling the end of the last window.
        let mut w = [0xaau8; 4];
        assert!(!bus.read(GuestPhys(0xc000_0000), &mut w));
        assert_eq!(w, [0xaa; 4]);
        assert!(!bus.read(GuestPhys(0xd000_1ffe), &mut w));
        assert!(!bus.write(GuestPhys(u64::MAX), &[1, 2]));
        assert!(bus.read(GuestPhys(0xd000_0000), &mut []));
        assert_eq!(metrics.bus.unhandled_mmio_writes.get(), 1);
        assert!(metrics.bus.unhandled_mmio_reads.get() >= 2);
    }
}
