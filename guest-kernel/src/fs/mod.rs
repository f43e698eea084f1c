//! The read-only PHFS file system on the virtio disk: mounted once at
//! boot (superblock and directory read into the heap), then looked up by
//! name or index. File data never passes through here: the page cache
//! (`mm::filemap`) reads it straight into page frames.
//!
//! Nothing on the disk is trusted: `guest_logic::phfs` checks the
//! superblock and every directory entry before the file system is used.
//!
//! Reading a block into memory is part of its job: two unsafe blocks, in
//! `with_block`, on a scratch frame it allocates and frees there (the
//! device fills it, then the parser reads it in place).

use alloc::vec::Vec;

use guest_logic::phfs::{self, FsError};
use pagehint_abi::disk::{DirEntry, BLOCK_SIZE, DIR_ENTRIES_PER_BLOCK};

use crate::arch::direct_map;
use crate::drivers::virtio_blk;
use crate::phys;
use crate::sync::Published;

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
static FS: Published<FileSystem> = Published::new();

fn fs() -> Option<&'static FileSystem> {
    FS.get()
}

/// Reads block `block` into a scratch frame and hands it to `f`.
fn with_block<R>(block: u64, f: impl FnOnce(&[u8; BLOCK_SIZE]) -> R) -> Result<R, MountError> {
    let pa = phys::pages::alloc_zeroed_frame().ok_or(MountError::NoMemory)?;
    // SAFETY: `pa` is the frame just allocated, ours alone until freed
    // below; nothing else touches it while the device fills it.
    let r = unsafe { virtio_blk::read_pages(block, &[pa]) }.map_err(|_| MountError::Io);
    // SAFETY: `pa` is the scratch frame allocated above (BLOCK_SIZE is a
    // page), ours alone; the request has completed, so the device writes
    // it no more; `f` gets the array for any lifetime and its result
    // cannot borrow it, so the reference is gone before the frame is
    // freed below.
    let out = r.map(|_| f(unsafe { direct_map::array::<BLOCK_SIZE>(pa) }));
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
    FS.publish(alloc::boxed::Box::new(FileSystem { files }));
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
