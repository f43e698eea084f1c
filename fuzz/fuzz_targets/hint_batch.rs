//! Fuzz target: `HINT_BATCH` decoding and application,
//! `HintContext::batch`, on a batch page of the fuzzer's making over a
//! frame table it put in random states first.
//!
//! Asserts, against a model of the ABI's rules written here (not taken from
//! the code under test): the call answers BAD_BLOCK exactly for a batch
//! page that is misaligned or not wholly in RAM and BAD_ARGUMENT for a
//! count of 0 or over 255; exactly the first min(asked, header) entries get
//! a result and nothing else of the page changes; an entry naming any frame
//! outside guest memory, an empty or oversized run, or an unknown hint is
//! refused and changes nothing; an illegal single-frame hint is refused and
//! leaves its frame as it was; every applied hint leaves its frames in the
//! state the ABI names and reports DISCARDED exactly when it should; the
//! frame counts add up. It must never skip a check because the result
//! looked odd.

#![no_main]

use hypervisor::frames::FrameTable;
use hypervisor::hypercall::hint::{HintContext, MAX_RANGE_FRAMES};
use hypervisor::hypercall::reporting::FreePageReporter;
use hypervisor::logger::RateLimit;
use hypervisor::metrics::Metrics;
use libfuzzer_sys::fuzz_target;
use pagehint_abi::hypercall::{hint, result, HintEntry, HintOp, HINT_BATCH_MAX};
use pagehint_abi::page_state::PageState;
use pagehint_abi::{GuestPhys, PAGE_SIZE};
use pagehint_fuzz::{ram, Input, RAM_SIZE};
use vm_memory::{Bytes, GuestAddress};

/// Where the batch page usually is (any page would do).
const BATCH: u64 = 0x10_0000;
const ENTRY: usize = 16;
const HEADER: usize = 16;
/// Offset of `result` in an entry.
const RESULT_AT: usize = 14;

/// One frame as the model sees it.
#[derive(Clone, Copy)]
struct Frame {
    state: PageState,
    discarded: bool,
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let ram = ram();
    let frames = ram.frames();
    let pv = input.bool();
    let table = FrameTable::new(frames as usize, pv);
    let metrics = Metrics::default();
    let limit = RateLimit::new(0);
    let reporter = input.bool().then(|| FreePageReporter::new(&ram));

    // Random earlier history: hints and discards on a window of frames.
    let window = 64;
    for _ in 0..input.below(16) {
        let pfn = input.below(window);
        let op = HintOp::ALL[input.below(5) as usize];
        let _ = table.apply_range(
            pfn,
            if op.takes_range() {
                1 + input.below(8)
            } else {
                1
            },
            op,
        );
        let pfn = input.below(window);
        let class = [
            PageState::Unused,
            PageState::Volatile,
            PageState::PotentiallyVolatile,
        ][input.below(3) as usize];
        if table.try_claim(pfn, class) {
            table.finish_discard(pfn);
        }
    }
    let mut model: Vec<Frame> = (0..frames)
        .map(|p| Frame {
            state: table.state(p).unwrap_or(PageState::Stable),
            discarded: table.is_discarded(p),
        })
        .collect();

    // The batch page.
    let gpa = if input.u8() % 8 == 0 {
        input.gpa()
    } else {
        BATCH
    };
    let placed_ok =
        gpa % PAGE_SIZE == 0 && gpa.checked_add(PAGE_SIZE).is_some_and(|e| e <= RAM_SIZE);
    let header = match input.u8() % 8 {
        0 => input.u32(),
        _ => input.below(HINT_BATCH_MAX as u64 + 2) as u32,
    };
    let asked = match input.u8() % 8 {
        0 => input.u64(),
        _ => input.below(HINT_BATCH_MAX as u64 + 2),
    };
    let mut page = vec![0u8; PAGE_SIZE as usize];
    page[..4].copy_from_slice(&header.to_le_bytes());
    let bpfn = gpa / PAGE_SIZE;
    let mut entries = Vec::new();
    for i in 0..HINT_BATCH_MAX {
        if input.is_empty() {
            break;
        }
        let op = match input.u8() % 16 {
            0 => input.u16(),
            k => u16::from(k % 6),
        };
        let pfn = match input.u8() % 8 {
            0 => input.u64(),
            1 => frames.wrapping_sub(input.below(4)),
            _ => input.below(frames),
        };
        let count = match input.u8() % 8 {
            0 => input.u32(),
            1 | 2 => input.below(MAX_RANGE_FRAMES + 2) as u32,
            _ => 1 + input.below(4) as u32,
        };
        let mut e = HintEntry {
            pfn,
            count,
            op,
            result: 0x5a5a,
        };
        // A report of the batch page itself would drop the batch under the
        // VMM's feet (the guest's own doing): keep the model simple.
        let covers = pfn <= bpfn && u64::from(count) > bpfn - pfn;
        if reporter.is_some() && op == hint::SET_UNUSED && covers {
            e.op = hint::SET_STABLE;
        }
        let at = HEADER + i * ENTRY;
        page[at..at + 8].copy_from_slice(&e.pfn.to_le_bytes());
        page[at + 8..at + 12].copy_from_slice(&e.count.to_le_bytes());
        page[at + 12..at + 14].copy_from_slice(&e.op.to_le_bytes());
        page[at + 14..at + 16].copy_from_slice(&e.result.to_le_bytes());
        entries.push(e);
    }
    let placed = ram.mem().write_slice(&page, GuestAddress(gpa)).is_ok();
    assert!(!placed_ok || placed);

    let ctx = HintContext {
        ram: &ram,
        table: &table,
        metrics: &metrics,
        log_limit: &limit,
        faults: None,
        reporter: reporter.as_ref(),
    };
    let r = i32::from(ctx.batch(GuestPhys(gpa), asked));

    if !placed_ok {
        assert_eq!(r, result::BAD_BLOCK, "batch at {gpa:#x}");
        return;
    }
    let n = asked.min(u64::from(header));
    if asked == 0 || asked > HINT_BATCH_MAX as u64 || n == 0 {
        assert_eq!(r, result::BAD_ARGUMENT, "asked {asked}, header {header}");
        return;
    }
    assert_eq!(r, result::OK);
    let n = n as usize;
    let mut after = vec![0u8; PAGE_SIZE as usize];
    if ram.mem().read_slice(&mut after, GuestAddress(gpa)).is_err() {
        panic!("fuzz harness: cannot read the batch back");
    }
    let changed = after != page;
    for (i, (a, b)) in after.iter().zip(&page).enumerate().filter(|_| changed) {
        let in_result =
            i >= HEADER && (i - HEADER) / ENTRY < n && (i - HEADER) % ENTRY >= RESULT_AT;
        assert!(in_result || a == b, "batch byte {i} changed");
    }

    // Every entry against the model.
    for i in 0..n {
        let e = entries.get(i).copied().unwrap_or_default();
        let at = HEADER + i * ENTRY + RESULT_AT;
        let got = i32::from(i16::from_le_bytes([after[at], after[at + 1]]));
        let Ok(op) = HintOp::try_from(e.op) else {
            assert_eq!(got, result::UNKNOWN_OP, "entry {i}: op {}", e.op);
            continue;
        };
        let count = u64::from(e.count);
        let max = if op.takes_range() {
            MAX_RANGE_FRAMES
        } else {
            1
        };
        let inside = e.pfn.checked_add(count).is_some_and(|end| end <= frames);
        if count == 0 || count > max || !inside {
            assert_eq!(got, result::BAD_ARGUMENT, "entry {i}: {e:?}");
            continue;
        }
        let run = e.pfn as usize..(e.pfn + count) as usize;
        if op == HintOp::SetUnused && reporter.is_some() {
            // A free page report: dropped at once, the table unchanged.
            assert_eq!(got, result::OK, "entry {i}: report {e:?}");
            continue;
        }
        let from = model[run.start].state;
        let illegal = count == 1
            && from == PageState::Unused
            && matches!(
                op,
                HintOp::MakeVolatile | HintOp::MakeStable | HintOp::CheckWritable
            );
        if illegal {
            assert_eq!(got, result::ILLEGAL_TRANSITION, "entry {i}: {e:?}");
            continue;
        }
        let reports = matches!(
            op,
            HintOp::SetStable | HintOp::MakeStable | HintOp::CheckWritable
        );
        let mut any_discarded = false;
        for f in &mut model[run] {
            any_discarded |= f.discarded;
            f.state = match op {
                HintOp::SetUnused => PageState::Unused,
                HintOp::MakeVolatile => PageState::Volatile,
                HintOp::CheckWritable
                    if pv
                        && !f.discarded
                        && matches!(
                            f.state,
                            PageState::Volatile | PageState::PotentiallyVolatile
                        ) =>
                {
                    PageState::PotentiallyVolatile
                }
                _ => PageState::Stable,
            };
            if reports {
                f.discarded = false;
            }
        }
        let want = if reports && any_discarded {
            result::DISCARDED
        } else {
            result::OK
        };
        assert_eq!(got, want, "entry {i}: {e:?}");
    }
    // Entries past the count are never looked at.
    for i in n..entries.len() {
        let at = HEADER + i * ENTRY + RESULT_AT;
        assert_eq!(i16::from_le_bytes([after[at], after[at + 1]]), 0x5a5a);
    }
    for (p, f) in model.iter().enumerate() {
        let p = p as u64;
        assert_eq!(table.state(p), Some(f.state), "frame {p:#x}");
        assert_eq!(table.is_discarded(p), f.discarded, "frame {p:#x} discarded");
    }
    assert!(table.state(frames).is_none());
    let c = table.counts();
    assert_eq!(
        c.stable + c.unused + c.volatile + c.potentially_volatile,
        frames,
        "{c:?}"
    );
});
