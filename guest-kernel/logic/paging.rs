//! x86-64 four-level page tables: entries, and a mapper that walks and edits
//! them through the [`PhysMem`] trait.
//!
//! The mapper never dereferences a physical address itself: the kernel
//! supplies table reads and writes (through its direct map) and fresh zeroed
//! frames, and host tests supply a simulated physical memory. Every change
//! that can leave a stale TLB entry returns a `#[must_use]` [`Flush`], so
//! the caller has to decide whether to invalidate.

/// Flags of a page-table entry.
pub mod flags {
    pub const PRESENT: u64 = 1 << 0;
    pub const WRITABLE: u64 = 1 << 1;
    pub const USER: u64 = 1 << 2;
    pub const WRITE_THROUGH: u64 = 1 << 3;
    pub const NO_CACHE: u64 = 1 << 4;
    pub const ACCESSED: u64 = 1 << 5;
    pub const DIRTY: u64 = 1 << 6;
    pub const HUGE: u64 = 1 << 7;
    pub const GLOBAL: u64 = 1 << 8;
    pub const NO_EXECUTE: u64 = 1 << 63;
}

/// Bits 12..52 of an entry: the physical address it points to.
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Entries per table.
pub const ENTRIES: usize = 512;
/// First PML4 slot of the kernel half (shared by every address space).
pub const KERNEL_PML4_SLOT: usize = 256;

/// Physical memory as the mapper sees it.
pub trait PhysMem {
    /// Entry `index` of the table at physical address `table`.
    fn read_entry(&self, table: u64, index: usize) -> u64;
    /// Sets entry `index` of the table at physical address `table`.
    fn write_entry(&mut self, table: u64, index: usize, value: u64);
    /// A zeroed frame for a new table, or `None` when out of memory.
    fn alloc_table(&mut self) -> Option<u64>;
    /// Gives back a table frame that is no longer referenced.
    fn free_table(&mut self, table: u64);
    /// Replaces entry `index` and returns the old value. The kernel's
    /// implementation is one atomic exchange, so a dirty or accessed bit a
    /// CPU sets in the entry meanwhile is never lost.
    fn swap_entry(&mut self, table: u64, index: usize, value: u64) -> u64 {
        let old = self.read_entry(table, index);
        self.write_entry(table, index, value);
        old
    }
    /// Sets entry `index` to `new` if it still holds `current`; else the
    /// value found (atomic in the kernel's implementation).
    fn cas_entry(&mut self, table: u64, index: usize, current: u64, new: u64) -> Result<u64, u64> {
        let found = self.read_entry(table, index);
        if found != current {
            return Err(found);
        }
        self.write_entry(table, index, new);
        Ok(found)
    }
}

/// A TLB invalidation the caller owes for `addr`.
#[must_use = "a changed mapping may stay cached in the TLB: flush it or say why not"]
#[derive(Debug, PartialEq, Eq)]
pub struct Flush(u64);

impl Flush {
    /// The virtual address to invalidate.
    pub fn addr(self) -> u64 {
        self.0
    }
    /// Drops the obligation: the caller reloads CR3 or the address space
    /// has never been live.
    pub fn ignore(self) {}
}

/// An open read-modify-write of one entry; see
/// [`Mapper::modify_prot_start`].
#[must_use = "an open transaction leaves the page unmapped until committed"]
#[derive(Debug)]
pub struct PteTxn {
    table: u64,
    index: usize,
    va: u64,
    /// The entry as it was when the transaction opened.
    pub old: u64,
}

/// The TLB work a batch of page-table changes owes, to be paid once at the
/// end of the batch (Linux's lazy MMU mode and `mmu_gather`, in small):
/// a few pages are invalidated one by one, many by one full flush.
#[must_use = "the collected invalidations must be carried out"]
#[derive(Debug, Default)]
pub struct FlushBatch {
    addrs: [u64; FlushBatch::MAX_SINGLE],
    count: usize,
}

impl FlushBatch {
    /// Beyond this many pages a full flush is cheaper.
    pub const MAX_SINGLE: usize = 32;

    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one owed invalidation.
    pub fn add(&mut self, f: Flush) {
        if self.count < Self::MAX_SINGLE {
            self.addrs[self.count] = f.0;
        }
        self.count += 1;
    }

    /// Pages changed in the batch.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// What to do: `Some(addresses)` to invalidate one by one, `None` for a
    /// full flush (or nothing, when empty).
    pub fn finish(self) -> Option<([u64; FlushBatch::MAX_SINGLE], usize)> {
        (self.count <= Self::MAX_SINGLE).then_some((self.addrs, self.count))
    }
}

/// Why a mapping change failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// The page is mapped already.
    AlreadyMapped,
    /// No frame for an intermediate table.
    NoMemory,
    /// A huge page is in the way.
    HugePage,
    /// The address is not canonical or not in the user half.
    BadAddress,
}

/// Indices into the four levels for `va` (PML4 first).
pub const fn indices(va: u64) -> [usize; 4] {
    [
        ((va >> 39) & 511) as usize,
        ((va >> 30) & 511) as usize,
        ((va >> 21) & 511) as usize,
        ((va >> 12) & 511) as usize,
    ]
}

/// Edits the page tables rooted at `root` (a PML4's physical address).
pub struct Mapper<'m, M: PhysMem> {
    root: u64,
    mem: &'m mut M,
}

impl<'m, M: PhysMem> Mapper<'m, M> {
    pub fn new(root: u64, mem: &'m mut M) -> Self {
        Self { root, mem }
    }

    /// The leaf table (level 1) for `va`, creating missing levels with
    /// `table_flags` when `create` is set.
    fn leaf_table(
        &mut self,
        va: u64,
        create: bool,
        table_flags: u64,
    ) -> Result<Option<u64>, MapError> {
        let idx = indices(va);
        let mut table = self.root;
        for &i in &idx[..3] {
            let e = self.mem.read_entry(table, i);
            if e & flags::PRESENT == 0 {
                if !create {
                    return Ok(None);
                }
                let new = self.mem.alloc_table().ok_or(MapError::NoMemory)?;
                self.mem
                    .write_entry(table, i, new | table_flags | flags::PRESENT);
                table = new;
            } else if e & flags::HUGE != 0 {
                return Err(MapError::HugePage);
            } else {
                table = e & ADDR_MASK;
            }
        }
        Ok(Some(table))
    }

    /// Maps the 4 KiB page at `va` to the frame at `pa` with `leaf_flags`
    /// (PRESENT is added). A new mapping needs no flush.
    pub fn map(&mut self, va: u64, pa: u64, leaf_flags: u64) -> Result<(), MapError> {
        check_user(va)?;
        let table_flags = flags::WRITABLE | flags::USER;
        let t = self
            .leaf_table(va, true, table_flags)?
            .ok_or(MapError::NoMemory)?;
        let i = indices(va)[3];
        if self.mem.read_entry(t, i) & flags::PRESENT != 0 {
            return Err(MapError::AlreadyMapped);
        }
        self.mem
            .write_entry(t, i, (pa & ADDR_MASK) | leaf_flags | flags::PRESENT);
        Ok(())
    }

    /// The entry mapping `va`, if present.
    pub fn translate(&mut self, va: u64) -> Option<u64> {
        let t = self.leaf_table(va, false, 0).ok()??;
        let e = self.mem.read_entry(t, indices(va)[3]);
        (e & flags::PRESENT != 0).then_some(e)
    }

    /// Removes the mapping of `va`; returns the old entry and the flush
    /// owed, or `None` if nothing was mapped.
    pub fn unmap(&mut self, va: u64) -> Option<(u64, Flush)> {
        let t = self.leaf_table(va, false, 0).ok()??;
        let i = indices(va)[3];
        if self.mem.read_entry(t, i) & flags::PRESENT == 0 {
            return None;
        }
        // One exchange: the old entry carries every dirty bit set so far.
        let e = self.mem.swap_entry(t, i, 0);
        Some((e, Flush(va)))
    }

    /// Read-modify-write of the entry mapping `va`: `change` gets the old
    /// entry and returns the new one (it may be called again if a CPU set
    /// an accessed or dirty bit meanwhile: the write is a compare-and-swap).
    /// Returns `None` if nothing is mapped.
    pub fn update(&mut self, va: u64, mut change: impl FnMut(u64) -> u64) -> Option<Flush> {
        let t = self.leaf_table(va, false, 0).ok()??;
        let i = indices(va)[3];
        let mut old = self.mem.read_entry(t, i);
        loop {
            if old & flags::PRESENT == 0 {
                return None;
            }
            match self.mem.cas_entry(t, i, old, change(old)) {
                Ok(_) => return Some(Flush(va)),
                Err(found) => old = found,
            }
        }
    }

    /// Frees the leaf table that maps the 2 MiB-aligned region at `va`,
    /// whose pages the caller has all unmapped (a `munmap` that covers the
    /// whole region): its frame goes back and the directory entry is
    /// cleared. Returns the flush owed (for the paging-structure caches).
    pub fn free_leaf_table(&mut self, va: u64) -> Option<Flush> {
        if !va.is_multiple_of(1 << 21) {
            return None;
        }
        let idx = indices(va);
        let mut table = self.root;
        for &i in &idx[..2] {
            let e = self.mem.read_entry(table, i);
            if e & flags::PRESENT == 0 || e & flags::HUGE != 0 {
                return None;
            }
            table = e & ADDR_MASK;
        }
        let pde = self.mem.read_entry(table, idx[2]);
        if pde & flags::PRESENT == 0 || pde & flags::HUGE != 0 {
            return None;
        }
        self.mem.write_entry(table, idx[2], 0);
        self.mem.free_table(pde & ADDR_MASK);
        Some(Flush(va))
    }

    /// Opens a read-modify-write transaction on the entry mapping `va`
    /// (`ptep_modify_prot_start`, seed 004): the entry is cleared while the
    /// transaction is open, so no CPU can use or update a stale copy of
    /// it; `modify_prot_commit` writes the new value. `None` if nothing is
    /// mapped.
    pub fn modify_prot_start(&mut self, va: u64) -> Option<PteTxn> {
        let t = self.leaf_table(va, false, 0).ok()??;
        let i = indices(va)[3];
        if self.mem.read_entry(t, i) & flags::PRESENT == 0 {
            return None;
        }
        let old = self.mem.swap_entry(t, i, 0);
        Some(PteTxn {
            table: t,
            index: i,
            va,
            old,
        })
    }

    /// Closes a transaction with the new entry (`ptep_modify_prot_commit`).
    /// The flush is owed for the old entry.
    pub fn modify_prot_commit(&mut self, txn: PteTxn, new: u64) -> Flush {
        self.mem.write_entry(txn.table, txn.index, new);
        Flush(txn.va)
    }

    /// Tears down the user half: calls `leaf` with every present leaf entry
    /// and frees every table below the PML4 slots `0..KERNEL_PML4_SLOT`.
    /// The PML4 itself is left to the caller.
    pub fn destroy_user_half(&mut self, mut leaf: impl FnMut(u64)) {
        for i4 in 0..KERNEL_PML4_SLOT {
            let e4 = self.mem.read_entry(self.root, i4);
            if e4 & flags::PRESENT == 0 {
                continue;
            }
            self.free_level(e4 & ADDR_MASK, 3, &mut leaf);
            self.mem.write_entry(self.root, i4, 0);
        }
    }

    fn free_level(&mut self, table: u64, level: u32, leaf: &mut impl FnMut(u64)) {
        for i in 0..ENTRIES {
            let e = self.mem.read_entry(table, i);
            if e & flags::PRESENT == 0 {
                continue;
            }
            if level == 1 {
                leaf(e);
            } else if e & flags::HUGE == 0 {
                self.free_level(e & ADDR_MASK, level - 1, leaf);
            }
        }
        self.mem.free_table(table);
    }
}

/// User pages live in the canonical lower half, page-aligned.
fn check_user(va: u64) -> Result<(), MapError> {
    if !va.is_multiple_of(4096) || va >= (KERNEL_PML4_SLOT as u64) << 39 {
        return Err(MapError::BadAddress);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Simulated physical memory: tables by address.
    #[derive(Default)]
    struct FakeMem {
        tables: HashMap<u64, [u64; ENTRIES]>,
        next: u64,
        freed: Vec<u64>,
    }

    impl FakeMem {
        fn new_root(&mut self) -> u64 {
            self.alloc_table().unwrap()
        }

        /// A mapper over a new, empty root table.
        fn mapper(&mut self) -> Mapper<'_, FakeMem> {
            let root = self.new_root();
            Mapper::new(root, self)
        }
    }

    impl PhysMem for FakeMem {
        fn read_entry(&self, table: u64, index: usize) -> u64 {
            self.tables[&table][index]
        }
        fn write_entry(&mut self, table: u64, index: usize, value: u64) {
            self.tables.get_mut(&table).unwrap()[index] = value;
        }
        fn alloc_table(&mut self) -> Option<u64> {
            self.next += 0x1000;
            self.tables.insert(0x100_0000 + self.next, [0; ENTRIES]);
            Some(0x100_0000 + self.next)
        }
        fn free_table(&mut self, table: u64) {
            self.tables.remove(&table).unwrap();
            self.freed.push(table);
        }
    }

    #[test]
    fn map_translate_unmap_round_trip() {
        let mut mem = FakeMem::default();
        let mut m = mem.mapper();
        m.map(0x40_0000, 0x5000, flags::USER | flags::WRITABLE)
            .unwrap();
        let e = m.translate(0x40_0000).unwrap();
        assert_eq!(e & ADDR_MASK, 0x5000);
        assert_eq!(e & flags::WRITABLE, flags::WRITABLE);
        assert_eq!(m.translate(0x40_1000), None);
        assert_eq!(m.map(0x40_0000, 0x6000, 0), Err(MapError::AlreadyMapped));
        let (old, flush) = m.unmap(0x40_0000).unwrap();
        assert_eq!(old & ADDR_MASK, 0x5000);
        assert_eq!(flush.addr(), 0x40_0000);
        assert_eq!(m.translate(0x40_0000), None);
    }

    #[test]
    fn update_is_a_read_modify_write() {
        let mut mem = FakeMem::default();
        let mut m = mem.mapper();
        m.map(0x7000_0000, 0x9000, flags::USER | flags::WRITABLE)
            .unwrap();
        let f = m.update(0x7000_0000, |e| e & !flags::WRITABLE).unwrap();
        f.ignore();
        assert_eq!(m.translate(0x7000_0000).unwrap() & flags::WRITABLE, 0);
        assert!(m.update(0x7000_1000, |e| e).is_none());
    }

    #[test]
    fn prot_transaction_clears_then_commits() {
        let mut mem = FakeMem::default();
        let mut m = mem.mapper();
        m.map(0x40_0000, 0x5000, flags::USER | flags::WRITABLE)
            .unwrap();
        let txn = m.modify_prot_start(0x40_0000).unwrap();
        assert_eq!(m.translate(0x40_0000), None, "cleared while open");
        let new = txn.old & !flags::WRITABLE;
        let mut batch = FlushBatch::new();
        batch.add(m.modify_prot_commit(txn, new));
        assert_eq!(m.translate(0x40_0000).unwrap() & flags::WRITABLE, 0);
        assert!(m.modify_prot_start(0x40_1000).is_none());
        let (addrs, n) = batch.finish().unwrap();
        assert_eq!(&addrs[..n], &[0x40_0000]);
    }

    #[test]
    fn an_emptied_leaf_table_is_freed() {
        let mut mem = FakeMem::default();
        let root = mem.new_root();
        let mut m = Mapper::new(root, &mut mem);
        m.map(0x4000_0000, 0x5000, flags::USER).unwrap();
        m.map(0x4000_1000, 0x6000, flags::USER).unwrap();
        m.unmap(0x4000_0000).unwrap().1.ignore();
        m.unmap(0x4000_1000).unwrap().1.ignore();
        assert!(
            m.free_leaf_table(0x4000_1000).is_none(),
            "not 2 MiB aligned"
        );
        assert_eq!(
            m.free_leaf_table(0x4000_0000).map(Flush::addr),
            Some(0x4000_0000)
        );
        assert!(m.free_leaf_table(0x4000_0000).is_none(), "already gone");
        assert_eq!(mem.freed.len(), 1);
        // The region maps again.
        let mut m = Mapper::new(root, &mut mem);
        m.map(0x4000_0000, 0x7000, flags::USER).unwrap();
    }

    #[test]
    fn large_batches_become_one_full_flush() {
        let mut b = FlushBatch::new();
        for i in 0..=FlushBatch::MAX_SINGLE as u64 {
            b.add(Flush(i * 4096));
        }
        assert_eq!(b.len(), FlushBatch::MAX_SINGLE + 1);
        assert!(b.finish().is_none());
    }

    #[test]
    fn kernel_half_and_unaligned_addresses_are_refused() {
        let mut mem = FakeMem::default();
        let mut m = mem.mapper();
        assert_eq!(
            m.map(0xffff_8000_0000_0000, 0, 0),
            Err(MapError::BadAddress)
        );
        assert_eq!(m.map(0x40_0010, 0, 0), Err(MapError::BadAddress));
    }

    #[test]
    fn destroy_frees_every_table_and_reports_every_leaf() {
        let mut mem = FakeMem::default();
        let root = mem.new_root();
        let mut m = Mapper::new(root, &mut mem);
        for va in [0x40_0000u64, 0x40_1000, 0x10_0000_0000, 0x7fff_fff0_0000] {
            m.map(va, va & 0xff_f000, flags::USER).unwrap();
        }
        let mut leaves = Vec::new();
        m.destroy_user_half(|e| leaves.push(e & ADDR_MASK));
        assert_eq!(leaves.len(), 4);
        // Only the root is left.
        assert_eq!(mem.tables.len(), 1);
        assert!(mem.tables.contains_key(&root));
        // Two pages share PDPT, PD and PT; 64 GiB adds a PD and a PT; the stack
        // slot adds a PDPT, a PD and a PT.
        assert_eq!(mem.freed.len(), 8);
    }
}
