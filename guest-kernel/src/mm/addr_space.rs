//! User address spaces: page tables, areas, demand paging of anonymous and
//! file memory, copy-on-write, and `mmap`/`munmap`/`mprotect`.
//!
//! Every operation here runs under the memory-management lock (it is a
//! method of [`MmState`]) and keeps the frame records (reference and map
//! counts, reverse map, `WRITABLE_MAPPED`) in step with the page tables.
//! The kernel half (PML4 slots 256..512) is shared and never edited here.
//!
//! Copying into and out of user frames is its job, so it touches physical
//! memory through the direct map (unsafe, each block saying why): frames
//! the page tables of an address space it holds map, frames it has just
//! allocated, and the kernel PML4's upper half (read only). Two functions
//! that take a physical address from their callers are `unsafe fn`:
//! [`MmState::copy_phys_to_user`] and [`MmState::write_frame`].

use guest_logic::frame_table::{flag, Mapping};
use guest_logic::paging::{
    flags, Flush, FlushBatch, MapError, Mapper, ADDR_MASK, ENTRIES, KERNEL_PML4_SLOT,
};
use guest_logic::vma::{Backing, VmaError, VmaSet};
use pagehint_abi::syscall::{prot, MMAP_BASE, STACK_TOP, USER_END};
use pagehint_abi::PAGE_SIZE;

use super::MmState;
use crate::arch::{boot, cpu, direct_map};
use crate::phys::pages::{free_frame, KernelPhys};
use crate::phys::tlb;

/// Pages mapped by one file fault (the faulting one included), as Linux's
/// default `fault_around_bytes` of 64 KiB.
const FAULT_AROUND: u64 = 16;

/// Why a user memory operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsError {
    NoMemory,
    BadRange,
    /// The access is not allowed by the area's protection, or no area.
    Fault,
    /// The disk failed to deliver a file page.
    Io,
    /// No such address space.
    NoSpace,
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
pub fn leaf_flags(p: u64) -> u64 {
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

pub struct AddressSpace {
    pml4: u64,
    vmas: VmaSet,
}

impl AddressSpace {
    /// An empty user half over the shared kernel half.
    pub fn new() -> Result<Self, AsError> {
        let pml4 = crate::phys::pages::alloc_zeroed_frame().ok_or(AsError::NoMemory)?;
        let half = (KERNEL_PML4_SLOT * 8) as u64;
        // SAFETY: the source is the kernel-half slots of the boot PML4,
        // a page-table frame the kernel only reads after boot and nothing
        // references; the destination is the same slots of the frame just
        // allocated, ours alone. Both stay inside their page.
        unsafe {
            direct_map::copy(
                boot::kernel_pml4_phys() + half,
                pml4 + half,
                (ENTRIES - KERNEL_PML4_SLOT) * 8,
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

    /// Its areas, in address order.
    pub fn vmas(&self) -> impl Iterator<Item = &guest_logic::vma::Vma> {
        self.vmas.iter()
    }

    /// The current entry for `va`, if present.
    pub fn translate(&self, va: u64) -> Option<u64> {
        Mapper::new(self.pml4, &mut KernelPhys).translate(va)
    }
}

fn check_user_range(start: u64, len: u64) -> Result<u64, AsError> {
    match start.checked_add(len) {
        Some(end) if end <= USER_END => Ok(end),
        _ => Err(AsError::BadRange),
    }
}

impl MmState {
    fn space(&mut self, asid: u32) -> Result<&mut AddressSpace, AsError> {
        self.spaces.get_mut(&asid).ok_or(AsError::NoSpace)
    }

    /// Maps frame `pa` at `va` of `asid` and records the mapping. Takes
    /// its own reference; a writable mapping marks the frame
    /// `WRITABLE_MAPPED` (seed 000: the first writable PTE of a page).
    pub(super) fn map_frame(
        &mut self,
        asid: u32,
        va: u64,
        pa: u64,
        leaf: u64,
    ) -> Result<(), AsError> {
        let pml4 = self.space(asid)?.pml4;
        Mapper::new(pml4, &mut KernelPhys).map(va, pa, leaf)?;
        let pfn = pa / PAGE_SIZE;
        let _ = self.frames.rmap_add(pfn, Mapping { asid, va });
        if leaf & flags::WRITABLE != 0 {
            self.first_writable(pfn);
        }
        Ok(())
    }

    /// Seed 000's `check_writable`: the first writable PTE of a frame tells
    /// the host, and marks the frame `WRITABLE_MAPPED` until its last
    /// mapping goes. Anonymous frames are stable already, so the hint is
    /// queued and nothing waits; a cache page went through
    /// [`Self::writable_cache_page`] before its PTE was built.
    fn first_writable(&mut self, pfn: u64) {
        if self.frames.flags(pfn) & flag::WRITABLE_MAPPED == 0 {
            self.frames.set_flags(pfn, flag::WRITABLE_MAPPED);
            crate::phys::hints::queue(pagehint_abi::hypercall::HintOp::CheckWritable, pfn);
        }
    }

    /// Removes the mapping at `va` of `asid`; frees the frame if that was
    /// its last reference. Returns the flush owed.
    pub(super) fn unmap_frame(&mut self, asid: u32, va: u64) -> Option<Flush> {
        let pml4 = self.spaces.get(&asid)?.pml4;
        let (old, flush) = Mapper::new(pml4, &mut KernelPhys).unmap(va)?;
        self.drop_mapping(asid, va, old);
        Some(flush)
    }

    /// The records' side of a PTE `pte` of `asid` at `va` that is gone:
    /// its dirty bit, its reverse-map entry, and the frame
    /// itself if that was its last reference.
    fn drop_mapping(&mut self, asid: u32, va: u64, pte: u64) {
        let pa = pte & ADDR_MASK;
        self.unmapped_pte(pa / PAGE_SIZE, pte);
        if self
            .frames
            .rmap_remove(pa / PAGE_SIZE, Mapping { asid, va })
            == Ok(true)
        {
            free_frame(pa);
        }
    }

    /// A new empty address space; returns its id.
    pub fn create_space(&mut self) -> Result<u32, AsError> {
        let asid = self.next_asid;
        self.next_asid += 1;
        let s = AddressSpace::new()?;
        self.spaces.insert(asid, s);
        Ok(asid)
    }

    /// Physical root of `asid`.
    pub fn root(&self, asid: u32) -> Option<u64> {
        self.spaces.get(&asid).map(|s| s.pml4)
    }

    /// Tears an address space down, dropping every mapping. Must not be
    /// loaded on any CPU.
    pub fn destroy_space(&mut self, asid: u32) {
        let Some(space) = self.spaces.remove(&asid) else {
            return;
        };
        let mut leaves = alloc::vec::Vec::new();
        for vma in space.vmas.iter() {
            let mut va = vma.start;
            while va < vma.end {
                if let Some(e) = space.translate(va) {
                    leaves.push((va, e));
                }
                va += PAGE_SIZE;
            }
        }
        for (va, e) in leaves {
            // A dirty shared page stays dirty in the cache for the next
            // write-back (`exit` wrote back what it could already).
            self.drop_mapping(asid, va, e);
        }
        // The frames are accounted for; now free the tables.
        Mapper::new(space.pml4, &mut KernelPhys).destroy_user_half(|_| {});
        free_frame(space.pml4);
    }

    /// Declares an area of `asid`.
    pub fn add_area(
        &mut self,
        asid: u32,
        start: u64,
        len: u64,
        p: u64,
        backing: Backing,
    ) -> Result<(), AsError> {
        check_user_range(start, len)?;
        Ok(self.space(asid)?.vmas.insert(start, len, p, backing)?)
    }

    /// A zeroed anonymous frame mapped at `va` with the area's protection;
    /// returns its physical address (program loading, demand-zero).
    pub fn populate_anon(&mut self, asid: u32, va: u64) -> Result<u64, AsError> {
        let p = self.space(asid)?.vmas.find(va).ok_or(AsError::Fault)?.prot;
        let pa = self.alloc_frame(false).ok_or(AsError::NoMemory)?;
        self.frames.set_flags(pa / PAGE_SIZE, flag::ANON);
        let r = self.map_frame(asid, va, pa, leaf_flags(p));
        // Drop the allocation's reference: the mapping holds its own.
        if self.frames.put(pa / PAGE_SIZE) {
            free_frame(pa);
        }
        r.map(|_| pa)
    }

    /// Resolves a user page fault at `addr` needing `need` (`prot` bits).
    pub fn fault(&mut self, asid: u32, addr: u64, need: u64) -> Result<(), AsError> {
        self.stats.page_faults += 1;
        let vma = *self.space(asid)?.vmas.find(addr).ok_or(AsError::Fault)?;
        if vma.prot & need != need {
            return Err(AsError::Fault);
        }
        let page = addr & !(PAGE_SIZE - 1);
        if let Some(e) = self.space(asid)?.translate(page) {
            let want = leaf_flags(need) & (flags::USER | flags::WRITABLE);
            let exec_ok = need & prot::EXEC == 0 || e & flags::NO_EXECUTE == 0;
            if e & want == want && exec_ok {
                // A TLB entry older than the page tables: drop it.
                cpu::invlpg(page);
                return Ok(());
            }
            // Present but read-only where the area allows writing: a
            // private file page to copy, or a shared one to make writable.
            if need & prot::WRITE != 0 {
                match vma.file_page(page) {
                    Some((_, _, false)) => return self.cow(asid, page, e, vma.prot),
                    Some((_, _, true)) => return self.upgrade_shared(asid, page, e),
                    None => {}
                }
            }
            return Err(AsError::Fault);
        }
        match vma.file_page(page) {
            None => self.populate_anon(asid, page).map(|_| ()),
            Some((file, index, shared)) => {
                self.stats.file_faults += 1;
                let pfn = self.get_file_page(file, index)?;
                if shared && need & prot::WRITE != 0 {
                    return self.map_shared_writable(asid, page, pfn, vma.prot);
                }
                let r = if shared || need & prot::WRITE == 0 {
                    // Map the cache page itself, never writable.
                    let leaf = leaf_flags(vma.prot & !prot::WRITE);
                    let r = self.map_frame(asid, page, pfn * PAGE_SIZE, leaf);
                    if r.is_ok() {
                        self.fault_around(asid, page, vma.end, file, index, leaf);
                    }
                    r
                } else {
                    self.copy_into_anon(asid, page, pfn * PAGE_SIZE, vma.prot)
                };
                if self.frames.put(pfn) {
                    free_frame(pfn * PAGE_SIZE);
                }
                r
            }
        }
    }

    /// Maps, read-only, the pages after `page` whose file pages are already
    /// cached (Linux's fault-around): one trap then serves a whole
    /// read-ahead window, and traps are what cost most here.
    fn fault_around(&mut self, asid: u32, page: u64, end: u64, file: u32, index: u64, leaf: u64) {
        for k in 1..FAULT_AROUND {
            let va = page + k * PAGE_SIZE;
            if va >= end {
                break;
            }
            let Some(pfn) = self.frames.lookup(file, index + k) else {
                break;
            };
            if self.space(asid).map_or(true, |s| s.translate(va).is_some()) {
                break;
            }
            if self.map_frame(asid, va, pfn * PAGE_SIZE, leaf).is_err() {
                break;
            }
        }
    }

    /// Replaces the read-only mapping `old` at `page` with a private copy.
    fn cow(&mut self, asid: u32, page: u64, old: u64, p: u64) -> Result<(), AsError> {
        let src = old & ADDR_MASK;
        if !self.ensure_stable(src / PAGE_SIZE) {
            // The host had dropped the file page and it is unmapped now:
            // the retried access faults and reads it again.
            return Ok(());
        }
        // Keep the source alive across the unmap.
        self.frames.get(src / PAGE_SIZE);
        if let Some(f) = self.unmap_frame(asid, page) {
            cpu::invlpg(f.addr());
        }
        let r = self.copy_into_anon(asid, page, src, p);
        if self.frames.put(src / PAGE_SIZE) {
            free_frame(src);
        }
        r
    }

    /// Maps at `page` a new anonymous frame holding a copy of `src`.
    fn copy_into_anon(&mut self, asid: u32, page: u64, src: u64, p: u64) -> Result<(), AsError> {
        let pa = self.alloc_frame(true).ok_or(AsError::NoMemory)?;
        // SAFETY: `src` is the stable frame `cow` holds a reference on;
        // `pa` is the frame just allocated (a reference held, mapped
        // nowhere yet); distinct frames do not overlap. One `rep movs`.
        unsafe { direct_map::copy(src, pa, PAGE_SIZE as usize) };
        self.stats.cow_copies += 1;
        self.frames.set_flags(pa / PAGE_SIZE, flag::ANON);
        let r = self.map_frame(asid, page, pa, leaf_flags(p));
        if self.frames.put(pa / PAGE_SIZE) {
            free_frame(pa);
        }
        r
    }

    /// `mmap` of anonymous memory.
    pub fn mmap(&mut self, asid: u32, len: u64, p: u64, backing: Backing) -> Result<u64, AsError> {
        let len = len
            .checked_next_multiple_of(PAGE_SIZE)
            .ok_or(AsError::BadRange)?;
        let space = self.space(asid)?;
        let start = space.vmas.find_gap(len, MMAP_BASE, STACK_TOP - (1 << 30))?;
        space.vmas.insert(start, len, p, backing)?;
        Ok(start)
    }

    /// `munmap`: removes the range and drops its mappings; the file pages
    /// they dirtied are written back.
    pub fn munmap(&mut self, asid: u32, start: u64, len: u64) -> Result<(), AsError> {
        let end = check_user_range(start, len)?;
        let shared = self.shared_pages(asid, start, end)?;
        self.space(asid)?.vmas.remove(start, len)?;
        let mut batch = FlushBatch::new();
        let mut va = start;
        while va < end {
            if let Some(f) = self.unmap_frame(asid, va) {
                batch.add(f);
            }
            va += PAGE_SIZE;
        }
        let pml4 = self.space(asid)?.pml4;
        // Leaf tables of whole 2 MiB regions the range covered go too, so
        // freed memory is not pinned by empty page tables.
        let mut phys = KernelPhys;
        let mut m = Mapper::new(pml4, &mut phys);
        let mut region = start.next_multiple_of(1 << 21);
        while region + (1 << 21) <= end {
            if let Some(f) = m.free_leaf_table(region) {
                batch.add(f);
            }
            region += 1 << 21;
        }
        tlb::flush_local(batch, pml4);
        if !shared.is_empty() && self.writeback(&shared).is_err() {
            // The pages stay dirty in the cache; `fsync` reports the error.
            crate::console::println!("guest: write-back at munmap failed");
        }
        Ok(())
    }

    /// `mprotect`: one read-modify-write transaction per present page
    /// (seed 004), all in one batch whose TLB work is paid once at the end.
    /// Private file pages stay read-only (they are copied on write).
    pub fn mprotect(&mut self, asid: u32, start: u64, len: u64, p: u64) -> Result<(), AsError> {
        let end = check_user_range(start, len)?;
        let space = self.space(asid)?;
        space.vmas.protect(start, len, p)?;
        let pml4 = space.pml4;
        let mut batch = FlushBatch::new();
        let mask = flags::USER | flags::WRITABLE | flags::NO_EXECUTE;
        let mut phys = KernelPhys;
        let mut m = Mapper::new(pml4, &mut phys);
        let mut va = start;
        while va < end {
            if let Some(txn) = m.modify_prot_start(va) {
                let pfn = (txn.old & ADDR_MASK) / PAGE_SIZE;
                let mut leaf = leaf_flags(p);
                if self.frames.flags(pfn) & flag::CACHED != 0 {
                    leaf &= !flags::WRITABLE;
                } else if leaf & flags::WRITABLE != 0 {
                    self.first_writable(pfn);
                }
                let new = (txn.old & !mask) | leaf;
                batch.add(m.modify_prot_commit(txn, new));
            }
            va += PAGE_SIZE;
        }
        tlb::flush_local(batch, pml4);
        // The hints the transaction queued are committed once per call.
        crate::phys::hints::commit();
        Ok(())
    }

    /// The frame behind user page `page` for an access needing `need`,
    /// faulted in if missing.
    fn user_frame(&mut self, asid: u32, at: u64, need: u64) -> Result<u64, AsError> {
        let page = at & !(PAGE_SIZE - 1);
        let want = leaf_flags(need) & (flags::USER | flags::WRITABLE);
        for _ in 0..2 {
            if let Some(e) = self.space(asid)?.translate(page) {
                // The kernel must never touch a volatile page.
                if e & want == want && self.ensure_stable((e & ADDR_MASK) / PAGE_SIZE) {
                    return Ok(e & ADDR_MASK);
                }
            }
            self.fault(asid, at, need)?;
        }
        Err(AsError::Fault)
    }

    /// Copies user bytes at `va` into `out`.
    pub fn copy_from_user(&mut self, asid: u32, va: u64, out: &mut [u8]) -> Result<(), AsError> {
        check_user_range(va, out.len() as u64)?;
        let mut done = 0;
        while done < out.len() {
            let at = va + done as u64;
            let pa = self.user_frame(asid, at, prot::READ)?;
            let off = at % PAGE_SIZE;
            let n = ((PAGE_SIZE - off) as usize).min(out.len() - done);
            // SAFETY: `pa` is a stable frame mapped user-readable in this
            // address space, under the memory-management lock; `off + n`
            // stays in the page; `out` is kernel memory, never a user
            // frame, so the two do not overlap.
            unsafe { direct_map::read_into(pa + off, &mut out[done..done + n]) };
            done += n;
        }
        Ok(())
    }

    /// Copies `data` to user memory at `va` (which must be writable).
    pub fn copy_to_user(&mut self, asid: u32, va: u64, data: &[u8]) -> Result<(), AsError> {
        self.copy_to_user_with(asid, va, data.len(), |dst, done, n| {
            // SAFETY: `copy_to_user_with` hands `put` an address in a
            // stable frame mapped user-writable here, with `n` bytes left
            // in its page; `data` is kernel memory, never a user frame.
            unsafe { direct_map::write_from(dst, &data[done..done + n]) }
        })
    }

    /// Copies `len` bytes of physical memory at `src` to user memory at
    /// `va` (which must be writable).
    ///
    /// # Safety
    ///
    /// `src..src + len` lies in one stable frame the caller holds a
    /// reference on (so it is not freed or discarded during the copy)
    /// and that no Rust reference points into. The destination may be
    /// that same frame: a `read` of a file page into this address
    /// space's own shared, writable mapping of it; the copy is then a
    /// `memmove`.
    pub unsafe fn copy_phys_to_user(
        &mut self,
        asid: u32,
        va: u64,
        src: u64,
        len: usize,
    ) -> Result<(), AsError> {
        self.copy_to_user_with(asid, va, len, |dst, done, n| {
            // SAFETY: the source is the caller's, see # Safety (`done + n`
            // stays within `len`); the destination is a stable frame
            // mapped user-writable here, with `n` bytes left in its page,
            // possibly the source frame itself, which `copy_overlapping`
            // (memmove: its own one-compare direction check) allows.
            unsafe { direct_map::copy_overlapping(src + done as u64, dst, n) }
        })
    }

    /// Copies `len` bytes to user memory at `va` (which must be writable),
    /// in one pass, one `put(destination, done, n)` per page: a kernel copy
    /// is emulated on the development machines, about 1 us per 8 bytes.
    fn copy_to_user_with(
        &mut self,
        asid: u32,
        va: u64,
        len: usize,
        mut put: impl FnMut(u64, usize, usize),
    ) -> Result<(), AsError> {
        check_user_range(va, len as u64)?;
        let mut done = 0;
        while done < len {
            let at = va + done as u64;
            let pa = self.user_frame(asid, at, prot::WRITE)?;
            let off = at % PAGE_SIZE;
            let n = ((PAGE_SIZE - off) as usize).min(len - done);
            // The destination frame is mapped user-writable in this address
            // space (anonymous, or a cache page mapped shared and
            // writable) and `n` stays in it.
            put(pa + off, done, n);
            done += n;
        }
        Ok(())
    }

    /// Copies `data` into the frame at `pa` at `offset` (program loading).
    ///
    /// # Safety
    ///
    /// `pa` is a frame the caller owns (allocated, a reference held, not
    /// freed during the call) that no Rust reference points into, and
    /// `offset + data.len()` is at most a page.
    pub unsafe fn write_frame(pa: u64, offset: u64, data: &[u8]) {
        debug_assert!(offset + data.len() as u64 <= PAGE_SIZE);
        // SAFETY: the caller's contract, see # Safety: an owned frame, and
        // the copy stays inside it; `data` is kernel memory.
        unsafe { direct_map::write_from(pa + offset, data) };
    }
}
