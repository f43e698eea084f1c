//! `scribble=N`: a deliberately misbehaving guest, for the VMM's stress
//! tests. Every timer tick, each CPU writes N random bytes into entries
//! of the shared page-state table that no workload uses: those of a block
//! of frames set aside here (never used by anything), and those of the
//! table's own frames. The VMM must survive it, never drop the table, and
//! keep every workload's data intact; the set-aside frames may lose their
//! (meaningless) contents.
//!
//! It must never write an entry of a frame anything else in the kernel
//! uses, and never run without a shared table.

use core::sync::atomic::{AtomicU64, Ordering};

use pagehint_abi::PAGE_SIZE;

use super::hints;

/// Frames set aside for scribbling.
const FRAMES: u64 = 64;

/// Entries written per tick per CPU (0: off).
static PER_TICK: AtomicU64 = AtomicU64::new(0);
/// First set-aside frame.
static FIRST: AtomicU64 = AtomicU64::new(0);
/// The xorshift state every CPU advances.
static SEED: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
/// Entries written so far.
pub static WRITTEN: AtomicU64 = AtomicU64::new(0);

/// Sets aside the frames and starts scribbling `per_tick` entries a tick.
/// False without a shared table or frames.
pub fn start(per_tick: u64) -> bool {
    if per_tick == 0 || !hints::shared() {
        return false;
    }
    let Some(pa) = super::allocator::alloc_contiguous(FRAMES) else {
        return false;
    };
    FIRST.store(pa / PAGE_SIZE, Ordering::Relaxed);
    PER_TICK.store(per_tick, Ordering::Release);
    true
}

fn next() -> u64 {
    xorshift(&SEED)
}

/// Advances the xorshift64 state `seed` (shared by every CPU: a race only
/// makes the garbage more random) and returns the new value. The noise
/// (`phys::noise`) draws from it too.
pub(super) fn xorshift(seed: &AtomicU64) -> u64 {
    let mut x = seed.load(Ordering::Relaxed);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    seed.store(x, Ordering::Relaxed);
    x
}

/// One tick's scribbling (from the timer interrupt).
pub fn tick() {
    let n = PER_TICK.load(Ordering::Relaxed);
    if n == 0 {
        return;
    }
    let own = hints::table_frames();
    let first = FIRST.load(Ordering::Relaxed);
    for _ in 0..n {
        let r = next();
        // Half the time a set-aside frame, half the time a table frame.
        let pfn = if r & 1 == 0 || own.is_empty() {
            first + (r >> 8) % FRAMES
        } else {
            own.start + (r >> 8) % (own.end - own.start)
        };
        hints::scribble(pfn, (r >> 32) as u8);
        WRITTEN.fetch_add(1, Ordering::Relaxed);
    }
}
