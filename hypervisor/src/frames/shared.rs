//! The guest's shared page-state table, seen from the host: one entry per
//! guest frame in guest memory (`pagehint_abi::state_table`), registered
//! by the guest with `SET_STATE_TABLE` and from then on the place where
//! every frame's state lives ([`crate::frames::FrameTable`] switches to
//! it).
//!
//! The entries are guest memory, so untrusted: the guest may write any
//! byte at any moment. This module only checks a registration and hands
//! out the entries as atomic bytes; the table's users decide nothing on
//! a byte alone that could hurt the host (the host's own record of what
//! it registered for discard faults stays in host memory). It must never
//! hand out an entry outside the registered range, and the range must
//! never leave guest RAM.

use std::ops::Range;
use std::sync::atomic::AtomicU8;

use pagehint_abi::{GuestPhys, PAGE_SIZE};

use crate::frames::host::HostMap;
use crate::frames::run::Run;
use crate::memory::GuestRam;

/// Why a `SET_STATE_TABLE` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ShareError {
    /// The table is not 4 KiB aligned or not wholly inside one range the
    /// memory map calls RAM.
    #[error("state table {0:#x} is not 4 KiB aligned or not wholly inside one RAM range of the memory map")]
    BadPlace(GuestPhys),
    /// The table does not have one entry per frame of the VMM's table.
    #[error("state table has {got} entries, the guest has {want} frames")]
    WrongLength { got: u64, want: u64 },
    /// A table is registered already (once per boot).
    #[error("a state table is registered already")]
    AlreadyShared,
    /// The VMM does not offer the shared table (`--hints` other than shared).
    #[error("the shared state table is not offered")]
    NotOffered,
}

/// The registered table: `len` atomic bytes at host address `base`.
pub struct SharedEntries {
    /// Keeps the guest RAM mapping (and so `base`) alive.
    _map: HostMap,
    base: *const AtomicU8,
    len: u64,
    /// The table's own frames: never claimed, whatever their entries say.
    own_frames: Range<u64>,
}

// SAFETY: `base` points into the guest RAM mapping that `_map` keeps alive
// for as long as this value lives; the entries are only ever accessed as
// `AtomicU8`, which is `Sync`, so sharing the pointer between threads is
// no different from sharing `&[AtomicU8]`.
unsafe impl Send for SharedEntries {}
// SAFETY: as for `Send`.
unsafe impl Sync for SharedEntries {}

impl std::fmt::Debug for SharedEntries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedEntries")
            .field("len", &self.len)
            .field("own_frames", &self.own_frames)
            .finish()
    }
}

impl SharedEntries {
    /// Checks a registration of `entries` entries at `table` against
    /// `ram`, whose frame table has `want` frames.
    pub fn new(
        ram: &GuestRam,
        table: GuestPhys,
        entries: u64,
        want: u64,
    ) -> Result<Self, ShareError> {
        if entries != want {
            return Err(ShareError::WrongLength { got: entries, want });
        }
        let bad = ShareError::BadPlace(table);
        if !table.is_page_aligned() || entries == 0 {
            return Err(bad);
        }
        let pages = entries.div_ceil(PAGE_SIZE);
        if !ram.in_usable_ram(table, pages * PAGE_SIZE) {
            return Err(bad);
        }
        let map = HostMap::new(ram).ok_or(bad)?;
        let first = table.pfn().as_u64();
        let range = map.range(Run {
            pfn: first,
            count: pages,
        });
        let range = range.ok_or(bad)?;
        Ok(Self {
            _map: map,
            base: range.addr as *const AtomicU8,
            len: entries,
            own_frames: first..first + pages,
        })
    }

    /// The entry of frame `pfn`, if the table has one.
    pub fn entry(&self, pfn: u64) -> Option<&AtomicU8> {
        if pfn >= self.len {
            return None;
        }
        // SAFETY: `pfn < len`, and the `len` bytes from `base` lie inside
        // guest RAM (checked through `HostMap::range` at registration) in
        // the mapping `_map` keeps alive; `AtomicU8` has the size and
        // alignment of a byte and tolerates concurrent writers (the guest's
        // stores are single-byte, so never torn).
        Some(unsafe { &*self.base.add(pfn as usize) })
    }

    /// Every entry, as one slice (for scans that visit many).
    pub fn entries(&self) -> &[AtomicU8] {
        // SAFETY: as for `entry`: the `len` bytes from `base` are inside
        // guest RAM, mapped while `_map` lives (as long as `self`), and
        // `AtomicU8` tolerates the guest's concurrent single-byte writes.
        unsafe { std::slice::from_raw_parts(self.base, self.len as usize) }
    }

    /// True if `pfn` holds the table itself.
    pub fn is_own_frame(&self, pfn: u64) -> bool {
        self.own_frames.contains(&pfn)
    }

    /// The table's own frames.
    pub fn own_frames(&self) -> Range<u64> {
        self.own_frames.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn registrations_are_checked_and_entries_are_guest_memory() {
        // 64 MiB: 16384 frames, a table of four pages.
        let ram = GuestRam::new(64 << 20).unwrap();
        let frames = ram.frames();
        let at = GuestPhys(0x10_0000);
        assert_eq!(
            SharedEntries::new(&ram, at, frames - 1, frames).unwrap_err(),
            ShareError::WrongLength {
                got: frames - 1,
                want: frames
            }
        );
        assert_eq!(
            SharedEntries::new(&ram, GuestPhys(0x10_0008), frames, frames).unwrap_err(),
            ShareError::BadPlace(GuestPhys(0x10_0008))
        );
        // The last page cannot hold a table of four.
        let top = GuestPhys((64 << 20) - PAGE_SIZE);
        assert_eq!(
            SharedEntries::new(&ram, top, frames, frames).unwrap_err(),
            ShareError::BadPlace(top)
        );
        let s = SharedEntries::new(&ram, at, frames, frames).unwrap();
        assert_eq!(s.own_frames(), 0x100..0x104);
        assert!(s.is_own_frame(0x103) && !s.is_own_frame(0x104));
        assert!(s.entry(frames).is_none());
        s.entry(7).unwrap().store(0x42, Ordering::Release);
        let b: u8 = ram.mem().read_obj(GuestAddress(0x10_0007)).unwrap();
        assert_eq!(b, 0x42, "the entry is the guest's byte");
        ram.mem()
            .write_obj(0x13u8, GuestAddress(0x10_0009))
            .unwrap();
        assert_eq!(s.entry(9).unwrap().load(Ordering::Acquire), 0x13);
    }

    #[test]
    fn a_table_in_the_hole_is_refused() {
        let ram = GuestRam::new(4 << 30).unwrap();
        let frames = ram.frames();
        let hole = ram.hole_frames();
        let at = GuestPhys(hole.start * PAGE_SIZE);
        assert_eq!(
            SharedEntries::new(&ram, at, frames, frames).unwrap_err(),
            ShareError::BadPlace(at)
        );
        // Straddling the hole's start is refused too.
        let below = GuestPhys((hole.start - 1) * PAGE_SIZE);
        assert!(SharedEntries::new(&ram, below, frames, frames).is_err());
    }

    /// Found by a guest written from docs/abi.md alone: tables in the
    /// legacy area below 1 MiB, which the memory map calls reserved, were
    /// accepted because the VMM's mapping covers it.
    #[test]
    fn a_table_outside_the_memory_maps_ram_is_refused() {
        // 32 MiB: 8192 frames, a table of two pages.
        let ram = GuestRam::new(32 << 20).unwrap();
        let frames = ram.frames();
        for at in [0xa_0000, 0x9_e000, 0x9_f000, 0xf_f000, 0xc_0000] {
            assert_eq!(
                SharedEntries::new(&ram, GuestPhys(at), frames, frames).unwrap_err(),
                ShareError::BadPlace(GuestPhys(at)),
                "{at:#x}"
            );
        }
        // Wholly inside the low RAM range, or from 1 MiB up: accepted.
        assert!(SharedEntries::new(&ram, GuestPhys(0x9_d000), frames, frames).is_ok());
        assert!(SharedEntries::new(&ram, GuestPhys(0x10_0000), frames, frames).is_ok());
        // The order of the checks: the entry count before the place.
        assert_eq!(
            SharedEntries::new(&ram, GuestPhys(0xa_0000), frames + 1, frames).unwrap_err(),
            ShareError::WrongLength {
                got: frames + 1,
                want: frames
            }
        );
    }
}
