//! The one bus: address windows mapped to shared devices, used for both
//! port I/O (`crate::devices::pio`, 16-bit port numbers) and MMIO
//! (`crate::devices::mmio`, guest-physical addresses).
//!
//! A window is `base..base + len`; windows never overlap and never run past
//! the bus's address limit. [`Bus::find`] returns the device whose window
//! holds the whole access, locked, and the offset of the access in it. The
//! bus is built before the vCPUs start and is immutable afterwards. It must
//! never panic on an address or width the guest chooses, and never hand a
//! device an access that runs past its window.

use std::sync::{Arc, Mutex, MutexGuard};

/// Why a device could not be added.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The window is empty or runs past the end of the address space.
    #[error("invalid window {base:#x}+{len:#x}")]
    BadRange { base: u64, len: u64 },
    /// The window overlaps one already on the bus.
    #[error("window {base:#x}+{len:#x} overlaps another device")]
    Overlap { base: u64, len: u64 },
}

struct Window<D: ?Sized> {
    base: u64,
    /// One past the last address (checked against the limit on insert).
    end: u64,
    device: Arc<Mutex<D>>,
}

/// Address windows of devices of type `D` (a trait object).
pub struct Bus<D: ?Sized> {
    windows: Vec<Window<D>>,
    /// One past the highest address of the bus.
    limit: u64,
}

impl<D: ?Sized> std::fmt::Debug for Bus<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let w: Vec<(u64, u64)> = self.windows.iter().map(|w| (w.base, w.end)).collect();
        f.debug_struct("Bus")
            .field("windows", &w)
            .field("limit", &self.limit)
            .finish()
    }
}

/// Locks a device even if a previous holder panicked: device state is
/// plain data, and a poisoned lock must not take the whole VMM down.
fn lock<D: ?Sized>(device: &Mutex<D>) -> MutexGuard<'_, D> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<D: ?Sized> Bus<D> {
    /// An empty bus whose addresses are below `limit` (`u64::MAX` for
    /// "the whole space").
    pub fn new(limit: u64) -> Self {
        Self {
            windows: Vec::new(),
            limit,
        }
    }

    /// Claims `base..base + len` for `device`.
    pub fn insert(&mut self, base: u64, len: u64, device: Arc<Mutex<D>>) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|&end| len > 0 && end <= self.limit)
            .ok_or(BusError::BadRange { base, len })?;
        if self.windows.iter().any(|w| base < w.end && w.base < end) {
            return Err(BusError::Overlap { base, len });
        }
        self.windows.push(Window { base, end, device });
        self.windows.sort_by_key(|w| w.base);
        Ok(())
    }

    /// The device whose window holds all `len` bytes from `addr`, locked,
    /// and the offset of `addr` in the window.
    pub fn find(&self, addr: u64, len: usize) -> Option<(MutexGuard<'_, D>, u64)> {
        let last = addr.checked_add(u64::try_from(len).ok()?.saturating_sub(1))?;
        self.windows
            .iter()
            .find(|w| w.base <= addr && last < w.end)
            .map(|w| (lock(&w.device), addr - w.base))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    trait Tag: Send {
        fn tag(&self) -> u8;
    }
    struct T(u8);
    impl Tag for T {
        fn tag(&self) -> u8 {
            self.0
        }
    }
    fn dev(tag: u8) -> Arc<Mutex<dyn Tag>> {
        Arc::new(Mutex::new(T(tag)))
    }

    #[test]
    fn windows_are_checked_and_found_whole() {
        let mut bus: Bus<dyn Tag> = Bus::new(0x1_0000);
        bus.insert(0x3f8, 8, dev(1)).unwrap();
        bus.insert(0xf4, 4, dev(2)).unwrap();
        assert_eq!(
            bus.insert(0x3fc, 8, dev(0)),
            Err(BusError::Overlap {
                base: 0x3fc,
                len: 8
            })
        );
        assert!(matches!(
            bus.insert(0xfffe, 8, dev(0)),
            Err(BusError::BadRange { .. })
        ));
        assert!(matches!(
            bus.insert(0x10, 0, dev(0)),
            Err(BusError::BadRange { .. })
        ));
        assert!(matches!(
            bus.insert(u64::MAX - 4, 8, dev(0)),
            Err(BusError::BadRange { .. })
        ));
        bus.insert(0xfff8, 8, dev(3)).unwrap();
        let (d, off) = bus.find(0x3fa, 1).unwrap();
        assert_eq!((d.tag(), off), (1, 2));
        drop(d);
        assert_eq!(bus.find(0xf4, 4).map(|(d, o)| (d.tag(), o)), Some((2, 0)));
        assert!(bus.find(0xf6, 4).is_none(), "runs past the window");
        assert!(bus.find(0x80, 1).is_none());
        assert!(bus.find(u64::MAX, 2).is_none());
        assert_eq!(bus.find(0xffff, 1).map(|(d, o)| (d.tag(), o)), Some((3, 7)));
    }
}
