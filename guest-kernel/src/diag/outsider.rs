//! `abi-outsider`: a guest that uses the shared page-state table the way
//! a guest written from `docs/abi.md` alone would, not the way the bundled
//! kernel does: it registers odd tables, makes its own frames volatile by
//! the documented store, touches dropped frames from kernel code (CPL0),
//! reads frames that are ARMED, and makes frames stable in odd orders,
//! checking every frame's contents against what the table told it.
//!
//! Run with `hints=batched` (so that the kernel registers no table itself)
//! on a VMM that offers the table, under a small `--host-budget`, so that
//! the host drops the frames made volatile. What must hold, whatever the
//! host did and in whatever order: a frame the table calls intact holds
//! exactly its pattern; a frame it calls discarded reads as zeroes; a
//! kernel-mode touch of a dropped frame completes (on hardware KVM after a
//! #VE the kernel's handler returns from, on a host that emulates kernel
//! code after the VMM breaks the loop) and leaves the drop on the entry.
//! One `result:` line says what was seen; the status is `FAILURE` on any
//! error. It must never touch a frame it did not allocate.
//!
//! Reading and writing its frames and its state table through the direct
//! map is its job, so it holds unsafe code: the table (frames it takes
//! for good) and the [`FRAMES`] frames under test, which it allocates
//! and frees itself. The helpers that take a frame's address are
//! `unsafe fn`; each call names the frame.

use core::sync::atomic::{AtomicU8, Ordering};

use pagehint_abi::cpuid::features;
use pagehint_abi::exit::guest;
use pagehint_abi::hypercall::{CallResult, HintOp, HintResult, Request};
use pagehint_abi::page_state::PageState;
use pagehint_abi::state_table::{self as st, ARMED, BUSY, DISCARDED};
use pagehint_abi::{GuestPhys, PAGE_SIZE};

use crate::arch::{cpu, direct_map};
use crate::console::println;
use crate::hv;
use crate::phys;

/// Frames under test, in four groups of [`GROUP`].
const FRAMES: usize = 64;
const GROUP: usize = FRAMES / 4;
/// How long the host gets to drop the frames made volatile.
const WAIT_MS: u64 = 20_000;

/// The pattern of word `i` of frame `pfn`: never zero.
fn pattern(pfn: u64, i: u64) -> u64 {
    (pfn << 20) ^ (i << 3) ^ 0x5a5a_0000_0000_0001
}

/// Writes frame `pa`'s pattern into it.
///
/// # Safety
///
/// `pa` is a frame this program allocated and still holds, page-aligned,
/// with no Rust reference into it.
unsafe fn fill(pa: u64) {
    let pfn = pa / PAGE_SIZE;
    for i in 0..PAGE_SIZE / 8 {
        // SAFETY: the caller's contract, see # Safety; word `i` lies
        // inside the frame, aligned.
        unsafe { direct_map::write::<u64>(pa + 8 * i, pattern(pfn, i)) };
    }
}

/// What the frame holds: its pattern, zeroes, or something else.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Contents {
    Pattern,
    Zeroes,
    Other,
}

///
/// # Safety
///
/// As for [`fill`].
unsafe fn contents(pa: u64) -> Contents {
    let pfn = pa / PAGE_SIZE;
    let (mut pat, mut zero) = (true, true);
    for i in 0..PAGE_SIZE / 8 {
        // SAFETY: the caller's contract, see # Safety; word `i` lies
        // inside the frame, aligned.
        let w = unsafe { direct_map::read::<u64>(pa + 8 * i) };
        pat &= w == pattern(pfn, i);
        zero &= w == 0;
        if !pat && !zero {
            return Contents::Other;
        }
    }
    if pat {
        Contents::Pattern
    } else {
        Contents::Zeroes
    }
}

/// One kernel-mode read of the frame (the access a guest must not make
/// to a volatile or armed frame: it is the point here).
///
/// # Safety
///
/// As for [`fill`]. (A frame the host dropped reads as zeroes, or the
/// access is paused and completed by the VMM; either way it is memory.)
unsafe fn kernel_touch(pa: u64) -> u64 {
    // SAFETY: the caller's contract, see # Safety.
    unsafe { direct_map::read::<u64>(pa) }
}

fn sleep_ms(ms: u64, khz: u64) {
    let end = cpu::rdtsc() + ms * khz;
    while cpu::rdtsc() < end {
        cpu::wait_for_interrupt();
    }
}

fn register(table: u64, entries: u64) -> i32 {
    hv::call(Request::SetStateTable {
        table: GuestPhys(table),
        entries,
    })
    .map_or(i32::MIN, hv::wire)
}

/// Sends `SET_STABLE` for each frame (one `HINT_BATCH` per 32); the
/// number that answered `DISCARDED`, or `None` if one was refused.
fn set_stable(pfns: &[u64]) -> Option<usize> {
    let mut lost = 0;
    let mut ok = true;
    for chunk in pfns.chunks(32) {
        phys::hints::now_many(HintOp::SetStable, chunk, |_, r| match r {
            Ok(HintResult::Discarded) => lost += 1,
            Ok(HintResult::Ok) => {}
            _ => ok = false,
        });
    }
    ok.then_some(lost)
}

/// What the program saw.
#[derive(Default)]
struct Tally {
    errors: u64,
    /// Frames the table said the host dropped.
    dropped: u64,
    /// Frames the table said intact, found intact.
    intact: u64,
    /// Kernel-mode touches of frames whose entry said dropped or armed.
    kernel_touches: u64,
}

impl Tally {
    fn fail(&mut self, what: core::fmt::Arguments<'_>) {
        if self.errors < 20 {
            println!("abi-outsider: {what}");
        }
        self.errors += 1;
    }

    fn call(&mut self, what: &str, got: i32, want: CallResult) {
        if got != i32::from(want) {
            self.fail(format_args!("{what}: got {got}, expected {want:?}"));
        }
    }

    /// The frame holds what the table said: zeroes if it was dropped,
    /// its pattern if not.
    ///
    /// # Safety
    ///
    /// As for [`fill`].
    unsafe fn contents(&mut self, what: &str, pa: u64, discarded: bool) {
        let want = if discarded {
            Contents::Zeroes
        } else {
            Contents::Pattern
        };
        // SAFETY: the caller's contract, see # Safety.
        let got = unsafe { contents(pa) };
        if got == want {
            if discarded {
                self.dropped += 1;
            } else {
                self.intact += 1;
            }
        } else {
            self.fail(format_args!(
                "{what}: frame {pa:#x} told {}, holds {got:?}",
                if discarded { "discarded" } else { "intact" }
            ));
        }
    }
}

/// Runs the program; the guest's exit status.
pub fn run(tsc_khz: u32) -> u32 {
    let khz = u64::from(tsc_khz.max(1));
    let offered =
        hv::Hypervisor::detect().is_some_and(|h| h.features & features::SHARED_STATES != 0);
    if !offered || phys::hints::shared() {
        println!("abi-outsider: needs the shared table offered and hints=batched");
        return guest::BAD_COMMAND_LINE;
    }
    let entries = phys::allocator::max_pfn();
    let pages = entries.div_ceil(PAGE_SIZE);
    let mut t = Tally::default();
    // Odd tables first: each is refused and changes nothing.
    t.call(
        "table in the legacy area (0xa0000)",
        register(0xa_0000, entries),
        CallResult::BadBlock,
    );
    t.call(
        "table straddling the end of low RAM (0x9f000)",
        register(0x9_f000, entries),
        CallResult::BadBlock,
    );
    t.call(
        "wrong entry count (checked before the place)",
        register(0xa_0000, entries + 1),
        CallResult::BadArgument,
    );
    let Some(table) = phys::allocator::alloc_contiguous(pages) else {
        return guest::BAD_MACHINE;
    };
    t.call(
        "misaligned table",
        register(table + 8, entries),
        CallResult::BadBlock,
    );
    if !phys::allocator::fresh_frames_are_zero() {
        // SAFETY: `table` is the `pages` contiguous frames just allocated,
        // ours for good (never freed), not yet registered with the VMM.
        unsafe { direct_map::zero(table, (pages * PAGE_SIZE) as usize) };
    }
    t.call("the table", register(table, entries), CallResult::Ok);
    t.call(
        "a second table",
        register(table, entries),
        CallResult::BadArgument,
    );
    if t.errors > 0 {
        println!("result: program=abi-outsider errors={}", t.errors);
        return guest::FAILURE;
    }
    let entry = |pfn: u64| -> &'static AtomicU8 {
        // SAFETY: the table's `entries` bytes are frames this program took
        // for good (so `'static` holds) and shares with the VMM for this
        // purpose; this closure is only called with the frame numbers of
        // `frames` below, RAM, so `pfn < entries`; from here on, the
        // kernel accesses the entries only atomically, through it.
        unsafe { direct_map::atomic_u8(table + pfn) }
    };

    let mut frames = [0u64; FRAMES];
    for f in frames.iter_mut() {
        let Some(pa) = phys::pages::alloc_zeroed_frame() else {
            return guest::BAD_MACHINE;
        };
        *f = pa;
    }
    let pfns = frames.map(|pa| pa / PAGE_SIZE);
    if set_stable(&pfns).is_none() {
        t.fail(format_args!("SET_STABLE of fresh frames refused"));
    }
    for &pa in &frames {
        // SAFETY: `pa` is one of `frames`, allocated above and held.
        unsafe { fill(pa) };
        // Documented: leaving stable is a plain store (keeping ARMED).
        st::guest_release(entry(pa / PAGE_SIZE), PageState::Volatile);
    }
    // Let the host take them.
    let dropped_now = || {
        pfns.iter()
            .filter(|&&p| entry(p).load(Ordering::Acquire) & DISCARDED != 0)
            .count()
    };
    let start = cpu::rdtsc();
    while dropped_now() < FRAMES && cpu::rdtsc() - start < WAIT_MS * khz {
        sleep_ms(50, khz);
    }
    let seen_dropped = dropped_now();

    // A: a kernel-mode touch of a (probably) dropped volatile frame, then
    // the documented compare-and-swap to stable. The touch must leave the
    // drop on the entry: the CAS reports it, the frame reads as zeroes.
    for &pa in &frames[..GROUP] {
        let e = entry(pa / PAGE_SIZE);
        let before = e.load(Ordering::Acquire);
        t.kernel_touches += u64::from(before & DISCARDED != 0);
        // SAFETY: `pa` is one of `frames`, allocated above and held.
        let _ = unsafe { kernel_touch(pa) };
        let taken = st::guest_make_stable(e);
        if before & DISCARDED != 0 && !taken.discarded {
            t.fail(format_args!(
                "A: frame {pa:#x} was {before:#x} before a kernel touch, then {:#x}: told intact",
                e.load(Ordering::Acquire)
            ));
        }
        // SAFETY: `pa` is one of `frames`, allocated above and held.
        unsafe { t.contents("A", pa, taken.discarded) };
    }
    // B: stable by the CAS, then kernel reads of the (armed) frame before
    // SET_STABLE, then SET_STABLE: the drop was reported once, by the CAS.
    for &pa in &frames[GROUP..2 * GROUP] {
        let pfn = pa / PAGE_SIZE;
        let e = entry(pfn);
        let taken = st::guest_make_stable(e);
        t.kernel_touches += u64::from(taken.armed);
        // SAFETY: `pa` is one of `frames`, allocated above and held.
        unsafe { t.contents("B", pa, taken.discarded) };
        let after = e.load(Ordering::Acquire);
        if st::state_of(after) != PageState::Stable || after & (DISCARDED | BUSY) != 0 {
            t.fail(format_args!(
                "B: frame {pa:#x} entry {after:#x} after a kernel read"
            ));
        }
        match set_stable(&[pfn]) {
            Some(0) => {}
            r => t.fail(format_args!(
                "B: SET_STABLE of {pa:#x} after the CAS: {r:?}"
            )),
        }
        let e = e.load(Ordering::Acquire);
        if e != 0 {
            t.fail(format_args!(
                "B: frame {pa:#x} entry {e:#x} after SET_STABLE"
            ));
        }
    }
    // C: odd orders: volatile to unused to volatile by CAS (the marks
    // travel), then SET_STABLE, which reports the drop.
    for &pa in &frames[2 * GROUP..3 * GROUP] {
        let pfn = pa / PAGE_SIZE;
        let e = entry(pfn);
        st::guest_release(e, PageState::Unused);
        st::guest_release(e, PageState::Volatile);
        let marked = e.load(Ordering::Acquire) & DISCARDED != 0;
        match set_stable(&[pfn]) {
            Some(n) if n <= 1 => {
                if marked && n == 0 {
                    t.fail(format_args!(
                        "C: frame {pa:#x} was dropped, SET_STABLE said OK"
                    ));
                }
                // SAFETY: `pa` is one of `frames`, allocated above and held.
                unsafe { t.contents("C", pa, n == 1) };
            }
            r => t.fail(format_args!("C: SET_STABLE of {pa:#x}: {r:?}")),
        }
        let v = e.load(Ordering::Acquire);
        if v != 0 {
            t.fail(format_args!(
                "C: frame {pa:#x} entry {v:#x} after SET_STABLE"
            ));
        }
    }
    // D: the documented path: the CAS, SET_STABLE for an armed frame
    // before it is used again, then the contents.
    for &pa in &frames[3 * GROUP..] {
        let pfn = pa / PAGE_SIZE;
        let taken = st::guest_make_stable(entry(pfn));
        if taken.armed && set_stable(&[pfn]) != Some(0) {
            t.fail(format_args!("D: SET_STABLE of {pa:#x} after the CAS"));
        }
        if entry(pfn).load(Ordering::Acquire) & ARMED != 0 {
            t.fail(format_args!(
                "D: frame {pa:#x} still armed after SET_STABLE"
            ));
        }
        // SAFETY: `pa` is one of `frames`, allocated above and held.
        unsafe { t.contents("D", pa, taken.discarded) };
    }
    for &pa in &frames {
        phys::pages::free_frame(pa);
    }
    println!(
        "result: program=abi-outsider frames={FRAMES} seen_dropped={seen_dropped} dropped={} intact={} kernel_touches={} kernel_ve={} errors={}",
        t.dropped,
        t.intact,
        t.kernel_touches,
        phys::discard::KERNEL_FAULTS.load(Ordering::Relaxed),
        t.errors
    );
    if t.errors == 0 {
        guest::SUCCESS
    } else {
        guest::FAILURE
    }
}
