//! The one place that drops guest frames on the host: `MADV_DONTNEED` on
//! runs of frames, one `madvise` per run, or, for many short scattered
//! runs, `process_madvise` on a pidfd of this process with up to 512 runs
//! per call (falling back to `madvise` for good if the kernel refuses it);
//! and [`Discarder::settle`], which ends the claims of a chunk of frames the
//! reclaimer claimed: arm the volatile runs for discard faults
//! ([`Arming`]), drop them, mark each frame discarded or give it back.
//!
//! After `MADV_DONTNEED` the frames read as zeroes and KVM's MMU notifiers
//! drop the guest's mappings of them (`KVM_CAP_SYNC_MMU`, checked at start).
//! This module must never touch memory outside guest RAM (every run goes
//! through [`HostMap`]), never decide which frames to drop (callers claim
//! them first, or the guest reported them free), and never report a run
//! dropped that was not.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::fault_inject::{self, Point};
use crate::frames::host::{HostMap, HostRange};
use crate::frames::run::{Run, RunBuilder};
use crate::frames::table::FrameTable;
use crate::logger::RateLimit;
use crate::memory::GuestRam;

/// Runs per `process_madvise` call (the kernel allows `UIO_MAXIOV`, 1024).
pub const IOV_BATCH: usize = 512;
/// Log lines per second about failed drops.
const LOG_LINES_PER_SECOND: u64 = 2;
/// Use `process_madvise` when a batch has at least this many runs...
const SCATTERED_MIN_RUNS: usize = 16;
/// ... of at most this many pages on average.
const SCATTERED_MAX_AVG_PAGES: u64 = 8;

/// Why the discarder could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DiscardError {
    /// Guest RAM has no host mapping (cannot happen with `GuestRam::new`).
    #[error("guest RAM has no host address")]
    NoHostMapping,
}

/// What one [`Discarder::discard`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiscardReport {
    /// Frames dropped.
    pub pages: u64,
    pub madvise_calls: u64,
    pub process_madvise_calls: u64,
    /// Of those calls, the ones that failed (a failed `process_madvise`
    /// batch goes through `madvise` instead).
    pub madvise_failures: u64,
    pub process_madvise_failures: u64,
    /// Indexes (into the runs given) of runs NOT dropped: contents intact.
    pub failed: Vec<usize>,
}

/// How the next batch goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Choose by the shape of the runs.
    Auto,
    /// One `madvise` per run.
    Madvise,
    /// `process_madvise` batches (when the kernel has it).
    ProcessMadvise,
}

/// What arms discarded volatile frames, so that the guest's next touch of
/// one is a discard fault rather than a silent zero page. The discard-fault
/// machinery implements it; the core needs nothing else of it.
pub trait Arming: Send + Sync {
    /// Registers a claimed run of Volatile frames that is about to be
    /// dropped. False if that was refused: the run must then be kept.
    fn arm(&self, run: Run) -> bool;
    /// Undoes [`Arming::arm`] for every frame of `run` still armed.
    fn disarm(&self, run: Run);
}

/// What one [`Discarder::settle`] (or a pass of them) did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Frames dropped (each was resident, so resident fell by as many).
    pub pages: u64,
    /// Frames claimed but not dropped (madvise failed, or the run could
    /// not be armed; contents intact).
    pub failed: u64,
    pub madvise_calls: u64,
    pub process_madvise_calls: u64,
    /// Failed calls, and the frames whose `madvise` failed (in `failed`).
    pub madvise_failures: u64,
    pub process_madvise_failures: u64,
    pub madvise_kept_pages: u64,
}

impl PassReport {
    /// Adds `other` to this report.
    pub fn add(&mut self, other: &PassReport) {
        self.pages += other.pages;
        self.failed += other.failed;
        self.madvise_calls += other.madvise_calls;
        self.process_madvise_calls += other.process_madvise_calls;
        self.madvise_failures += other.madvise_failures;
        self.process_madvise_failures += other.process_madvise_failures;
        self.madvise_kept_pages += other.madvise_kept_pages;
    }
}

/// `madvise(MADV_DONTNEED)` of one checked host range.
fn madvise_dontneed(range: HostRange) -> std::io::Result<()> {
    let len = usize::try_from(range.len).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    fault_inject::check_io(Point::Madvise)?;
    // SAFETY: `range` came from a `HostMap`, so it lies inside the guest
    // RAM mapping the map keeps alive. MADV_DONTNEED on this private
    // anonymous mapping only replaces the contents with zero pages; the VMM
    // holds no Rust reference into guest memory (every access goes through
    // vm-memory's volatile copies), and the frames were claimed (BUSY) or
    // reported free, so no hint races with the drop.
    let r = unsafe { libc::madvise(range.addr as *mut libc::c_void, len, libc::MADV_DONTNEED) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Drops one run of frames of `map` at once (free page reporting's host
/// side); an error leaves the contents as they were.
pub fn discard_run(map: &HostMap, run: Run) -> std::io::Result<()> {
    let range = map.range(run).ok_or(std::io::ErrorKind::InvalidInput)?;
    madvise_dontneed(range)
}

/// Drops runs of frames of one guest RAM mapping.
#[derive(Debug)]
pub struct Discarder {
    map: HostMap,
    /// Our own pidfd, opened on first use; `None` after the kernel refused.
    pidfd: Option<OwnedFd>,
    process_madvise_ok: bool,
    /// Failed drops are logged at most this often (they are counted).
    log_limit: RateLimit,
}

impl Discarder {
    /// A discarder for `ram`.
    pub fn new(ram: &GuestRam) -> Result<Self, DiscardError> {
        Ok(Self {
            map: HostMap::new(ram).ok_or(DiscardError::NoHostMapping)?,
            pidfd: None,
            process_madvise_ok: true,
            log_limit: RateLimit::new(LOG_LINES_PER_SECOND),
        })
    }

    /// Drops every run (`Method::Auto` picks `process_madvise` for many
    /// short runs). Runs outside RAM are reported failed and left alone.
    pub fn discard(&mut self, runs: &[Run], method: Method) -> DiscardReport {
        let mut report = DiscardReport::default();
        let total = runs.iter().fold(0u64, |t, r| t.saturating_add(r.count));
        let scattered = runs.len() >= SCATTERED_MIN_RUNS
            && total <= (runs.len() as u64).saturating_mul(SCATTERED_MAX_AVG_PAGES);
        let batch = match method {
            Method::Auto => scattered,
            Method::Madvise => false,
            Method::ProcessMadvise => true,
        };
        let mut start = 0;
        if batch {
            start = self.process_madvise_runs(runs, &mut report);
        }
        for (i, run) in runs.iter().enumerate().skip(start) {
            self.madvise_run(i, run, &mut report);
        }
        report
    }

    fn madvise_run(&self, i: usize, run: &Run, report: &mut DiscardReport) {
        let Some(range) = self.map.range(*run) else {
            report.failed.push(i);
            return;
        };
        report.madvise_calls += 1;
        match madvise_dontneed(range) {
            Ok(()) => report.pages += run.count,
            Err(e) => {
                // Nothing was dropped: the caller gives the run back as it
                // was (a later round may try again).
                if self.log_limit.allow() {
                    log::warn!(
                        "reclaim: madvise(MADV_DONTNEED) of frames {:#x}+{} failed: {e}; kept",
                        run.pfn,
                        run.count
                    );
                }
                report.madvise_failures += 1;
                report.failed.push(i);
            }
        }
    }

    /// Drops the claimed runs of `chunk` and ends every claim, adding what
    /// it did to `report`. With `arming` (Volatile runs, discard faults on)
    /// each run is armed first; runs that cannot be armed are not dropped,
    /// runs whose drop failed are disarmed again. Empties `chunk`.
    pub fn settle(
        &mut self,
        table: &FrameTable,
        chunk: &mut RunBuilder,
        method: Method,
        arming: Option<&dyn Arming>,
        report: &mut PassReport,
    ) {
        if chunk.runs().is_empty() {
            return;
        }
        let mut runs: Vec<Run> = Vec::with_capacity(chunk.runs().len());
        for run in chunk.runs() {
            match arming {
                Some(a) if !a.arm(*run) => {
                    run.frames().for_each(|pfn| table.abort_discard(pfn));
                    report.failed += run.count;
                }
                _ => runs.push(*run),
            }
        }
        let done = self.discard(&runs, method);
        let mut failed = vec![false; runs.len()];
        for &i in &done.failed {
            if let Some(f) = failed.get_mut(i) {
                *f = true;
            }
        }
        for (run, &bad) in runs.iter().zip(&failed) {
            if bad {
                if let Some(a) = arming {
                    a.disarm(*run);
                }
                run.frames().for_each(|pfn| table.abort_discard(pfn));
                report.failed += run.count;
                report.madvise_kept_pages += run.count;
            } else {
                run.frames().for_each(|pfn| table.finish_discard(pfn));
            }
        }
        report.pages += done.pages;
        report.madvise_calls += done.madvise_calls;
        report.process_madvise_calls += done.process_madvise_calls;
        report.madvise_failures += done.madvise_failures;
        report.process_madvise_failures += done.process_madvise_failures;
        chunk.clear();
    }

    fn pidfd(&mut self) -> Option<i32> {
        if self.pidfd.is_none() && self.process_madvise_ok {
            // SAFETY: pidfd_open(2) with our own pid and no flags only
            // creates a new file descriptor, which we own from here on.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
            match i32::try_from(fd) {
                Ok(fd) if fd >= 0 => {
                    // SAFETY: `fd` was just returned to us and is owned by
                    // nothing else.
                    self.pidfd = Some(unsafe { OwnedFd::from_raw_fd(fd) });
                }
                _ => self.give_up_process_madvise("pidfd_open"),
            }
        }
        self.pidfd.as_ref().map(|f| f.as_raw_fd())
    }

    fn give_up_process_madvise(&mut self, what: &str) {
        log::info!(
            "reclaim: {what} unavailable ({}); using madvise",
            std::io::Error::last_os_error()
        );
        self.process_madvise_ok = false;
        self.pidfd = None;
    }

    fn give_up_process_madvise_after(&mut self, e: &std::io::Error) {
        log::info!("reclaim: process_madvise(MADV_DONTNEED) failed ({e}); using madvise");
        self.process_madvise_ok = false;
        self.pidfd = None;
    }

    /// Drops runs with `process_madvise` from the front while it works;
    /// returns the index of the first run it did not handle (the caller
    /// uses `madvise` from there).
    fn process_madvise_runs(&mut self, runs: &[Run], report: &mut DiscardReport) -> usize {
        let mut next = 0;
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(IOV_BATCH);
        let mut idx: Vec<usize> = Vec::with_capacity(IOV_BATCH);
        let mut bad: Vec<usize> = Vec::new();
        while next < runs.len() {
            let Some(pidfd) = self.pidfd() else {
                return next;
            };
            iov.clear();
            idx.clear();
            bad.clear();
            let mut end = next;
            while end < runs.len() && iov.len() < IOV_BATCH {
                match self.map.range(runs[end]) {
                    Some(range) => {
                        iov.push(libc::iovec {
                            iov_base: range.addr as *mut libc::c_void,
                            iov_len: range.len as usize,
                        });
                        idx.push(end);
                    }
                    None => bad.push(end),
                }
                end += 1;
            }
            if iov.is_empty() {
                report.failed.extend_from_slice(&bad);
                next = end;
                continue;
            }
            let r = match fault_inject::check(Point::ProcessMadvise) {
                Some(errno) => Err(std::io::Error::from_raw_os_error(errno)),
                None => {
                    // SAFETY: every iovec is a range inside the guest RAM
                    // mapping kept alive by `self.map` (HostMap::range), so
                    // the same argument as for madvise holds; the iovec
                    // array outlives the call; `pidfd` is our own pidfd.
                    let r = unsafe {
                        libc::syscall(
                            libc::SYS_process_madvise,
                            pidfd,
                            iov.as_ptr(),
                            iov.len(),
                            libc::MADV_DONTNEED,
                            0u32,
                        )
                    };
                    if r < 0 {
                        Err(std::io::Error::last_os_error())
                    } else {
                        Ok(r)
                    }
                }
            };
            let r = match r {
                Ok(r) => r,
                Err(e) => {
                    // A failed call dropped nothing (a partial one returns
                    // its count): these runs go through madvise. Only a
                    // passing shortage keeps process_madvise for later.
                    report.process_madvise_failures += 1;
                    report.process_madvise_calls += 1;
                    let passing = matches!(
                        e.raw_os_error(),
                        Some(libc::EAGAIN | libc::ENOMEM | libc::EINTR)
                    );
                    if passing {
                        log::debug!("reclaim: process_madvise(MADV_DONTNEED) failed: {e}; madvise this time");
                    } else {
                        self.give_up_process_madvise_after(&e);
                    }
                    return next;
                }
            };
            report.process_madvise_calls += 1;
            // The kernel advises the vectors in order; `r` bytes were done.
            let mut done = u64::try_from(r).unwrap_or(0);
            for (k, &run_i) in idx.iter().enumerate() {
                let len = iov[k].iov_len as u64;
                if done < len {
                    // A short count: the rest goes through madvise.
                    report.failed.extend(bad.iter().filter(|&&b| b < run_i));
                    return run_i;
                }
                done -= len;
                report.pages += runs[run_i].count;
            }
            report.failed.extend_from_slice(&bad);
            next = end;
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pagehint_abi::PAGE_SIZE as PAGE;
    use vm_memory::{Bytes, GuestAddress};

    fn filled(ram: &GuestRam, frames: u64) {
        for p in 0..frames {
            ram.mem().write_obj(0xa5u8, GuestAddress(p * PAGE)).unwrap();
        }
    }

    fn byte(ram: &GuestRam, pfn: u64) -> u8 {
        ram.mem().read_obj(GuestAddress(pfn * PAGE)).unwrap()
    }

    #[test]
    fn both_methods_zero_exactly_the_runs_given() {
        let ram = GuestRam::new(16 << 20).unwrap();
        let mut d = Discarder::new(&ram).unwrap();
        for method in [Method::Madvise, Method::ProcessMadvise, Method::Auto] {
            filled(&ram, 64);
            let runs: Vec<Run> = (0..20)
                .map(|i| Run {
                    pfn: i * 3,
                    count: 1,
                })
                .collect();
            let r = d.discard(&runs, method);
            assert!(r.failed.is_empty(), "{method:?}: {r:?}");
            assert_eq!(r.pages, 20);
            for p in 0..64 {
                let expect = if p % 3 == 0 && p < 60 { 0 } else { 0xa5 };
                assert_eq!(byte(&ram, p), expect, "{method:?} frame {p}");
            }
            if method == Method::Madvise {
                assert_eq!((r.madvise_calls, r.process_madvise_calls), (20, 0));
            }
        }
    }

    #[test]
    fn runs_outside_ram_are_refused() {
        let ram = GuestRam::new(16 << 20).unwrap();
        let frames = (16 << 20) / PAGE;
        let mut d = Discarder::new(&ram).unwrap();
        // Not the too-long run: the report's page sum would overflow.
        let [past_top, at_max, empty, _] = Run::outside(frames);
        let runs = [
            past_top,
            at_max,
            empty,
            Run {
                pfn: frames - 1,
                count: 1,
            },
        ];
        let r = d.discard(&runs, Method::Madvise);
        assert_eq!(r.failed, vec![0, 1, 2]);
        assert_eq!(r.pages, 1);
        let r = d.discard(&runs, Method::ProcessMadvise);
        assert_eq!(r.failed, vec![0, 1, 2]);
        assert_eq!(r.pages, 1);
    }
}
