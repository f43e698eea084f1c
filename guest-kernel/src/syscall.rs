//! The system calls of user programs (`int3`; numbers, structures and
//! errors in `pagehint_abi::syscall`).
//!
//! Every argument comes from user mode and is checked before use; a bad one
//! gets a negative errno, never a kernel fault. User memory is reached only
//! through `MmState::copy_from_user`/`copy_to_user`/`copy_phys_to_user`.
//! Three unsafe blocks: in `copy_out`, an ABI structure (plain
//! `#[repr(C)]` integers) viewed as its bytes for the copy; in `read` and
//! `pwrite`, the page-cache frame of the file page being copied, on which
//! the call holds a reference, read or written through the direct map.

use crate::arch::direct_map;
use crate::arch::idt::TrapFrame;
use crate::mm::addr_space::AsError;
use crate::mm::{self, MmState};
use crate::phys;
use crate::sched::{self, Reason};
use crate::task::OpenFile;
use crate::{clock, console, fs, percpu};
use guest_logic::vma::Backing;
use pagehint_abi::disk::NAME_MAX;
use pagehint_abi::syscall::{errno, nr, prot, FileStat};
use pagehint_abi::PAGE_SIZE;

/// Longest single `write`.
const MAX_WRITE: usize = 4096;
/// Largest single `mmap`.
const MAX_MMAP: u64 = 1 << 32;
/// Open files per task.
const MAX_FILES: usize = 64;
/// Largest single `read`.
const MAX_READ: u64 = 1 << 20;

fn err(e: AsError) -> i64 {
    -match e {
        AsError::NoMemory => errno::ENOMEM,
        AsError::BadRange => errno::EINVAL,
        AsError::Fault | AsError::NoSpace => errno::EFAULT,
        AsError::Io => errno::EIO,
    }
}

pub fn dispatch(frame: &mut TrapFrame) {
    let a = [frame.rdi, frame.rsi, frame.rdx, frame.r10, frame.r8];
    let result: i64 = match frame.rax {
        nr::WRITE => write(a[0], a[1]),
        nr::EXIT => {
            // What its shared mappings dirtied reaches the disk first.
            let _ = with_space(|st, asid| st.writeback_space(asid).map_or_else(err, |_| 0));
            sched::exit_current(a[0].min(u32::MAX as u64) as u32)
        }
        nr::PWRITE => pwrite(a[0], a[1], a[2], a[3]),
        nr::FSYNC => match file_slot(a[0]).and_then(|s| *s) {
            Some(of) => mm::with(|st| st.fsync_file(of.file)).map_or_else(err, |_| 0),
            None => -errno::EBADF,
        },
        nr::MSYNC => with_space(|st, asid| st.msync(asid, a[0], a[1]).map_or_else(err, |_| 0)),
        nr::MMAP => with_space(|st, asid| {
            if a[0] == 0 || a[0] > MAX_MMAP || a[1] & !prot::ALL != 0 {
                return -errno::EINVAL;
            }
            st.mmap(asid, a[0], a[1], Backing::Anonymous)
                .map_or_else(err, |v| v as i64)
        }),
        nr::MMAP_FILE => mmap_file(a),
        nr::MUNMAP => with_space(|st, asid| st.munmap(asid, a[0], a[1]).map_or_else(err, |_| 0)),
        nr::MPROTECT => with_space(|st, asid| {
            if a[2] & !prot::ALL != 0 {
                return -errno::EINVAL;
            }
            st.mprotect(asid, a[0], a[1], a[2]).map_or_else(err, |_| 0)
        }),
        nr::YIELD => {
            sched::schedule(Reason::Yield);
            0
        }
        nr::GETPID => sched::current().map_or(0, |t| t.pid as i64),
        nr::CLOCK => clock::now_ns() as i64,
        nr::GETCPU => percpu::this().index.get() as i64,
        nr::OPEN => open(a[0], a[1]),
        nr::READ => read(a[0], a[1], a[2]),
        nr::CLOSE => match file_slot(a[0]) {
            Some(slot) => {
                *slot = None;
                0
            }
            None => -errno::EBADF,
        },
        nr::FSTAT => fstat(a[0], a[1]),
        nr::DIRENT => dirent(a[0], a[1]),
        nr::KSTATS => {
            let s = mm::kernel_stats();
            copy_out(a[0], &s)
        }
        _ => -errno::ENOSYS,
    };
    frame.rax = result as u64;
}

/// Runs `f` with the caller's address space under the memory lock.
fn with_space(f: impl FnOnce(&mut MmState, u32) -> i64) -> i64 {
    match sched::current().and_then(|t| t.asid) {
        Some(asid) => mm::with(|st| f(st, asid)),
        None => -errno::EFAULT,
    }
}

/// Copies a plain structure out to user memory.
fn copy_out<T: Copy>(va: u64, value: &T) -> i64 {
    // SAFETY: `T` is one of the ABI's `#[repr(C)]` integer structures,
    // viewed as its bytes.
    let bytes = unsafe {
        core::slice::from_raw_parts(value as *const T as *const u8, core::mem::size_of::<T>())
    };
    with_space(|st, asid| st.copy_to_user(asid, va, bytes).map_or_else(err, |_| 0))
}

fn file_slot(fd: u64) -> Option<&'static mut Option<OpenFile>> {
    let t = sched::current()?;
    t.files.get_mut(fd as usize).filter(|s| s.is_some())
}

/// `write`: the whole buffer goes out under one console lock, so lines
/// from programs on different CPUs never interleave.
fn write(ptr: u64, len: u64) -> i64 {
    let len = (len as usize).min(MAX_WRITE);
    let mut buf = alloc::vec![0u8; len];
    let r = with_space(|st, asid| {
        st.copy_from_user(asid, ptr, &mut buf)
            .map_or_else(err, |_| 0)
    });
    if r < 0 {
        return r;
    }
    console::write_bytes(&buf);
    len as i64
}

fn open(name_ptr: u64, name_len: u64) -> i64 {
    if name_len == 0 || name_len > NAME_MAX as u64 {
        return -errno::ENOENT;
    }
    let mut name = [0u8; NAME_MAX];
    let n = name_len as usize;
    let r = with_space(|st, asid| {
        st.copy_from_user(asid, name_ptr, &mut name[..n])
            .map_or_else(err, |_| 0)
    });
    if r < 0 {
        return r;
    }
    let Some(file) = core::str::from_utf8(&name[..n]).ok().and_then(fs::lookup) else {
        return -errno::ENOENT;
    };
    let Some(t) = sched::current() else {
        return -errno::EFAULT;
    };
    let slot = match t.files.iter().position(|f| f.is_none()) {
        Some(i) => i,
        None if t.files.len() < MAX_FILES => {
            t.files.push(None);
            t.files.len() - 1
        }
        None => return -errno::EMFILE,
    };
    t.files[slot] = Some(OpenFile { file, pos: 0 });
    slot as i64
}

/// `read`: page by page through the page cache into user memory.
fn read(fd: u64, buf: u64, len: u64) -> i64 {
    let Some(Some(of)) = file_slot(fd).map(|s| *s) else {
        return -errno::EBADF;
    };
    let Some(entry) = fs::entry(of.file) else {
        return -errno::EBADF;
    };
    let len = len.min(MAX_READ).min(entry.size.saturating_sub(of.pos));
    let mut done = 0u64;
    while done < len {
        let pos = of.pos + done;
        let off = pos % PAGE_SIZE;
        let n = (PAGE_SIZE - off).min(len - done);
        let r = with_space(|st, asid| {
            let pfn = match st.get_file_page(of.file, pos / PAGE_SIZE) {
                Ok(p) => p,
                Err(e) => return err(e),
            };
            // SAFETY: `get_file_page` returned the cache frame stable with
            // a reference we hold until after the copy, and `off + n`
            // stays inside it; nothing in Rust references a cache frame.
            let r = unsafe {
                st.copy_phys_to_user(asid, buf + done, pfn * PAGE_SIZE + off, n as usize)
            };
            if st.frames.put(pfn) {
                phys::pages::free_frame(pfn * PAGE_SIZE);
            }
            r.map_or_else(err, |_| 0)
        });
        if r < 0 {
            if done == 0 {
                return r;
            }
            break;
        }
        done += n;
    }
    if let Some(Some(f)) = file_slot(fd) {
        f.pos += done;
    }
    done as i64
}

fn fstat(fd: u64, out: u64) -> i64 {
    let Some(Some(of)) = file_slot(fd).map(|s| *s) else {
        return -errno::EBADF;
    };
    let Some(e) = fs::entry(of.file) else {
        return -errno::EBADF;
    };
    let st = FileStat {
        size: e.size,
        file_id: e.file_id,
        _reserved: 0,
    };
    copy_out(out, &st)
}

fn dirent(index: u64, out: u64) -> i64 {
    match fs::entry(index.min(u32::MAX as u64) as u32) {
        Some(e) => copy_out(out, &e),
        None => -errno::ENOENT,
    }
}

/// `mmap_file(len, prot, fd, offset, shared)`.
fn mmap_file(a: [u64; 5]) -> i64 {
    let (len, p, fd, offset, shared) = (a[0], a[1], a[2], a[3], a[4] != 0);
    if len == 0 || len > MAX_MMAP || p & !prot::ALL != 0 || offset % PAGE_SIZE != 0 {
        return -errno::EINVAL;
    }
    if shared && p & prot::WRITE != 0 && disk_read_only() {
        // Nowhere to write the pages back to.
        return -errno::EACCES;
    }
    let Some(Some(of)) = file_slot(fd).map(|s| *s) else {
        return -errno::EBADF;
    };
    let backing = Backing::File {
        file: of.file,
        pgoff: offset / PAGE_SIZE,
        shared,
    };
    with_space(|st, asid| {
        st.mmap(asid, len, p, backing)
            .map_or_else(err, |v| v as i64)
    })
}

/// Whether the disk refuses writes (or there is none).
fn disk_read_only() -> bool {
    crate::drivers::virtio_blk::info().is_none_or(|(_, ro)| ro)
}

/// Longest single `pwrite`.
const MAX_PWRITE: u64 = 1 << 20;

/// `pwrite(fd, buf, len, offset)`: page by page into the page cache (each
/// page made stable, read first if it is not cached, then marked dirty);
/// files keep their size.
fn pwrite(fd: u64, buf: u64, len: u64, offset: u64) -> i64 {
    let Some(Some(of)) = file_slot(fd).map(|s| *s) else {
        return -errno::EBADF;
    };
    let Some(entry) = fs::entry(of.file) else {
        return -errno::EBADF;
    };
    if disk_read_only() {
        return -errno::EROFS;
    }
    let len = len.min(MAX_PWRITE).min(entry.size.saturating_sub(offset));
    let mut chunk = alloc::vec![0u8; PAGE_SIZE as usize];
    let mut done = 0u64;
    while done < len {
        let pos = offset + done;
        let off = pos % PAGE_SIZE;
        let n = (PAGE_SIZE - off).min(len - done);
        let r = with_space(|st, asid| {
            if let Err(e) = st.copy_from_user(asid, buf + done, &mut chunk[..n as usize]) {
                return err(e);
            }
            // A page the host dropped between the lookup and the copy is
            // read again (`get_file_page` makes a cached page stable).
            let pfn = match st.get_file_page(of.file, pos / PAGE_SIZE) {
                Ok(p) => p,
                Err(e) => return err(e),
            };
            // SAFETY: `get_file_page` returned the cache frame stable with
            // a reference we hold until after the copy, and `off + n`
            // stays inside it; `chunk` is heap memory, not that frame.
            unsafe { direct_map::write_from(pfn * PAGE_SIZE + off, &chunk[..n as usize]) };
            st.mark_dirty(pfn);
            if st.frames.put(pfn) {
                phys::pages::free_frame(pfn * PAGE_SIZE);
            }
            0
        });
        if r < 0 {
            if done == 0 {
                return r;
            }
            break;
        }
        done += n;
    }
    mm::with(|st| st.balance_dirty());
    done as i64
}
