//! The read-only PHFS file system on the virtio disk: mounted once at
//! boot (superblock and directory read into the heap), then looked up by
//! name or index. File data never passes through here: the page cache
//! (`mm::filemap`) reads it straight into page frames.
//!
//! Nothing on the disk is trusted: `guest_logic::phfs` checks the
//! superblock and every directory entry before the file system is used.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicPtr, Ordering};

use guest_logic::phfs::{self, FsError};
use pagehint_abi::disk::{DirEntry, BLOCK_SIZE, DIR_ENTRIES_PER_BLOCK};

use crate::drivers::virtio_blk;
use crate::phys;

/// Why mounting failed.
#[derive(Debug, Clone, Copy)]
pub enum MountError {
    NoDisk,
    NoMemory,
    Io,
    Format(#[allow(dead_code)] FsError), // printed through Debug
}

struct FileSystem {
    files: Vec<DirEntry>,
}

/// Set once by `mount`, never freed.
static FS: AtomicPtr<FileSystem> = AtomicPtr::new(core::ptr::null_mut());

fn fs() -> Option<&'static FileSystem> {
    // SAFETY: the pointer is null or a leaked `Box` published once.
    unsafe { FS.load(Ordering::Acquire).as_ref() }
}

/// Reads block `block` into a scratch frame and hands it to `f`.
fn with_block<R>(block: u64, f: impl FnOnce(&[u8; BLOCK_SIZE]) -> R) -> Result<R, MountError> {
    let pa = phys::pages::alloc_zeroed_frame().ok_or(MountError::NoMemory)?;
    let r = virtio_blk::read_pages(block, &[pa]).map_err(|_| MountError::Io);
    // SAFETY: the frame is ours, in the direct map, and fully written by
    // the device (or still zero).
    let out =
        r.map(|_| f(unsafe { &*(crate::arch::boot::phys_to_virt(pa) as *const [u8; BLOCK_SIZE]) }));
    phys::pages::free_frame(pa);
    out
}

/// Mounts the disk; returns the number of files.
pub fn mount() -> Result<usize, MountError> {
    let (sectors, _) = virtio_blk::info().ok_or(MountError::NoDisk)?;
    let image_blocks = sectors / 8;
    let sb =
        with_block(0, |b| phfs::parse_superblock(b, image_blocks))?.map_err(MountError::Format)?;
    let mut files = Vec::with_capacity(sb.file_count as usize);
    let mut left = sb.file_count as usize;
    let mut block = sb.dir_block;
    while left > 0 {
        let n = left.min(DIR_ENTRIES_PER_BLOCK);
        with_block(block, |b| phfs::parse_dir_block(b, n, &mut files))?;
        left -= n;
        block += 1;
    }
    phfs::validate(&sb, &files).map_err(MountError::Format)?;
    let count = files.len();
    let leaked = alloc::boxed::Box::into_raw(alloc::boxed::Box::new(FileSystem { files }));
    FS.store(leaked, Ordering::Release);
    Ok(count)
}

/// Directory entry `index`.
pub fn entry(index: u32) -> Option<DirEntry> {
    fs()?.files.get(index as usize).copied()
}

/// The index of the file called `name`.
pub fn lookup(name: &str) -> Option<u32> {
    fs()?
        .files
        .iter()
        .position(|e| e.name() == Some(name))
        .map(|i| i as u32)
}
