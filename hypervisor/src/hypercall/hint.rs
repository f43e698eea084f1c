//! `HINT_BATCH`: a page of page-state hints from the guest, applied in
//! order to the frame state table.
//!
//! The decoded `Request::HintBatch { batch, count }` names a 4 KiB-aligned
//! `HintBatch` page and the number of entries (1..=`HINT_BATCH_MAX`; the
//! smaller of it and the batch's own count is used). The header and every entry are read
//! with `read_obj`; each entry's `result` is written back with `write_obj`.
//! Every value comes from the guest and is checked: a bad batch or entry
//! gets an error code, a counter and a rate-limited log line. This module
//! must never panic, never touch guest memory outside the batch page, and
//! never change a frame's state on an entry it refused.

use std::mem::{offset_of, size_of};

use pagehint_abi::hypercall::{CallResult, HintBatch, HintEntry, HintOp, HINT_BATCH_MAX};
use pagehint_abi::GuestPhys;
use vm_memory::{Bytes, GuestAddress};

use crate::discard_fault::DiscardFaults;
use crate::frames::{FrameTable, HintOutcome, StateError};
use crate::hypercall::reporting::{FreePageReporter, ReportError};
use crate::logger::RateLimit;
use crate::memory::GuestRam;
use crate::metrics::Metrics;

/// Most frames one SET_UNUSED / SET_STABLE entry may name (256 MiB).
pub const MAX_RANGE_FRAMES: u64 = 65_536;
/// Offset of the first entry in the batch page.
const ENTRIES_OFFSET: u64 = offset_of!(HintBatch, entries) as u64;
/// Bytes per entry.
const ENTRY_SIZE: u64 = size_of::<HintEntry>() as u64;
/// Offset of `result` in an entry.
const RESULT_OFFSET: u64 = offset_of!(HintEntry, result) as u64;

/// What was wrong with a batch or one of its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HintError {
    #[error("hint batch {0:#x} is not 4 KiB aligned")]
    Misaligned(GuestPhys),
    #[error("hint batch {0:#x} is outside guest RAM")]
    OutsideRam(GuestPhys),
    #[error("hint batch {0:#x} could not be accessed")]
    Access(GuestPhys),
    #[error("hint batch count {0} is not in 1..={HINT_BATCH_MAX}")]
    BadCount(u64),
    #[error("hint {op:?} names frames {pfn:#x}+{count}, outside guest RAM or too many")]
    BadRange { op: HintOp, pfn: u64, count: u32 },
    #[error("unknown hint operation {0}")]
    UnknownHint(u16),
    #[error(transparent)]
    Illegal(StateError),
    /// A free page report the host could not honour.
    #[error(transparent)]
    Report(ReportError),
}

impl HintError {
    /// The result code the guest sees.
    pub fn code(&self) -> CallResult {
        match self {
            HintError::Misaligned(_) | HintError::OutsideRam(_) | HintError::Access(_) => {
                CallResult::BadBlock
            }
            HintError::BadCount(_) | HintError::BadRange { .. } => CallResult::BadArgument,
            HintError::Report(_) => CallResult::BadArgument,
            HintError::Illegal(StateError::OutOfRange(_)) => CallResult::BadArgument,
            HintError::UnknownHint(_) => CallResult::UnknownOp,
            HintError::Illegal(StateError::Illegal { .. }) => CallResult::IllegalTransition,
        }
    }

    /// Counts the error by kind.
    fn count(&self, m: &Metrics) {
        let e = &m.hypercalls.errors;
        match self {
            HintError::Misaligned(_) | HintError::OutsideRam(_) | HintError::Access(_) => {
                e.bad_block.inc()
            }
            HintError::BadCount(_) => e.bad_count.inc(),
            HintError::BadRange { .. }
            | HintError::Illegal(StateError::OutOfRange(_))
            | HintError::Report(_) => e.bad_argument.inc(),
            HintError::UnknownHint(_) => e.unknown_hint.inc(),
            HintError::Illegal(StateError::Illegal { .. }) => e.illegal_transition.inc(),
        }
    }
}

/// What a batch needs: guest RAM, the frame table, counters, a log limit.
#[derive(Debug, Clone, Copy)]
pub struct HintContext<'a> {
    pub ram: &'a GuestRam,
    pub table: &'a FrameTable,
    pub metrics: &'a Metrics,
    pub log_limit: &'a RateLimit,
    /// Discard faults, when on: frames made stable are unregistered.
    pub faults: Option<&'a DiscardFaults>,
    /// Free page reporting, when on: a `SET_UNUSED` entry is a report,
    /// dropped at once; the frames stay Stable in the table.
    pub reporter: Option<&'a FreePageReporter>,
}

impl HintContext<'_> {
    /// Counts an error and logs it within the rate limit; returns its code.
    fn refuse(&self, e: HintError) -> CallResult {
        e.count(self.metrics);
        if self.log_limit.allow() {
            log::warn!("hypercall: {e}");
        }
        e.code()
    }

    /// Serves one `HINT_BATCH` call on the batch page at `batch` with
    /// `count` entries asked for; returns the call's result.
    pub fn batch(&self, batch: GuestPhys, count: u64) -> CallResult {
        self.metrics.hypercalls.hint_batch.inc();
        match self.batch_inner(batch, count) {
            Ok(()) => CallResult::Ok,
            Err(e) => self.refuse(e),
        }
    }

    fn batch_inner(&self, batch: GuestPhys, asked: u64) -> Result<(), HintError> {
        if !batch.is_page_aligned() {
            return Err(HintError::Misaligned(batch));
        }
        if !self.ram.contains(batch, size_of::<HintBatch>() as u64) {
            return Err(HintError::OutsideRam(batch));
        }
        let max = HINT_BATCH_MAX as u64;
        if asked == 0 || asked > max {
            return Err(HintError::BadCount(asked));
        }
        let header: u32 = self
            .ram
            .mem()
            .read_obj(GuestAddress(batch.as_u64()))
            .map_err(|_| HintError::Access(batch))?;
        let n = asked.min(u64::from(header));
        if n == 0 {
            return Err(HintError::BadCount(0));
        }
        for i in 0..n {
            // i < 255: the offsets stay inside the page checked above.
            let at = (batch + ENTRIES_OFFSET + i * ENTRY_SIZE).as_u64();
            let entry: HintEntry = self
                .ram
                .mem()
                .read_obj(GuestAddress(at))
                .map_err(|_| HintError::Access(batch))?;
            let code = i16::from(match self.entry(&entry) {
                Ok(HintOutcome::Applied) => CallResult::Ok,
                Ok(HintOutcome::Discarded) => CallResult::Discarded,
                Err(e) => self.refuse(e),
            });
            self.ram
                .mem()
                .write_obj(code, GuestAddress(at + RESULT_OFFSET))
                .map_err(|_| HintError::Access(batch))?;
        }
        Ok(())
    }

    /// Checks and applies one entry.
    fn entry(&self, e: &HintEntry) -> Result<HintOutcome, HintError> {
        let h = &self.metrics.hypercalls;
        let op = e.op().map_err(HintError::UnknownHint)?;
        match op {
            HintOp::SetUnused => h.set_unused.inc(),
            HintOp::SetStable => h.set_stable.inc(),
            HintOp::MakeVolatile => h.make_volatile.inc(),
            HintOp::MakeStable => h.make_stable.inc(),
            HintOp::CheckWritable => h.check_writable.inc(),
        }
        let max_count = if op.takes_range() {
            MAX_RANGE_FRAMES
        } else {
            1
        };
        let count = u64::from(e.count);
        let frames = self.table.len();
        let bad = HintError::BadRange {
            op,
            pfn: e.pfn,
            count: e.count,
        };
        let single = max_count == 1;
        if count == 0 || count > max_count || (single && count != 1) {
            return Err(bad);
        }
        match e.pfn.checked_add(count) {
            Some(end) if end <= frames => {}
            _ => return Err(bad),
        }
        if let (HintOp::SetUnused, Some(r)) = (op, self.reporter) {
            r.report(e.pfn, count, self.metrics)
                .map_err(HintError::Report)?;
            return Ok(HintOutcome::Applied);
        }
        let outcome = self
            .table
            .apply_range(e.pfn, count, op)
            .map_err(HintError::Illegal)?;
        // A frame being allocated (SET_STABLE) is mapped nowhere: it is
        // unregistered here, so that its next touch is a plain first touch
        // and not a userfaultfd round trip. A frame whose discard a
        // MAKE_STABLE or CHECK_WRITABLE reported stays registered: the
        // guest is dropping it from its cache, and until every mapping of
        // it is gone, another CPU's touch must be a discard fault, not a
        // silent zero page. It is unregistered when it is allocated again.
        if let (HintOp::SetStable, Some(f)) = (op, self.faults) {
            f.unregister_marked(e.pfn, count);
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pagehint_abi::hypercall::{hint, result};
    use pagehint_abi::PAGE_SIZE;

    const BATCH: u64 = 0x10_0000;

    struct Fixture {
        ram: GuestRam,
        table: FrameTable,
        metrics: Metrics,
        limit: RateLimit,
    }

    impl Fixture {
        fn new() -> Self {
            let ram = GuestRam::new(16 << 20).unwrap();
            let frames = ram.frames() as usize;
            Self {
                ram,
                table: FrameTable::new(frames, false),
                metrics: Metrics::default(),
                limit: RateLimit::new(10),
            }
        }

        fn ctx(&self) -> HintContext<'_> {
            HintContext {
                ram: &self.ram,
                table: &self.table,
                metrics: &self.metrics,
                log_limit: &self.limit,
                faults: None,
                reporter: None,
            }
        }

        /// Writes a batch of `entries` with header count `count`, runs it
        /// with `asked`, returns the call result and each entry's result.
        fn run(&self, count: u32, asked: u64, entries: &[(u64, u32, u16)]) -> (i32, Vec<i16>) {
            let mem = self.ram.mem();
            mem.write_obj(count, GuestAddress(BATCH)).unwrap();
            for (i, &(pfn, count, op)) in entries.iter().enumerate() {
                let e = HintEntry {
                    pfn,
                    count,
                    op,
                    result: 99,
                };
                let at = BATCH + ENTRIES_OFFSET + i as u64 * ENTRY_SIZE;
                mem.write_obj(e, GuestAddress(at)).unwrap();
            }
            let r = self.ctx().batch(GuestPhys(BATCH), asked);
            let results = (0..entries.len() as u64)
                .map(|i| {
                    let at = BATCH + ENTRIES_OFFSET + i * ENTRY_SIZE;
                    mem.read_obj::<HintEntry>(GuestAddress(at)).unwrap().result
                })
                .collect();
            (i32::from(r), results)
        }
    }

    #[test]
    fn with_free_page_reporting_set_unused_is_a_report_the_table_forgets() {
        let f = Fixture::new();
        let reporter = FreePageReporter::new(&f.ram);
        let ctx = HintContext {
            reporter: Some(&reporter),
            ..f.ctx()
        };
        let mem = f.ram.mem();
        mem.write_obj(0x5au8, GuestAddress(512 * PAGE_SIZE))
            .unwrap();
        mem.write_obj(2u32, GuestAddress(BATCH)).unwrap();
        let entries = [
            HintEntry {
                pfn: 512,
                count: 512,
                op: hint::SET_UNUSED,
                result: 99,
            },
            HintEntry {
                pfn: f.table.len(),
                count: 512,
                op: hint::SET_UNUSED,
                result: 99,
            },
        ];
        for (i, e) in entries.iter().enumerate() {
            let at = BATCH + ENTRIES_OFFSET + i as u64 * ENTRY_SIZE;
            mem.write_obj(*e, GuestAddress(at)).unwrap();
        }
        assert_eq!(i32::from(ctx.batch(GuestPhys(BATCH), 2)), result::OK);
        let res = |i: u64| {
            let at = BATCH + ENTRIES_OFFSET + i * ENTRY_SIZE;
            mem.read_obj::<HintEntry>(GuestAddress(at)).unwrap().result
        };
        assert_eq!((res(0), res(1)), (0, result::BAD_ARGUMENT as i16));
        let byte: u8 = mem.read_obj(GuestAddress(512 * PAGE_SIZE)).unwrap();
        assert_eq!(byte, 0, "the reported block was dropped at once");
        let c = f.table.counts();
        assert_eq!((c.unused, c.discarded), (0, 0), "the table forgot it");
        assert_eq!(f.table.total_discards(), 0);
        assert_eq!(f.metrics.reclaim.reported_pages.get(), 512);
        assert_eq!(f.metrics.hypercalls.set_unused.get(), 2);
    }

    fn codes(v: &[i32]) -> Vec<i16> {
        v.iter().map(|&c| c as i16).collect()
    }

    #[test]
    fn entries_apply_in_order_with_their_own_results() {
        let f = Fixture::new();
        let frames = f.table.len();
        let (r, res) = f.run(
            6,
            6,
            &[
                (100, 8, hint::SET_UNUSED),
                (100, 1, hint::MAKE_VOLATILE),
                (104, 1, hint::SET_STABLE),
                (104, 1, hint::MAKE_VOLATILE),
                (104, 1, hint::MAKE_STABLE),
                (frames - 1, 1, hint::CHECK_WRITABLE),
            ],
        );
        assert_eq!(r, result::OK);
        assert_eq!(
            res,
            codes(&[result::OK, result::ILLEGAL_TRANSITION, 0, 0, 0, 0])
        );
        assert_eq!(f.table.counts().unused, 7);
        let h = &f.metrics.hypercalls;
        assert_eq!((h.set_unused.get(), h.make_volatile.get()), (1, 2));
        assert_eq!(h.errors.illegal_transition.get(), 1);
        // A discard is reported to the next stable-making hint.
        assert!(f
            .table
            .try_claim(101, pagehint_abi::page_state::PageState::Unused));
        f.table.finish_discard(101);
        let (_, res) = f.run(1, 1, &[(100, 4, hint::SET_STABLE)]);
        assert_eq!(res, codes(&[result::DISCARDED]));
        assert_eq!(f.table.zero_fills(), 1);
    }

    #[test]
    fn malformed_batches_are_refused_and_counted() {
        let f = Fixture::new();
        let c = f.ctx();
        let e = &f.metrics.hypercalls.errors;
        assert_eq!(c.batch(GuestPhys(BATCH + 64), 1), CallResult::BadBlock);
        assert_eq!(c.batch(GuestPhys(16 << 20), 1), CallResult::BadBlock);
        assert_eq!(c.batch(GuestPhys(u64::MAX - 4095), 1), CallResult::BadBlock);
        assert_eq!(e.bad_block.get(), 3);
        assert_eq!(f.run(1, 0, &[]).0, result::BAD_ARGUMENT);
        assert_eq!(f.run(1, 256, &[]).0, result::BAD_ARGUMENT);
        assert_eq!(f.run(0, 5, &[]).0, result::BAD_ARGUMENT, "header count 0");
        assert_eq!(e.bad_count.get(), 3);
        // The smaller count wins: the third entry is never looked at.
        let (r, res) = f.run(
            2,
            3,
            &[
                (1, 1, hint::SET_UNUSED),
                (2, 1, hint::SET_UNUSED),
                (3, 1, hint::SET_UNUSED),
            ],
        );
        assert_eq!((r, res), (result::OK, vec![0, 0, 99]));
        assert_eq!(f.metrics.hypercalls.hint_batch.get(), 7);
    }

    #[test]
    fn bad_entries_get_their_own_codes() {
        let f = Fixture::new();
        let frames = f.table.len();
        let (r, res) = f.run(
            9,
            9,
            &[
                (frames, 1, hint::SET_UNUSED),
                (frames - 1, 2, hint::SET_UNUSED),
                (u64::MAX, 2, hint::SET_STABLE),
                (0, 0, hint::SET_UNUSED),
                (0, 65_537, hint::SET_UNUSED),
                (0, 2, hint::MAKE_STABLE),
                (0, 1, 42),
                (5, 1, hint::SET_UNUSED),
                (5, 1, hint::MAKE_STABLE),
            ],
        );
        assert_eq!(r, result::OK);
        let b = result::BAD_ARGUMENT;
        assert_eq!(
            res,
            codes(&[
                b,
                b,
                b,
                b,
                b,
                b,
                result::UNKNOWN_OP,
                result::OK,
                result::ILLEGAL_TRANSITION
            ])
        );
        let e = &f.metrics.hypercalls.errors;
        assert_eq!(e.bad_argument.get(), 6);
        assert_eq!(e.unknown_hint.get(), 1);
        assert_eq!(e.illegal_transition.get(), 1);
        assert_eq!(f.table.counts().unused, 1, "refused entries change nothing");
        // The largest legal range.
        let (_, res) = f.run(1, 1, &[(0, 4096, hint::SET_UNUSED)]);
        assert_eq!(res, vec![0]);
    }
}
