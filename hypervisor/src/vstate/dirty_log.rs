//! KVM's dirty log of guest RAM, as the host's per-frame "written since
//! its contents were last known to equal the disk" bit (potentially
//! volatile frames, `docs/reclaim.md`, "Potentially volatile frames and the
//! dirty log").
//!
//! With `KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2` (manual protect, initially
//! set) and every RAM memslot registered with `KVM_MEM_LOG_DIRTY_PAGES`,
//! `KVM_GET_DIRTY_LOG` reads a slot's bitmap without clearing it, and
//! `KVM_CLEAR_DIRTY_LOG` clears (and write-protects again) exactly the
//! bits it is given. [`DirtyLog`] owns a duplicate of the VM's file
//! descriptor, so the reclaimer (which reads) and the block worker (which
//! clears the pages a request moved between guest and disk) each use it
//! without the `Vm`. Frames are guest frame numbers, runs of them
//! `Range<u64>`. Frame <-> slot mapping is [`slot_spans`], which
//! `Vm::register_ram` follows (slots from [`RAM_SLOT`]: slot 0 below the
//! MMIO hole, slot 1 from 4 GiB). The block device reaches
//! [`ClearOnDisk`] through its own trait, wired by `crate::machine`. This
//! module knows no device and no frame state: it must never decide what is
//! dropped, and never report a frame clean that it could not read: a frame
//! outside every slot, or a slot it failed to read, counts as written.

use std::ops::Range;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kvm_bindings::{
    kvm_clear_dirty_log, kvm_clear_dirty_log__bindgen_ty_1, kvm_dirty_log,
    kvm_dirty_log__bindgen_ty_1,
};
use pagehint_abi::PAGE_SIZE;
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::{ioctl_iow_nr, ioctl_iowr_nr};

use crate::memory::GuestRam;
use crate::metrics::Metrics;

const KVMIO: u32 = 0xAE;
ioctl_iow_nr!(KVM_GET_DIRTY_LOG, KVMIO, 0x42, kvm_dirty_log);
ioctl_iowr_nr!(KVM_CLEAR_DIRTY_LOG, KVMIO, 0xc0, kvm_clear_dirty_log);

/// Bits per bitmap word, and the alignment `KVM_CLEAR_DIRTY_LOG` needs.
const WORD: u64 = 64;
/// The memslot of the first range of guest RAM; the others follow it.
pub const RAM_SLOT: u32 = 0;

/// Why the dirty log could not be read or cleared.
#[derive(Debug, thiserror::Error)]
pub enum DirtyLogError {
    #[error("cannot duplicate the VM file descriptor: {0}")]
    Dup(#[source] std::io::Error),
    #[error("KVM_GET_DIRTY_LOG of slot {slot} failed: {source}")]
    Get {
        slot: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("KVM_CLEAR_DIRTY_LOG of slot {slot}, pages {first}+{count}, failed: {source}")]
    Clear {
        slot: u32,
        first: u64,
        count: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("slot {0} is too large for one dirty bitmap")]
    TooLarge(u32),
}

/// One RAM memslot: its number and the guest frames it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotSpan {
    pub slot: u32,
    pub first_pfn: u64,
    pub pages: u64,
}

impl SlotSpan {
    fn contains(&self, pfn: u64) -> bool {
        pfn >= self.first_pfn && pfn - self.first_pfn < self.pages
    }
}

/// The memslots `Vm::register_ram` makes for RAM ranges `(gpa, len)`.
pub fn slot_spans(ranges: &[(u64, u64)]) -> Vec<SlotSpan> {
    (RAM_SLOT..)
        .zip(ranges)
        .map(|(slot, &(gpa, len))| SlotSpan {
            slot,
            first_pfn: gpa / PAGE_SIZE,
            pages: len / PAGE_SIZE,
        })
        .collect()
}

/// A reading of the whole log: one bitmap per slot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirtyBitmap {
    slots: Vec<(SlotSpan, Vec<u64>)>,
}

impl DirtyBitmap {
    /// A bitmap of `spans` with exactly the frames of `written` set (for
    /// tests and fakes).
    pub fn with_written(spans: &[SlotSpan], written: &[u64]) -> Self {
        let slots = spans
            .iter()
            .map(|s| {
                let mut words = vec![0u64; s.pages.div_ceil(WORD) as usize];
                for &pfn in written.iter().filter(|&&p| s.contains(p)) {
                    let i = pfn - s.first_pfn;
                    words[(i / WORD) as usize] |= 1 << (i % WORD);
                }
                (*s, words)
            })
            .collect();
        Self { slots }
    }

    /// Did the guest write frame `pfn` since its bit was last cleared? True
    /// for a frame outside every slot (nothing proves it clean).
    pub fn written(&self, pfn: u64) -> bool {
        self.slots
            .iter()
            .find(|(s, _)| s.contains(pfn))
            .and_then(|(s, words)| {
                let i = pfn - s.first_pfn;
                words.get((i / WORD) as usize).map(|w| w >> (i % WORD) & 1)
            })
            .is_none_or(|bit| bit != 0)
    }
}

/// One `KVM_CLEAR_DIRTY_LOG` call: `num_pages` from `first_page` of
/// `slot` (both multiples of 64, or reaching the slot's end), clearing the
/// bits set in `bitmap` only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClearWindow {
    pub slot: u32,
    pub first_page: u64,
    pub num_pages: u64,
    pub bitmap: Vec<u64>,
}

/// The clear calls for the frames of `runs` (frame numbers): per slot, one 64-aligned
/// window per cluster of wanted frames (frames whose bitmap words are
/// adjacent share one), clipped at the slot's end, with only the wanted
/// bits set. Frames outside every slot are skipped.
pub fn clear_windows(spans: &[SlotSpan], runs: &[Range<u64>]) -> Vec<ClearWindow> {
    let mut out = Vec::new();
    for s in spans {
        let mut pages: Vec<u64> = runs
            .iter()
            .flat_map(Clone::clone)
            .filter(|&p| s.contains(p))
            .map(|p| p - s.first_pfn)
            .collect();
        pages.sort_unstable();
        pages.dedup();
        let mut rest = pages.as_slice();
        while let Some(&lo) = rest.first() {
            // The cluster: pages whose word follows the previous one's.
            let mut n = 1;
            while rest
                .get(n)
                .is_some_and(|&p| p / WORD <= rest[n - 1] / WORD + 1)
            {
                n += 1;
            }
            let (cluster, tail) = rest.split_at(n);
            rest = tail;
            let hi = cluster[n - 1];
            let first = lo / WORD * WORD;
            let end = (hi + 1).div_ceil(WORD).saturating_mul(WORD).min(s.pages);
            let mut bitmap = vec![0u64; (end - first).div_ceil(WORD) as usize];
            for &p in cluster {
                let i = p - first;
                bitmap[(i / WORD) as usize] |= 1 << (i % WORD);
            }
            out.push(ClearWindow {
                slot: s.slot,
                first_page: first,
                num_pages: end - first,
                bitmap,
            });
        }
    }
    out
}

/// The frames wholly inside guest bytes `[addr, addr + len)`.
pub fn whole_pages(addr: u64, len: u64) -> Option<Range<u64>> {
    let first = addr.checked_add(PAGE_SIZE - 1)? / PAGE_SIZE;
    let end = addr.checked_add(len)? / PAGE_SIZE;
    (end > first).then_some(first..end)
}

/// The dirty log of one VM's RAM slots.
#[derive(Debug)]
pub struct DirtyLog {
    fd: OwnedFd,
    spans: Vec<SlotSpan>,
}

impl DirtyLog {
    /// The log of `ram`'s slots in the VM of `vm_fd` (its fd duplicated).
    /// The caller enabled manual protect and registered the slots with
    /// `KVM_MEM_LOG_DIRTY_PAGES`.
    pub fn new(vm_fd: &impl AsRawFd, ram: &GuestRam) -> Result<Self, DirtyLogError> {
        Self::with_spans(vm_fd, slot_spans(&ram.ranges()))
    }

    /// The log of the given slots in the VM of `vm_fd`.
    pub fn with_spans(vm_fd: &impl AsRawFd, spans: Vec<SlotSpan>) -> Result<Self, DirtyLogError> {
        // SAFETY: dup(2) of a file descriptor we borrow; it does not touch
        // memory and a failure is reported through the return value.
        let fd = unsafe { libc::dup(vm_fd.as_raw_fd()) };
        if fd < 0 {
            return Err(DirtyLogError::Dup(std::io::Error::last_os_error()));
        }
        Ok(Self {
            // SAFETY: `fd` is a fresh descriptor that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            spans,
        })
    }

    /// The slots it covers.
    pub fn spans(&self) -> &[SlotSpan] {
        &self.spans
    }

    /// `KVM_GET_DIRTY_LOG` of one slot of `pages` frames: its bitmap (with
    /// manual protect this does not clear it).
    pub fn get(&self, slot: u32, pages: u64) -> Result<Vec<u64>, DirtyLogError> {
        let words =
            usize::try_from(pages.div_ceil(WORD)).map_err(|_| DirtyLogError::TooLarge(slot))?;
        let mut bitmap = vec![0u64; words];
        let log = kvm_dirty_log {
            slot,
            padding1: 0,
            __bindgen_anon_1: kvm_dirty_log__bindgen_ty_1 {
                dirty_bitmap: bitmap.as_mut_ptr().cast(),
            },
        };
        // SAFETY: `log` points at `bitmap`, which has a bit for every page
        // of the slot (KVM writes `ceil(pages / 64)` words) and outlives
        // the call; the ioctl reads `log` and writes only the bitmap.
        let r = unsafe { ioctl_with_ref(&self.fd, KVM_GET_DIRTY_LOG(), &log) };
        if r < 0 {
            let source = std::io::Error::last_os_error();
            return Err(DirtyLogError::Get { slot, source });
        }
        Ok(bitmap)
    }

    /// Reads every slot.
    pub fn read(&self) -> Result<DirtyBitmap, DirtyLogError> {
        let slots = self
            .spans
            .iter()
            .map(|s| Ok((*s, self.get(s.slot, s.pages)?)))
            .collect::<Result<_, DirtyLogError>>()?;
        Ok(DirtyBitmap { slots })
    }

    /// Clears the bits of the frames of `runs` (and write-protects them
    /// again, so the guest's next write sets the bit). Returns the number
    /// of frames asked for that lie in a slot.
    pub fn clear(&self, runs: &[Range<u64>]) -> Result<u64, DirtyLogError> {
        let mut pages = 0;
        for mut w in clear_windows(&self.spans, runs) {
            let (Ok(num), first) = (u32::try_from(w.num_pages), w.first_page) else {
                return Err(DirtyLogError::TooLarge(w.slot));
            };
            let arg = kvm_clear_dirty_log {
                slot: w.slot,
                num_pages: num,
                first_page: first,
                __bindgen_anon_1: kvm_clear_dirty_log__bindgen_ty_1 {
                    dirty_bitmap: w.bitmap.as_mut_ptr().cast(),
                },
            };
            // SAFETY: `arg` points at `w.bitmap`, which holds a bit for
            // each of the `num_pages` pages and outlives the call; KVM
            // only reads it.
            let r = unsafe { ioctl_with_ref(&self.fd, KVM_CLEAR_DIRTY_LOG(), &arg) };
            if r < 0 {
                return Err(DirtyLogError::Clear {
                    slot: w.slot,
                    first,
                    count: w.num_pages,
                    source: std::io::Error::last_os_error(),
                });
            }
            pages += w
                .bitmap
                .iter()
                .map(|b| u64::from(b.count_ones()))
                .sum::<u64>();
        }
        Ok(pages)
    }
}

/// The block device's side: after each read or write request it clears
/// the bits of the whole guest pages the request's data buffers cover
/// (their contents now equal the disk), counting the clears. A failed
/// clear leaves bits set, which only keeps frames from being dropped. The
/// device calls [`ClearOnDisk::on_disk`] through its `PagesOnDisk` trait
/// (implemented in `crate::machine`).
#[derive(Debug)]
pub struct ClearOnDisk {
    log: Arc<DirtyLog>,
    metrics: Arc<Metrics>,
    warned: AtomicBool,
}

impl ClearOnDisk {
    pub fn new(log: Arc<DirtyLog>, metrics: Arc<Metrics>) -> Self {
        Self {
            log,
            metrics,
            warned: AtomicBool::new(false),
        }
    }

    /// The request's data buffers `(guest address, length)` now equal the
    /// disk: clears the bits of the whole pages they cover.
    pub fn on_disk(&self, buffers: &[(u64, u64)]) {
        let runs: Vec<Range<u64>> = buffers
            .iter()
            .filter_map(|&(addr, len)| whole_pages(addr, len))
            .collect();
        if runs.is_empty() {
            return;
        }
        let m = &self.metrics.potentially_volatile;
        match self.log.clear(&runs) {
            Ok(pages) => {
                m.clears.inc();
                m.cleared_pages.add(pages);
            }
            Err(e) => {
                if !self.warned.swap(true, Ordering::Relaxed) {
                    log::warn!("virtio-blk: {e}; those pages stay marked written");
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "dirty_log_tests.rs"]
mod tests;
