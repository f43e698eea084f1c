//! The host's swap, as the experiment's baseline needs it: whether the host
//! has any (`/proc/swaps`), the host's swap traffic counters
//! (`pswpin`/`pswpout` of `/proc/vmstat`), and a temporary swap file for
//! hosts that have none (`vmm experiment --swap-file SIZE`).
//!
//! The swap file is written whole (no holes, which `swapon` refuses), given
//! a version-1 swap header (the layout of Linux's `union swap_header`: the
//! version, the last page and the bad-page count after 1024 boot bytes,
//! the `SWAPSPACE2` magic in the last ten bytes of the first page; no
//! `mkswap` is needed, so a bare machine can run it), enabled with
//! `swapon(2)`, and disabled and removed when its guard drops. This module
//! must never touch a swap area it did not create.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Bytes per page, as the swap header counts them (x86-64).
const PAGE: u64 = 4096;
/// The smallest swap file worth making (Linux wants at least 10 pages).
pub const MIN_SWAP: u64 = 1 << 20;

/// Why a swap file could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    #[error("--swap-file {0} is below the 1 MiB a swap file needs")]
    TooSmall(u64),
    #[error("cannot write the swap file {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot enable the swap file {} (swapon needs root and a file system that supports swap files, such as ext4 or xfs): {source}", path.display())]
    Swapon {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The swap areas' total size in bytes, from `/proc/swaps` text.
pub fn parse_swaps(text: &str) -> u64 {
    // "Filename Type Size Used Priority", sizes in KiB, after a header.
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok())
        .fold(0u64, |sum, kib| {
            sum.saturating_add(kib.saturating_mul(1024))
        })
}

/// Bytes of swap the host has now (0 when `/proc/swaps` is unreadable).
pub fn host_swap_bytes() -> u64 {
    std::fs::read_to_string("/proc/swaps").map_or(0, |t| parse_swaps(&t))
}

/// Host-wide swap traffic: pages written to and read from swap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SwapCounters {
    pub out_pages: u64,
    pub in_pages: u64,
}

impl SwapCounters {
    /// `pswpout` and `pswpin` of `/proc/vmstat` text (0 when absent).
    pub fn parse(text: &str) -> Self {
        let mut c = Self::default();
        for line in text.lines() {
            let mut w = line.split_whitespace();
            let (Some(key), Some(value)) = (w.next(), w.next()) else {
                continue;
            };
            let Ok(v) = value.parse::<u64>() else {
                continue;
            };
            match key {
                "pswpout" => c.out_pages = v,
                "pswpin" => c.in_pages = v,
                _ => {}
            }
        }
        c
    }

    /// The host's counters now (zeros when `/proc/vmstat` is unreadable).
    pub fn now() -> Self {
        std::fs::read_to_string("/proc/vmstat")
            .map_or_else(|_| Self::default(), |t| Self::parse(&t))
    }

    /// Traffic since `earlier`.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            out_pages: self.out_pages.saturating_sub(earlier.out_pages),
            in_pages: self.in_pages.saturating_sub(earlier.in_pages),
        }
    }
}

/// Disables and removes the swap file an earlier experiment left at
/// `path` (killed before its guard ran); true if there was one. Only this
/// exact path is touched: disabled if `/proc/swaps` lists it, then
/// removed.
pub fn remove_stale(path: &Path) -> bool {
    if !path.exists() {
        return false;
    }
    let listed = std::fs::read_to_string("/proc/swaps").is_ok_and(|t| {
        t.lines()
            .skip(1)
            .any(|l| l.split_whitespace().next() == path.to_str())
    });
    if listed {
        if let Ok(c_path) = CString::new(path.as_os_str().as_encoded_bytes()) {
            // SAFETY: a valid NUL-terminated path that outlives the call.
            let _ = unsafe { libc::swapoff(c_path.as_ptr()) };
        }
    }
    std::fs::remove_file(path).is_ok()
}

/// The first page of a swap area of `pages` pages (version 1, no bad
/// pages, no label).
pub fn swap_header(pages: u64) -> Vec<u8> {
    let mut page = vec![0u8; PAGE as usize];
    let last = u32::try_from(pages.saturating_sub(1)).unwrap_or(u32::MAX);
    page[1024..1028].copy_from_slice(&1u32.to_le_bytes());
    page[1028..1032].copy_from_slice(&last.to_le_bytes());
    // nr_badpages (1032..1036) stays 0; so do the UUID and the label.
    let magic = b"SWAPSPACE2";
    page[PAGE as usize - magic.len()..].copy_from_slice(magic);
    page
}

/// A swap file this process made and enabled; disabled and removed on
/// drop.
#[derive(Debug)]
pub struct SwapFile {
    path: PathBuf,
    bytes: u64,
}

impl SwapFile {
    /// Makes a swap file of `bytes` (rounded down to pages) at `path` and
    /// enables it.
    pub fn create(path: &Path, bytes: u64) -> Result<Self, SwapError> {
        if bytes < MIN_SWAP {
            return Err(SwapError::TooSmall(bytes));
        }
        let pages = bytes / PAGE;
        let write_err = |source| SwapError::Write {
            path: path.to_path_buf(),
            source,
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(write_err)?;
        // From here on the file is ours: remove it on any failure.
        let made = Self {
            path: path.to_path_buf(),
            bytes: pages * PAGE,
        };
        let zeros = vec![0u8; 1 << 20];
        f.write_all(&swap_header(pages)).map_err(write_err)?;
        let mut left = (pages - 1) * PAGE;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            f.write_all(&zeros[..n]).map_err(write_err)?;
            left -= n as u64;
        }
        f.sync_all().map_err(write_err)?;
        drop(f);
        let c_path = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
            write_err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the path holds a NUL byte",
            ))
        })?;
        // SAFETY: `c_path` is a valid NUL-terminated string that outlives
        // the call; swapon reads it and touches no memory of ours.
        let rc = unsafe { libc::swapon(c_path.as_ptr(), 0) };
        if rc != 0 {
            let source = std::io::Error::last_os_error();
            // Not enabled: dropping `made` removes the file.
            return Err(SwapError::Swapon {
                path: path.to_path_buf(),
                source,
            });
        }
        Ok(made)
    }

    /// Its size in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SwapFile {
    fn drop(&mut self) {
        if let Ok(c_path) = CString::new(self.path.as_os_str().as_encoded_bytes()) {
            // SAFETY: a valid NUL-terminated path that outlives the call.
            let rc = unsafe { libc::swapoff(c_path.as_ptr()) };
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                // Not in use as swap (never enabled) is fine; anything else
                // is worth a line, since the file stays in use.
                if e.raw_os_error() != Some(libc::EINVAL) {
                    eprintln!(
                        "experiment: cannot disable swap file {}: {e}",
                        self.path.display()
                    );
                    return;
                }
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_swaps_sizes_add_up() {
        let t = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n\
                 /swapfile                               file\t\t262140\t\t0\t\t-2\n\
                 /dev/vdb                                partition\t1024\t\t0\t\t-3\n";
        assert_eq!(parse_swaps(t), (262_140 + 1024) * 1024);
        assert_eq!(parse_swaps("Filename Type Size Used Priority\n"), 0);
        assert_eq!(parse_swaps(""), 0);
    }

    #[test]
    fn vmstat_swap_counters_and_their_difference() {
        let t = "nr_free_pages 12\npswpin 40\npswpout 100\npgfault 9\n";
        let c = SwapCounters::parse(t);
        assert_eq!((c.out_pages, c.in_pages), (100, 40));
        let later = SwapCounters {
            out_pages: 150,
            in_pages: 41,
        };
        assert_eq!(
            later.since(c),
            SwapCounters {
                out_pages: 50,
                in_pages: 1
            }
        );
        assert_eq!(SwapCounters::parse("pswpin x\n"), SwapCounters::default());
    }

    #[test]
    fn the_header_is_a_version_1_swap_area() {
        let h = swap_header(256);
        assert_eq!(h.len(), 4096);
        assert_eq!(&h[4086..], b"SWAPSPACE2");
        assert_eq!(u32::from_le_bytes(h[1024..1028].try_into().unwrap()), 1);
        assert_eq!(u32::from_le_bytes(h[1028..1032].try_into().unwrap()), 255);
        assert!(h[..1024].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_tiny_swap_file_is_refused_before_anything_is_written() {
        let path = std::env::temp_dir().join(format!("vmm-swap-tiny-{}", std::process::id()));
        assert!(matches!(
            SwapFile::create(&path, 4096),
            Err(SwapError::TooSmall(4096))
        ));
        assert!(!path.exists());
    }
}
