//! The disk image behind the virtio block device: opening and checking it,
//! and positioned reads, writes and flushes on it.
//!
//! An image is a regular file whose size is a non-zero multiple of 512
//! bytes (one sector); it is opened read-only unless the user asked for
//! `--disk-rw`. All I/O is `pread`/`pwrite` at absolute offsets, so the file
//! needs no seek position and can be shared by reference. The host keeps
//! no cache of the image, as QEMU's `cache=none` and cloud VMMs do: the
//! guest has a page cache of its own, and a host copy of the same blocks
//! is host memory charged to the VMM that no hint can give back. So the
//! host is told not to read ahead (`POSIX_FADV_RANDOM`; read-ahead is
//! 8 MiB a time on the development machines) and to drop what a read
//! brought in (`POSIX_FADV_DONTNEED` on its range, which drops clean pages
//! and only starts writeback of dirty ones). This module must
//! never write to an image opened read-only, never touch bytes past the
//! image's size, and never trust an offset without checked arithmetic.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use pagehint_abi::exit::vmm as status;

use crate::fault_inject::{check_io, Point};

/// Bytes per sector: the unit of `capacity` and of request offsets.
pub const SECTOR_SIZE: u64 = 512;

/// Why an image could not be opened or accessed.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The file is missing, unreadable, or not a regular file.
    #[error("cannot open disk image {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file is empty.
    #[error("disk image {} is empty", path.display())]
    Empty { path: PathBuf },
    /// The size is not a whole number of sectors.
    #[error("disk image {} is {size} bytes, not a multiple of {SECTOR_SIZE}", path.display())]
    NotSectors { path: PathBuf, size: u64 },
    /// A read or write would reach past the end of the image.
    #[error("{len} bytes at offset {offset} lie outside the {size}-byte image")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    /// A write to an image opened read-only.
    #[error("the disk image is read-only")]
    ReadOnly,
    /// The host failed the I/O.
    #[error("disk I/O failed: {0}")]
    Io(#[source] io::Error),
}

impl DiskError {
    /// The process exit status when opening the image failed this way.
    pub fn exit_status(&self) -> i32 {
        match self {
            DiskError::Open { .. } => status::NO_INPUT,
            DiskError::Empty { .. } | DiskError::NotSectors { .. } => status::BAD_DISK,
            _ => status::INTERNAL,
        }
    }
}

/// An open, checked disk image.
#[derive(Debug)]
pub struct DiskFile {
    file: File,
    path: PathBuf,
    size: u64,
    read_only: bool,
}

/// Gives the kernel `advice` about `len` bytes of `file` at `offset` (0:
/// to the end). Advice only: a kernel that ignores it costs host memory,
/// never data, so a failure is not an error.
fn advise(file: &File, offset: u64, len: u64, advice: libc::c_int) {
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return;
    };
    // SAFETY: a valid open descriptor; fadvise only changes how the kernel
    // caches the file and touches no memory of ours.
    let _ =
        unsafe { libc::posix_fadvise(std::os::fd::AsRawFd::as_raw_fd(file), offset, len, advice) };
}

impl DiskFile {
    /// Opens `path` (read-write only if `writable`) and checks its size.
    pub fn open(path: &Path, writable: bool) -> Result<Self, DiskError> {
        let open_err = |source| DiskError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        if !meta.is_file() {
            return Err(open_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
        let size = meta.len();
        if size == 0 {
            return Err(DiskError::Empty {
                path: path.to_path_buf(),
            });
        }
        if !size.is_multiple_of(SECTOR_SIZE) {
            return Err(DiskError::NotSectors {
                path: path.to_path_buf(),
                size,
            });
        }
        advise(&file, 0, 0, libc::POSIX_FADV_RANDOM);
        Ok(Self {
            file,
            path: path.to_path_buf(),
            size,
            read_only: !writable,
        })
    }

    /// The image's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Size in 512-byte sectors (virtio-blk's `capacity`).
    pub fn sectors(&self) -> u64 {
        self.size / SECTOR_SIZE
    }

    /// True if writes are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Checks that `len` bytes at `offset` lie inside the image.
    pub fn check_range(&self, offset: u64, len: u64) -> Result<(), DiskError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(DiskError::OutOfRange {
                offset,
                len,
                size: self.size,
            }),
        }
    }

    /// Fills `buf` from `offset`, leaving nothing of it in the host's
    /// page cache.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        self.check_range(offset, buf.len() as u64)?;
        check_io(Point::DiskRead)
            .and_then(|()| self.file.read_exact_at(buf, offset))
            .map_err(DiskError::Io)?;
        if buf.is_empty() {
            // A length of 0 would advise the whole rest of the file.
            return Ok(());
        }
        advise(
            &self.file,
            offset,
            buf.len() as u64,
            libc::POSIX_FADV_DONTNEED,
        );
        Ok(())
    }

    /// Writes all of `buf` at `offset`.
    pub fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError::ReadOnly);
        }
        self.check_range(offset, buf.len() as u64)?;
        check_io(Point::DiskWrite)
            .and_then(|()| self.file.write_all_at(buf, offset))
            .map_err(DiskError::Io)
    }

    /// Makes every completed write durable (`fsync`); nothing to do on a
    /// read-only image.
    pub fn flush(&self) -> Result<(), DiskError> {
        if self.read_only {
            return Ok(());
        }
        check_io(Point::DiskFlush)
            .and_then(|()| self.file.sync_all())
            .map_err(DiskError::Io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, len: usize) -> PathBuf {
        let p = std::env::temp_dir().join(format!("vmm-disk-{}-{name}", std::process::id()));
        std::fs::write(&p, vec![0x5au8; len]).unwrap();
        p
    }

    #[test]
    fn open_checks_presence_and_size() {
        let e = DiskFile::open(Path::new("/nonexistent/x.img"), false).unwrap_err();
        assert_eq!(e.exit_status(), status::NO_INPUT);
        assert!(e.to_string().contains("/nonexistent/x.img"));
        let e = DiskFile::open(&std::env::temp_dir(), false).unwrap_err();
        assert_eq!(e.exit_status(), status::NO_INPUT);
        let empty = temp("empty", 0);
        let e = DiskFile::open(&empty, false).unwrap_err();
        assert_eq!(e.exit_status(), status::BAD_DISK);
        let odd = temp("odd", 513);
        let e = DiskFile::open(&odd, false).unwrap_err();
        assert_eq!(e.exit_status(), status::BAD_DISK);
        assert!(e.to_string().contains("513"));
        std::fs::remove_file(empty).ok();
        std::fs::remove_file(odd).ok();
    }

    #[test]
    fn reads_writes_and_refuses() {
        let p = temp("rw", 4096);
        let ro = DiskFile::open(&p, false).unwrap();
        assert_eq!((ro.size(), ro.sectors(), ro.read_only()), (4096, 8, true));
        assert!(matches!(ro.write_at(0, &[1]), Err(DiskError::ReadOnly)));
        assert!(ro.flush().is_ok());
        let rw = DiskFile::open(&p, true).unwrap();
        rw.write_at(512, &[1, 2, 3]).unwrap();
        rw.flush().unwrap();
        let mut b = [0u8; 4];
        ro.read_at(511, &mut b).unwrap();
        assert_eq!(b, [0x5a, 1, 2, 3]);
        assert!(matches!(
            ro.read_at(4094, &mut b),
            Err(DiskError::OutOfRange { .. })
        ));
        assert!(rw.write_at(u64::MAX, &b).is_err());
        assert!(rw.check_range(4096, 0).is_ok());
        std::fs::remove_file(p).ok();
    }
}
