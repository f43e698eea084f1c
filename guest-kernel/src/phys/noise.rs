//! `hcnoise=N`: a guest that sends garbage hypercalls beside its real
//! work, for the VMM's soak (`scripts/soak.sh --noise`). Every tenth timer
//! tick (about every 10 ms), each CPU sends N random hypercalls: unknown operations, blocks that are
//! misaligned or outside RAM, doorbell writes of the wrong width, hint
//! batches full of random entries, handshakes with a wrong ABI version,
//! and fault-info and state-table registrations pointing outside RAM.
//!
//! The VMM must answer each (or ignore a doorbell it cannot read), keep
//! running, and keep every workload's data intact. So the noise must never
//! name a frame anything else uses: every frame it names is one of a
//! block set aside here (never used by anything, so the host may take
//! it), or lies past the end of any possible RAM (2^40 and up); every
//! address it registers lies past RAM too. Each CPU fills a batch page of
//! its own (`guest_logic::noise_plan`): the VMM reads a batch while the other
//! CPUs go on sending theirs, and an entry it read half rewritten by
//! another CPU (the frame of one entry with the count of another) could
//! name frames in use. It counts what it sent and how many answers were
//! errors; `guest: hcnoise: ...` at exit says so.
//!
//! Filling the batch pages is part of its job: it writes, through the
//! direct map, only the batch page of the CPU it runs on, one of the
//! frames [`start`] set aside for good (its two unsafe blocks).
//!
//! It runs in the timer interrupt, whose period is about 1 ms, in kernel
//! code that the development machines emulate at about 1 us an
//! instruction: a batch is filled with at most [`FILL`] entries, so that
//! one tick's noise stays well under a period. (Filling all 255 entries
//! every tick, on one batch page for every CPU, once triple-faulted the
//! guest: most likely the mixed entries above, which the longer fills made
//! far likelier.)

use core::mem::{offset_of, size_of};
use core::sync::atomic::{AtomicU64, Ordering};

use guest_logic::noise_plan::{NoiseBlock, PAST_RAM};
use pagehint_abi::hypercall::{op, result, HintBatch, HintEntry, HypercallBlock, HINT_BATCH_MAX};
use pagehint_abi::ports::HYPERCALL_PORT;
use pagehint_abi::{ABI_VERSION, PAGE_SIZE};

use crate::arch::cpu::{outb, outl};
use crate::arch::direct_map;
use crate::hv;
use crate::percpu;

/// Entries written into the batch page per batch sent.
const FILL: usize = 16;
/// Ticks between two bursts of noise.
const EVERY_TICKS: u64 = 10;

/// Hypercalls per tick per CPU (0: off).
static PER_TICK: AtomicU64 = AtomicU64::new(0);
/// First set-aside frame; the CPUs' batch pages follow the set-aside
/// frames (`NoiseBlock`).
static FIRST: AtomicU64 = AtomicU64::new(0);
/// CPUs with a batch page.
static CPUS: AtomicU64 = AtomicU64::new(0);
/// The xorshift state every CPU advances (races only make it more random).
static SEED: AtomicU64 = AtomicU64::new(0x2545_f491_4f6c_dd1d);
/// Hypercalls sent, and how many of them the VMM answered with an error.
pub static SENT: AtomicU64 = AtomicU64::new(0);
pub static REFUSED: AtomicU64 = AtomicU64::new(0);
/// Doorbell writes of the wrong width (no answer to read).
pub static ODD_WRITES: AtomicU64 = AtomicU64::new(0);

/// Sets aside the frames (and a batch page for each CPU the machine
/// describes) and starts sending `per_tick` garbage hypercalls a tick on
/// every CPU. False when there is no hypercall port or no memory. Call
/// before the other CPUs run.
pub fn start(per_tick: u64) -> bool {
    if per_tick == 0 || !hv::present() {
        return false;
    }
    let cpus = crate::arch::cpu::cpu_count() as u64;
    let Some(pa) = super::allocator::alloc_contiguous(NoiseBlock::frames(cpus)) else {
        return false;
    };
    FIRST.store(pa / PAGE_SIZE, Ordering::Relaxed);
    CPUS.store(cpus, Ordering::Relaxed);
    PER_TICK.store(per_tick, Ordering::Release);
    true
}

fn next() -> u64 {
    super::scribble::xorshift(&SEED)
}

/// An address past RAM, or a misaligned one, for registrations and
/// blocks.
fn bad_address() -> u64 {
    let r = next();
    match r % 3 {
        0 => PAST_RAM << 12 | (r >> 16) << 12,
        1 => (PAST_RAM << 12) + (r >> 40) * 64 + 8, // past RAM and misaligned
        _ => u64::MAX - (r >> 52),
    }
}

/// One tick's noise (from the timer interrupt; `ticks` is this CPU's
/// tick count).
pub fn tick(ticks: u64) {
    let n = PER_TICK.load(Ordering::Acquire);
    if n == 0 || !ticks.is_multiple_of(EVERY_TICKS) {
        return;
    }
    let block = NoiseBlock {
        first: FIRST.load(Ordering::Relaxed),
        cpus: CPUS.load(Ordering::Relaxed),
    };
    // This CPU's own batch page: no other CPU writes it.
    let Some(page) = block.batch_page(u64::from(percpu::this().index.get())) else {
        return;
    };
    for _ in 0..n {
        send_one(&block, page);
    }
}

fn send_one(block: &NoiseBlock, page: u64) {
    let r = next();
    let mut call = HypercallBlock::default();
    match r % 8 {
        0 => {
            // An operation no ABI version defines.
            call.op = 5 + (r >> 8) as u32 % 1000;
            call.args = [next(), next(), next(), next(), next(), next(), next()];
        }
        1 | 2 => {
            call.op = op::HINT_BATCH;
            call.args[0] = page * PAGE_SIZE;
            call.args[1] = (r >> 8) % (HINT_BATCH_MAX as u64 + 40);
            fill_batch(block, page, call.args[1]);
        }
        3 => {
            call.op = op::HINT_BATCH;
            call.args[0] = bad_address();
            call.args[1] = (r >> 8) % 300;
        }
        4 => {
            call.op = op::SET_FAULT_INFO;
            call.args[0] = bad_address();
        }
        5 => {
            call.op = op::SET_STATE_TABLE;
            call.args[0] = bad_address();
            call.args[1] = next();
        }
        6 => {
            call.op = op::HELLO;
            let v = (r >> 8) as u32;
            call.args[0] = u64::from(if v == ABI_VERSION { v + 1 } else { v });
            call.args[1] = next();
        }
        _ => {
            // The doorbell written a byte at a time, or pointed at an
            // address no block can be at.
            if r & 0x100 == 0 {
                outb(HYPERCALL_PORT, (r >> 16) as u8);
                ODD_WRITES.fetch_add(1, Ordering::Relaxed);
            } else {
                outl(HYPERCALL_PORT, ((r >> 16) as u32) | 0x3f);
                ODD_WRITES.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
    }
    if let Some(code) = hv::hypercall(&mut call) {
        SENT.fetch_add(1, Ordering::Relaxed);
        if code < result::OK {
            REFUSED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Fills the first entries of this CPU's batch page `page` (up to
/// `asked`, at most [`FILL`]) with random entries naming only set-aside
/// frames or frames past RAM, with random operations; the header gets a
/// random count. Entries further on keep what this CPU's earlier batches
/// left there, which names the same frames (or nothing: zeroes are an
/// unknown operation).
fn fill_batch(block: &NoiseBlock, page: u64, asked: u64) {
    // The page is this CPU's own batch page, set aside for the noise alone
    // and written only here, with interrupts off (the timer interrupt), so
    // no other writer mixes its entries.
    let batch = page * PAGE_SIZE;
    let entries = batch + offset_of!(HintBatch, entries) as u64;
    for i in 0..(asked as usize).min(FILL) {
        let (pfn, count) = block.target(next());
        let r = next();
        // SAFETY: `page` comes (through `send_one`, this module's only
        // caller) from `NoiseBlock::batch_page` for this CPU: a frame
        // `start` took from the allocator for good, which no hint names
        // (targets stay in the set-aside frames before it or past RAM)
        // and no Rust reference points into. Entry `i` < FILL <
        // HINT_BATCH_MAX lies inside it, aligned.
        unsafe {
            direct_map::write(
                entries + (i * size_of::<HintEntry>()) as u64,
                HintEntry {
                    pfn,
                    count,
                    op: (r % 8) as u16,
                    result: (r >> 16) as i16,
                },
            )
        };
    }
    // SAFETY: as above: the count field of this CPU's own batch page.
    unsafe {
        direct_map::write::<u32>(
            batch + offset_of!(HintBatch, count) as u64,
            next() as u32 % 300,
        )
    };
}
