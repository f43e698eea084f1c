//! `hint-cost`: how many guest instructions the kernel's hint path costs,
//! counted exactly by the VMM (`vmm run --count-instructions`, which
//! single-steps the vCPU between an `out` and an `in` on
//! `STEP_COUNTER_PORT`). Instruction counts are the same on this machine's
//! emulated KVM and on hardware, unlike times.
//!
//! Measured with interrupts off, each region once after a warm-up:
//! making [`CHANGES`] frames volatile (with the commit, so batched mode
//! pays its exit), making them stable again (`now_many`, as a cache hit
//! on aged pages does), and, with a disk, one page-cache hit on a stable
//! page and one on an aged (volatile) page. An empty region is the
//! baseline subtracted from each. It must never leave a frame in a state
//! other than the one it found it in, nor run without the counter
//! (the figures would be meaningless): it then says so and fails.

use guest_logic::frame_table::flag;
use pagehint_abi::exit::guest;
use pagehint_abi::hypercall::HintOp;
use pagehint_abi::ports::STEP_COUNTER_PORT;
use pagehint_abi::PAGE_SIZE;

use crate::arch::cpu;
use crate::console::println;
use crate::mm;
use crate::phys;

/// State changes per region.
const CHANGES: usize = 16;

/// Instructions `f` took, or `None` without the counter.
fn counted(f: impl FnOnce()) -> Option<u64> {
    cpu::outl(STEP_COUNTER_PORT, 0);
    f();
    let n = cpu::inl(STEP_COUNTER_PORT);
    (n != u32::MAX).then_some(u64::from(n))
}

/// One page-cache hit on page 0 of file 0, reference dropped again.
fn cache_hit() {
    mm::with(|st| {
        if let Ok(pfn) = st.get_file_page(0, 0) {
            st.frames.put(pfn);
        }
    });
}

/// Makes page 0 of file 0 volatile as the cache's ageing would.
fn age_page(pfn: u64) {
    mm::with(|st| {
        st.frames.set_flags(pfn, flag::VOLATILE);
        st.volatile += 1;
    });
    phys::hints::queue(HintOp::MakeVolatile, pfn);
    phys::hints::commit();
}

/// The regions, with interrupts off; `None` without the counter.
fn measure(frames: &[u64; CHANGES]) -> Option<[u64; 5]> {
    let base = counted(|| {})?;
    let volatile = || {
        for &p in frames {
            phys::hints::queue(HintOp::MakeVolatile, p);
        }
        phys::hints::commit();
    };
    // The path a cache hit on an aged page takes: one page at a time
    // through the table, else one batch for all (with its exit).
    let stable = || {
        if phys::hints::shared() {
            for &p in frames {
                core::hint::black_box(phys::hints::make_stable_shared(p));
            }
        } else {
            phys::hints::now_many(HintOp::MakeStable, frames, |_, _| {});
        }
    };
    // Warm-up (first touches of the code's pages and the table's).
    volatile();
    stable();
    let v = counted(volatile)?;
    let s = counted(stable)?;
    let (mut hit_stable, mut hit_aged) = (0, 0);
    let cached = mm::with(|st| st.get_file_page(0, 0).ok());
    if let Some(pfn) = cached {
        mm::with(|st| st.frames.put(pfn));
        cache_hit();
        hit_stable = counted(cache_hit)?;
        age_page(pfn);
        hit_aged = counted(cache_hit)?;
    }
    Some([base, v, s, hit_stable, hit_aged])
}

/// Runs the measurement; the program's status.
pub fn run() -> u32 {
    if !phys::hints::enabled() {
        println!("hint-cost: hinting is off; nothing to measure");
        return guest::FAILURE;
    }
    let mut frames = [0u64; CHANGES];
    for f in &mut frames {
        match phys::pages::alloc_frame_for_overwrite() {
            Some(pa) => *f = pa / PAGE_SIZE,
            None => return guest::BAD_MACHINE,
        }
    }
    let irq = cpu::interrupts_off();
    let r = measure(&frames);
    if irq {
        cpu::interrupts_on();
    }
    for &p in &frames {
        phys::pages::free_frame(p * PAGE_SIZE);
    }
    let Some([base, v, s, hit_stable, hit_aged]) = r else {
        println!("hint-cost: no instruction counter (run the VMM with --count-instructions)");
        return guest::FAILURE;
    };
    let per = |x: u64| x.saturating_sub(base) as f64 / CHANGES as f64;
    let hits = |x: u64| x.saturating_sub(base);
    let mode = if phys::hints::shared() {
        "shared"
    } else {
        "hypercalls"
    };
    println!(
        "result: program=hint-cost mode={mode} changes={CHANGES} baseline={base} volatile_per_change={:.1} stable_per_change={:.1} hit_stable={} hit_aged={} aged_extra={} errors=0",
        per(v),
        per(s),
        hits(hit_stable),
        hits(hit_aged),
        hits(hit_aged) as i64 - hits(hit_stable) as i64
    );
    guest::SUCCESS
}
