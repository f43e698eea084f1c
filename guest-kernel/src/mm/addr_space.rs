//! A user address space: its page tables, its areas, demand paging of
//! anonymous memory, and the `mmap`/`munmap`/`mprotect` operations.
//!
//! The kernel half (PML4 slots 256..512) is shared with every other address
//! space and never edited here. Frames mapped here are owned by this
//! address space alone and go back to the allocator when it is dropped.

use guest_kernel::paging::{flags, Flush, MapError, Mapper, ADDR_MASK, ENTRIES, KERNEL_PML4_SLOT};
use guest_kernel::vma::{Backing, VmaError, VmaSet};
use pagehint_abi::syscall::{prot, MMAP_BASE, STACK_TOP, USER_END};
use pagehint_abi::PAGE_SIZE;

use super::{alloc_zeroed_frame, free_frame, phys_to_virt, KernelPhys};
use crate::arch::{boot, cpu};

/// Why a user memory operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsError {
    NoMemory,
    BadRange,
    /// The access is not allowed by the area's protection, or no area.
    Fault,
}

impl From<MapError> for AsError {
    fn from(e: MapError) -> Self {
        match e {
            MapError::NoMemory => AsError::NoMemory,
            _ => AsError::BadRange,
        }
    }
}

impl From<VmaError> for AsError {
    fn from(e: VmaError) -> Self {
        match e {
            VmaError::NoSpace => AsError::NoMemory,
            VmaError::NotMapped => AsError::Fault,
            _ => AsError::BadRange,
        }
    }
}

/// Leaf flags for a protection.
fn leaf_flags(p: u64) -> u64 {
    let mut f = if p & prot::EXEC != 0 {
        0
    } else {
        flags::NO_EXECUTE
    };
    if p & (prot::READ | prot::EXEC) != 0 {
        f |= flags::USER;
    }
    if p & prot::WRITE != 0 {
        f |= flags::USER | flags::WRITABLE;
    }
    f
}

/// Flushes a TLB entry if this address space is the one loaded.
fn flush(f: Flush, pml4: u64) {
    if cpu::read_cr3() & ADDR_MASK == pml4 {
        cpu::invlpg(f.addr());
    } else {
        // Not live on this CPU, and processes are single-threaded: the
        // next CR3 load drops stale entries.
        f.ignore();
    }
}

pub struct AddressSpace {
    pml4: u64,
    vmas: VmaSet,
}

impl AddressSpace {
    /// An empty user half over the shared kernel half.
    pub fn new() -> Result<Self, AsError> {
        let pml4 = alloc_zeroed_frame().ok_or(AsError::NoMemory)?;
        let kernel = phys_to_virt(boot::kernel_pml4_phys()) as *const u64;
        let new = phys_to_virt(pml4) as *mut u64;
        // SAFETY: both are page-table frames in the direct map; only the
        // kernel-half slots are copied.
        unsafe {
            core::ptr::copy_nonoverlapping(
                kernel.add(KERNEL_PML4_SLOT),
                new.add(KERNEL_PML4_SLOT),
                ENTRIES - KERNEL_PML4_SLOT,
            )
        };
        Ok(Self {
            pml4,
            vmas: VmaSet::new(),
        })
    }

    /// Physical address of the PML4, for CR3.
    pub fn root(&self) -> u64 {
        self.pml4
    }

    fn mapper<'a>(&self, phys: &'a mut KernelPhys) -> Mapper<'a, KernelPhys> {
        Mapper::new(self.pml4, phys)
    }

    /// Declares an area; pages are filled on first touch (or by `populate`).
    pub fn add_area(
        &mut self,
        start: u64,
        len: u64,
        p: u64,
        backing: Backing,
    ) -> Result<(), AsError> {
        Ok(self.vmas.insert(start, len, p, backing)?)
    }

    /// Maps a zeroed frame at `va` with the area's protection and returns
    /// its physical address (program loading).
    pub fn populate(&mut self, va: u64) -> Result<u64, AsError> {
        let p = self.vmas.find(va).ok_or(AsError::Fault)?.prot;
        let pa = alloc_zeroed_frame().ok_or(AsError::NoMemory)?;
        if let Err(e) = self.mapper(&mut KernelPhys).map(va, pa, leaf_flags(p)) {
            free_frame(pa);
            return Err(e.into());
        }
        Ok(pa)
    }

    /// Resolves a user page fault at `addr` for an access needing `need`
    /// (`prot` bits): fills a missing page of an area that allows the
    /// access, or refuses.
    pub fn handle_fault(&mut self, addr: u64, need: u64) -> Result<(), AsError> {
        let vma = *self.vmas.find(addr).ok_or(AsError::Fault)?;
        if vma.prot & need != need {
            return Err(AsError::Fault);
        }
        let page = addr & !(PAGE_SIZE - 1);
        if let Some(e) = self.mapper(&mut KernelPhys).translate(page) {
            // Present: the access is legal only if the entry now allows it
            // (a TLB entry older than an mprotect); otherwise refuse rather
            // than fault again for ever.
            let want = leaf_flags(need);
            let allowed = e & want & (flags::USER | flags::WRITABLE)
                == want & (flags::USER | flags::WRITABLE)
                && (need & prot::EXEC == 0 || e & flags::NO_EXECUTE == 0);
            if allowed {
                cpu::invlpg(page);
                return Ok(());
            }
            return Err(AsError::Fault);
        }
        match vma.backing {
            Backing::Anonymous | Backing::Stack => self.populate(page).map(|_| ()),
            Backing::Image => Err(AsError::Fault),
        }
    }

    /// `mmap`: a new anonymous area of `len` bytes.
    pub fn mmap(&mut self, len: u64, p: u64) -> Result<u64, AsError> {
        let len = len
            .checked_next_multiple_of(PAGE_SIZE)
            .ok_or(AsError::BadRange)?;
        let start = self.vmas.find_gap(len, MMAP_BASE, STACK_TOP - (1 << 30))?;
        self.vmas.insert(start, len, p, Backing::Anonymous)?;
        Ok(start)
    }

    /// `munmap`: removes the range and frees its frames.
    pub fn munmap(&mut self, start: u64, len: u64) -> Result<(), AsError> {
        check_user_range(start, len)?;
        self.vmas.remove(start, len)?;
        let mut phys = KernelPhys;
        let mut m = self.mapper(&mut phys);
        let mut va = start;
        while va < start + len {
            if let Some((old, f)) = m.unmap(va) {
                flush(f, self.pml4);
                free_frame(old & ADDR_MASK);
            }
            va += PAGE_SIZE;
        }
        Ok(())
    }

    /// `mprotect`: changes the protection of a mapped range, populated
    /// pages included. `PROT_NONE` keeps the frame but drops user access.
    pub fn mprotect(&mut self, start: u64, len: u64, p: u64) -> Result<(), AsError> {
        check_user_range(start, len)?;
        self.vmas.protect(start, len, p)?;
        let new = leaf_flags(p);
        let mask = flags::USER | flags::WRITABLE | flags::NO_EXECUTE;
        let pml4 = self.pml4;
        let mut phys = KernelPhys;
        let mut m = self.mapper(&mut phys);
        let mut va = start;
        while va < start + len {
            if let Some(f) = m.update(va, |e| (e & !mask) | new) {
                flush(f, pml4);
            }
            va += PAGE_SIZE;
        }
        Ok(())
    }

    /// Copies user bytes at `va` into `out`, filling pages on demand and
    /// checking read permission page by page.
    pub fn copy_from_user(&mut self, va: u64, out: &mut [u8]) -> Result<(), AsError> {
        check_user_range(va, out.len() as u64)?;
        let mut done = 0;
        while done < out.len() {
            let at = va + done as u64;
            let page = at & !(PAGE_SIZE - 1);
            let entry = match self.mapper(&mut KernelPhys).translate(page) {
                Some(e) => e,
                None => {
                    self.handle_fault(at, prot::READ)?;
                    self.mapper(&mut KernelPhys)
                        .translate(page)
                        .ok_or(AsError::Fault)?
                }
            };
            if entry & flags::USER == 0 {
                return Err(AsError::Fault);
            }
            let offset = at - page;
            let n = ((PAGE_SIZE - offset) as usize).min(out.len() - done);
            let src = phys_to_virt((entry & ADDR_MASK) + offset) as *const u8;
            // SAFETY: the frame is mapped user-readable in this address
            // space and the direct map covers it; `n` stays in the page.
            unsafe { core::ptr::copy_nonoverlapping(src, out[done..].as_mut_ptr(), n) };
            done += n;
        }
        Ok(())
    }

    /// Copies `data` into the populated page at `va` (program loading).
    pub fn write_populated(&mut self, pa: u64, offset: u64, data: &[u8]) {
        debug_assert!(offset + data.len() as u64 <= PAGE_SIZE);
        // SAFETY: `pa` is a frame this address space owns; the copy stays
        // inside it.
        unsafe {
            core::ptr::copy_nonoverlapping(
                data.as_ptr(),
                phys_to_virt(pa + offset) as *mut u8,
                data.len(),
            )
        };
    }
}

fn check_user_range(start: u64, len: u64) -> Result<(), AsError> {
    match start.checked_add(len) {
        Some(end) if end <= USER_END => Ok(()),
        _ => Err(AsError::BadRange),
    }
}

impl Drop for AddressSpace {
    fn drop(&mut self) {
        let mut phys = KernelPhys;
        Mapper::new(self.pml4, &mut phys).destroy_user_half(|e| free_frame(e & ADDR_MASK));
        free_frame(self.pml4);
    }
}
