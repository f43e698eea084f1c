//! Guest-physical addresses and frame numbers, each its own type so that
//! neither is confused with the other or with a virtual address.
//!
//! Only conversions and `PAGE_SIZE` arithmetic live here; whether an
//! address is in RAM is the VMM's business (it alone knows the layout).

use core::ops::Add;

/// Size of a guest page (and of a host page for the guest RAM mapping).
pub const PAGE_SIZE: u64 = 4096;

/// A guest-physical address.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GuestPhys(pub u64);

/// A guest page frame number: the guest-physical address divided by
/// [`PAGE_SIZE`].
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pfn(pub u64);

impl GuestPhys {
    /// The raw address, as it travels in a hypercall argument.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
    /// The frame this address lies in.
    pub const fn pfn(self) -> Pfn {
        Pfn(self.0 / PAGE_SIZE)
    }
    /// The offset of this address inside its page.
    pub const fn page_offset(self) -> u64 {
        self.0 % PAGE_SIZE
    }
    /// True if the address is a multiple of `align` (a power of two).
    pub const fn is_aligned(self, align: u64) -> bool {
        self.0 & (align - 1) == 0
    }
    /// True if the address is the start of a page.
    pub const fn is_page_aligned(self) -> bool {
        self.page_offset() == 0
    }
}

impl Pfn {
    /// The raw frame number, as it travels in a hint entry.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
    /// The address of the frame's first byte.
    pub const fn addr(self) -> GuestPhys {
        GuestPhys(self.0 * PAGE_SIZE)
    }
}

impl From<Pfn> for GuestPhys {
    fn from(p: Pfn) -> Self {
        p.addr()
    }
}

impl From<GuestPhys> for Pfn {
    /// The frame containing the address (the offset is dropped).
    fn from(a: GuestPhys) -> Self {
        a.pfn()
    }
}

/// `pfn + n`: the frame `n` frames further up.
impl Add<u64> for Pfn {
    type Output = Pfn;
    fn add(self, n: u64) -> Pfn {
        Pfn(self.0 + n)
    }
}

/// `addr + n`: the address `n` bytes further up.
impl Add<u64> for GuestPhys {
    type Output = GuestPhys;
    fn add(self, n: u64) -> GuestPhys {
        GuestPhys(self.0 + n)
    }
}

/// Printed as the raw address, so `{:#x}` reads as it did for a `u64`.
impl core::fmt::LowerHex for GuestPhys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::LowerHex::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_addresses_convert_both_ways() {
        let a = GuestPhys(0x12_3456);
        assert_eq!(a.pfn(), Pfn(0x123));
        assert_eq!(a.page_offset(), 0x456);
        assert!(!a.is_page_aligned());
        assert_eq!(Pfn(0x123).addr(), GuestPhys(0x12_3000));
        assert!(Pfn(0x123).addr().is_page_aligned());
        assert_eq!(Pfn::from(a), Pfn(0x123));
        assert_eq!(GuestPhys::from(Pfn(2)), GuestPhys(2 * PAGE_SIZE));
        assert_eq!(Pfn(7) + 3, Pfn(10));
        assert_eq!(GuestPhys(0x1000) + 0x40, GuestPhys(0x1040));
        assert!(GuestPhys(0x1040).is_aligned(64));
        assert!(!GuestPhys(0x1044).is_aligned(64));
    }

    #[test]
    fn an_address_prints_in_hex_as_its_raw_value() {
        extern crate std;
        assert_eq!(std::format!("{:#x}", GuestPhys(0x9040)), "0x9040");
        assert_eq!(std::format!("{:x}", GuestPhys(0xab)), "ab");
    }
}
