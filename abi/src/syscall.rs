//! The guest's own system-call ABI, between the guest kernel and the user
//! programs it runs. The VMM never sees it; it lives here so that the kernel
//! and the user programs share one definition.
//!
//! Convention: the one-byte `int3` instruction (vector 3, whose gate is
//! user-callable) with the number in RAX and arguments in RDI, RSI, RDX;
//! the result comes back in RAX, a negative [`errno`] on failure; every
//! other register is preserved.
//!
//! Why `int3` and not `syscall` or `int 0x80`: on the nested software KVM
//! of the development machines, `int N` from user mode raises #UD and
//! `syscall` runs the kernel entry at CPL3 (measured: see
//! `docs/design.md`). `int3` is delivered through the IDT there exactly as
//! on hardware, where it is an ordinary software interrupt through a DPL3
//! gate. The kernel has no debugger, so no breakpoint use is lost.

/// The vector of the system-call trap.
pub const VECTOR: u8 = 3;

/// System-call numbers.
pub mod nr {
    /// `write(ptr, len)` to the console; returns bytes written.
    pub const WRITE: u64 = 1;
    /// `exit(status)`; does not return.
    pub const EXIT: u64 = 2;
    /// `mmap(len, prot)`: anonymous private memory, zero-filled on first
    /// touch; returns the address.
    pub const MMAP: u64 = 3;
    /// `munmap(addr, len)`.
    pub const MUNMAP: u64 = 4;
    /// `mprotect(addr, len, prot)`.
    pub const MPROTECT: u64 = 5;
    /// `yield()`: give up the CPU.
    pub const YIELD: u64 = 6;
    /// `getpid()`.
    pub const GETPID: u64 = 7;
    /// `clock()`: nanoseconds since boot.
    pub const CLOCK: u64 = 8;
    /// `getcpu()`: the index of the CPU running the caller.
    pub const GETCPU: u64 = 9;
    /// `open(name_ptr, name_len)`: a file of the disk; returns an fd.
    pub const OPEN: u64 = 10;
    /// `read(fd, buf, len)`: from the file position; returns bytes read.
    pub const READ: u64 = 11;
    /// `close(fd)`.
    pub const CLOSE: u64 = 12;
    /// `fstat(fd, out)`: writes a [`super::FileStat`].
    pub const FSTAT: u64 = 13;
    /// `dirent(i, out)`: writes directory entry `i` as a
    /// `pagehint_abi::disk::DirEntry`; `-ENOENT` past the end.
    pub const DIRENT: u64 = 14;
    /// `mmap_file(len, prot, fd, offset, shared)`: maps a file; `offset`
    /// page-aligned; private ones copy on write; shared ones map the page
    /// cache itself and may be writable only when the disk is
    /// (`-EACCES` otherwise).
    pub const MMAP_FILE: u64 = 15;
    /// `kstats(out)`: writes the kernel's [`super::KernelStats`].
    pub const KSTATS: u64 = 16;
    /// `pwrite(fd, buf, len, offset)`: into the page cache at `offset`;
    /// files keep their size (bytes past the end are not written);
    /// returns bytes written, `-EROFS` on a read-only disk. The pages reach
    /// the disk on `fsync`, when the kernel writes dirty pages back, or at
    /// reclaim.
    pub const PWRITE: u64 = 17;
    /// `fsync(fd)`: writes back every dirty page of the file (written with
    /// `pwrite` or through a shared writable mapping) and flushes the disk.
    pub const FSYNC: u64 = 18;
    /// `msync(addr, len)`: writes back the dirty file pages mapped shared
    /// in the range and flushes the disk.
    pub const MSYNC: u64 = 19;
}

/// What `fstat` writes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileStat {
    pub size: u64,
    pub file_id: u32,
    pub _reserved: u32,
}

/// Kernel counters, for workloads to report alongside their results.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// User page faults handled (all kinds).
    pub page_faults: u64,
    /// Faults that mapped a file page.
    pub file_faults: u64,
    /// Copy-on-write copies made.
    pub cow_copies: u64,
    /// Page-cache lookups that hit / missed.
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Block requests sent to the disk, and pages they carried.
    pub disk_requests: u64,
    pub disk_pages: u64,
    /// Page-cache frames reclaimed under memory pressure.
    pub reclaimed: u64,
    /// TLB shootdown rounds (IPIs to other CPUs).
    pub shootdowns: u64,
    /// Frames free now, and in the page cache now.
    pub free_frames: u64,
    pub cached_frames: u64,
    /// Page-state hints queued, and the batches (hypercall exits) that
    /// carried them.
    pub hints: u64,
    pub hint_batches: u64,
    /// Hints the VMM refused (should stay 0).
    pub hint_errors: u64,
    /// Volatile cache pages found discarded when made stable again.
    pub volatile_discarded: u64,
    /// Frames known to be zero (fresh, or discarded by the host), so not
    /// cleared on allocation.
    pub zero_fill_skips: u64,
    /// Cache pages currently volatile.
    pub volatile_frames: u64,
    /// Discard faults handled (user accesses to pages the host dropped).
    pub discard_faults: u64,
    /// Discarded frames put on the delayed-free list, and released from it.
    pub discard_listed: u64,
    pub discard_released: u64,
    /// Of `hints`, the state changes made in the shared page-state table
    /// (no exit).
    pub shared_hints: u64,
    /// Mapped cache pages kept on the active list because a mapping used
    /// them since the last look (their accessed bit): not made volatile.
    pub referenced: u64,
    /// Cache pages written back to the disk, and the requests that carried
    /// them (`fsync`, `msync`, `munmap`, exit, background and reclaim).
    pub writeback_pages: u64,
    pub writeback_requests: u64,
    /// Cache pages dirty now (written, not yet on the disk).
    pub dirty_frames: u64,
    /// Cache pages made potentially volatile (clean, mapped writable), and
    /// those found written by the host's dirty log (made stable by it).
    pub potentially_volatile: u64,
    pub pv_written: u64,
    /// Cache pages whose dirty bit a writable mapping set (gathered
    /// through the reverse map).
    pub pte_dirty: u64,
    /// Background write-back passes an idle CPU made.
    pub background_passes: u64,
    /// Ages the ageing hand published in the shared table (CPUID
    /// `GUEST_AGES`).
    pub ages_published: u64,
    /// Of those, the ages of 0 (a mapping used the page since the last
    /// look).
    pub ages_young: u64,
}

/// Protection bits for `mmap` and `mprotect`.
pub mod prot {
    pub const NONE: u64 = 0;
    pub const READ: u64 = 1;
    pub const WRITE: u64 = 2;
    pub const EXEC: u64 = 4;
    /// Read and write: what `mmap` of data asks for.
    pub const RW: u64 = READ | WRITE;
    /// Every valid bit.
    pub const ALL: u64 = READ | WRITE | EXEC;
}

/// Error numbers (returned negated).
pub mod errno {
    pub const EFAULT: i64 = 14;
    pub const EINVAL: i64 = 22;
    pub const ENOMEM: i64 = 12;
    pub const ENOSYS: i64 = 38;
    pub const ENOENT: i64 = 2;
    pub const EBADF: i64 = 9;
    pub const EACCES: i64 = 13;
    pub const EMFILE: i64 = 24;
    pub const EIO: i64 = 5;
    pub const EROFS: i64 = 30;
}

/// Lowest address of the user half of an address space.
pub const USER_BASE: u64 = 0x40_0000;
/// One past the highest user address (the canonical lower half).
pub const USER_END: u64 = 0x0000_8000_0000_0000;
/// Where `mmap` starts handing out addresses.
pub const MMAP_BASE: u64 = 0x10_0000_0000;
/// Top of the initial user stack.
pub const STACK_TOP: u64 = 0x7fff_ffff_0000;
/// Size of the user stack region.
pub const STACK_SIZE: u64 = 256 * 1024;
