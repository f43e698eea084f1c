//! Built-in kernel diagnostics, picked by the command line like user
//! programs: deliberate faults that show the VMM's and the kernel's error
//! paths, and measurements of what kernel operations cost on this host.
//!
//! Each either ends the machine itself or returns the exit status; none is
//! reachable from user programs.
//!
//! `kbench` and `bad-hints` touch physical memory through the direct map
//! (unsafe, each block saying why): only frames they allocate themselves
//! and never free or share, so nothing else can name them.

use pagehint_abi::exit::guest;
use pagehint_abi::hypercall::{
    CallResult, HintBatch, HintEntry, HintOp, HypercallBlock, Request, HINT_BATCH_MAX,
};
use pagehint_abi::{GuestPhys, Pfn, ABI_VERSION, PAGE_SIZE};

use core::mem::offset_of;
use core::sync::atomic::Ordering;

use crate::arch::{apic, cpu, direct_map, idt, vectors};
use crate::console::println;
use crate::phys;
use crate::phys::discard;
use crate::{hv, mm, percpu, process, sched, trap};

mod hint_cost;
mod outsider;

/// A port that neither this VMM nor QEMU's microvm claims.
const UNCLAIMED_PORT: u16 = 0x0700;

/// Runs diagnostic `name`; `None` if it is not one (a user program then).
pub fn run(name: &str, args: &str, tsc_khz: u32) -> Option<u32> {
    match name {
        "crash-kernel" => {
            println!("guest: crash-kernel: reading a non-canonical address");
            let v = cpu::read_non_canonical();
            println!("guest: survived {v}");
            Some(guest::FAILURE)
        }
        "triple-fault" => {
            println!("guest: triple-fault: loading an empty IDT and waiting for the timer");
            idt::load_empty();
            // With no IDT, the next timer interrupt escalates to a triple
            // fault, which the VMM must report. (An interrupt, not an
            // exception raised by an instruction: the development machines'
            // instruction emulator reports the latter as an emulation
            // failure instead.)
            loop {
                cpu::wait_for_interrupt();
            }
        }
        "portio" => {
            // N writes to a port no device claims: the benchmark times runs
            // with two values of N to get the cost of one exit and back.
            let n: u64 = args.trim().parse().unwrap_or(0);
            for _ in 0..n {
                cpu::outb(UNCLAIMED_PORT, 0);
            }
            println!("guest: portio: {n} writes to port {UNCLAIMED_PORT:#x}");
            Some(guest::SUCCESS)
        }
        "kbench" => {
            kbench(tsc_khz);
            Some(guest::SUCCESS)
        }
        "bad-hints" => Some(bad_hints()),
        "hint-cost" => Some(hint_cost::run()),
        "discard-list-test" => Some(discard_list_test(tsc_khz)),
        "abi-outsider" => Some(outsider::run(tsc_khz)),
        _ => None,
    }
}

/// `kbench`: what basic kernel operations cost here (emulated on the
/// development machines), in microseconds per operation.
fn kbench(tsc_khz: u32) {
    let khz = tsc_khz.max(1) as u64;
    let us = |c: u64, n: u64| c * 1000 / khz / n.max(1);
    let n = 200u64;
    let (Some(page_a), Some(page_b)) = (
        phys::pages::alloc_zeroed_frame(),
        phys::pages::alloc_zeroed_frame(),
    ) else {
        println!("kbench: no memory for two frames");
        return;
    };
    let t = cpu::rdtsc();
    for i in 0..n {
        core::hint::black_box(i);
    }
    let empty = cpu::rdtsc() - t;
    let t = cpu::rdtsc();
    for _ in 0..n {
        // SAFETY: `page_a` and `page_b` are two distinct frames allocated
        // above and never freed or shared, so they do not overlap and no
        // reference points into them.
        unsafe { direct_map::copy(page_a, page_b, 4096) };
        core::hint::black_box(page_b);
    }
    let copy = cpu::rdtsc() - t;
    let t = cpu::rdtsc();
    for _ in 0..n {
        // SAFETY: `page_b` is the frame allocated above, ours alone.
        unsafe { direct_map::zero(page_b, 4096) };
        core::hint::black_box(page_b);
    }
    let zero = cpu::rdtsc() - t;
    let t = cpu::rdtsc();
    for _ in 0..n {
        core::hint::black_box(mm::with(|st| st.frames.lookup(1, 5)));
    }
    let lookup = cpu::rdtsc() - t;
    println!(
        "kbench: loop iteration {} us, 4 KiB copy {} us, 4 KiB zero {} us, locked cache lookup {} us",
        us(empty * 1000, n) as f64 / 1000.0,
        us(copy, n),
        us(zero, n),
        us(lookup, n)
    );
}

/// `bad-hints`: sends malformed hypercalls and checks that each is refused
/// with the right code while the VMM keeps running.
fn bad_hints() -> u32 {
    if !phys::hints::enabled() {
        println!("bad-hints: hinting is off; nothing to test");
        return guest::FAILURE;
    }
    let Some(page) = phys::pages::alloc_zeroed_frame() else {
        return guest::BAD_MACHINE;
    };
    let Some(victim) = phys::pages::alloc_zeroed_frame() else {
        return guest::BAD_MACHINE;
    };
    let wire = |r: Option<Result<CallResult, i32>>| r.map_or(i32::MIN, hv::wire);
    let send = |addr: u64, count: u64| {
        wire(hv::call(Request::HintBatch {
            batch: GuestPhys(addr),
            count,
        }))
    };
    let entry = |e: HintEntry| {
        let first = page + offset_of!(HintBatch, entries) as u64;
        // SAFETY: `page` is the frame allocated above for this test alone,
        // laid out as a `HintBatch` (page-aligned, so its fields are
        // aligned); the count and the first entry lie inside it.
        unsafe {
            direct_map::write::<u32>(page + offset_of!(HintBatch, count) as u64, 1);
            direct_map::write::<HintEntry>(first, e);
        }
        let r = send(page, 1);
        // SAFETY: as above; the VMM wrote the result during the call,
        // which has returned.
        let result =
            unsafe { direct_map::read::<i16>(first + offset_of!(HintEntry, result) as u64) };
        (r, result as i32)
    };
    let ram_end_pfn = Pfn(1u64 << 40);
    let vpfn = GuestPhys(victim).pfn();
    let checks: [(&str, i32, CallResult); 10] = [
        ("misaligned batch", send(page + 8, 1), CallResult::BadBlock),
        (
            "batch outside RAM",
            send(0xffff_f000, 1),
            CallResult::BadBlock,
        ),
        ("zero entries", send(page, 0), CallResult::BadArgument),
        (
            "too many entries",
            send(page, HINT_BATCH_MAX as u64 + 1),
            CallResult::BadArgument,
        ),
        (
            "frame outside RAM",
            entry(HintEntry::new(HintOp::SetUnused, ram_end_pfn, 1)).1,
            CallResult::BadArgument,
        ),
        (
            "unknown hint",
            // A hint number no `HintOp` has, on purpose.
            entry(HintEntry {
                op: 99,
                ..HintEntry::new(HintOp::SetUnused, vpfn, 1)
            })
            .1,
            CallResult::UnknownOp,
        ),
        (
            "set unused",
            entry(HintEntry::new(HintOp::SetUnused, vpfn, 1)).1,
            CallResult::Ok,
        ),
        (
            "volatile while unused",
            entry(HintEntry::new(HintOp::MakeVolatile, vpfn, 1)).1,
            CallResult::IllegalTransition,
        ),
        (
            "unknown hypercall",
            {
                // An operation no `Request` has, on purpose.
                let mut b = HypercallBlock {
                    op: 77,
                    result: 0,
                    args: [0; 7],
                };
                hv::hypercall(&mut b).unwrap_or(i32::MIN)
            },
            CallResult::UnknownOp,
        ),
        (
            "wrong ABI version",
            wire(hv::call(Request::Hello {
                version: u64::from(ABI_VERSION) + 1,
                cpu: 0,
            })),
            CallResult::BadVersion,
        ),
    ];
    // Put the victim back the way the allocator expects it: stable.
    let restore = entry(HintEntry::new(HintOp::SetStable, vpfn, 1)).1;
    let mut ok = restore >= 0;
    for (what, got, want) in checks.into_iter().chain(state_table_checks(page)) {
        let want = i32::from(want);
        if got != want {
            println!("bad-hints: {what}: got {got}, expected {want}");
            ok = false;
        }
    }
    phys::pages::free_frame(victim);
    phys::pages::free_frame(page);
    if ok {
        println!("bad-hints: all refused as expected");
        guest::SUCCESS
    } else {
        guest::FAILURE
    }
}

/// `SET_STATE_TABLE` refusals `bad-hints` can check without changing how
/// this guest hints: a second registration, and a misaligned one, once a
/// table is shared; any registration where none is offered. (A guest that
/// was offered a table and chose hypercalls would switch on a valid one.)
fn state_table_checks(page: u64) -> impl Iterator<Item = (&'static str, i32, CallResult)> {
    let offered = hv::Hypervisor::detect()
        .is_some_and(|h| h.features & pagehint_abi::cpuid::features::SHARED_STATES != 0);
    let register = |table: u64| {
        hv::call(Request::SetStateTable {
            table: GuestPhys(table),
            entries: phys::allocator::max_pfn(),
        })
        .map_or(i32::MIN, hv::wire)
    };
    let checks: [(&'static str, i32, CallResult); 2] = if phys::hints::shared() {
        [
            ("state table again", register(page), CallResult::BadArgument),
            (
                "misaligned state table",
                register(page + 8),
                CallResult::BadBlock,
            ),
        ]
    } else if !offered {
        [
            (
                "state table not offered",
                register(page),
                CallResult::HintsDisabled,
            ),
            (
                "state table not offered",
                register(page + 8),
                CallResult::HintsDisabled,
            ),
        ]
    } else {
        [("", 0, CallResult::Ok), ("", 0, CallResult::Ok)]
    };
    checks.into_iter().filter(|c| !c.0.is_empty())
}

/// Sleeps this CPU for about `ms` with interrupts enabled (a quiescent
/// state for the discard list).
fn rest(ms: u64, khz: u64) {
    let end = cpu::rdtsc() + ms * khz;
    discard::quiescent();
    while cpu::rdtsc() < end {
        cpu::wait_for_interrupt();
    }
}

/// Rests and drains the discard list up to `tries` times, until none of
/// `listed` is on it; whether they all left.
fn drained(listed: &[u64], tries: u32, khz: u64) -> bool {
    for _ in 0..tries {
        rest(2, khz);
        discard::drain();
        if listed.iter().all(|&p| !discard::is_listed(p)) {
            return true;
        }
    }
    false
}

/// `discard-list-test`: frames on the discard list are not reused before
/// every CPU passed a quiescent state, while CPU 1 is busy in kernel code
/// with interrupts off, and then while it is busy in user mode.
fn discard_list_test(tsc_khz: u32) -> u32 {
    let khz = tsc_khz.max(1) as u64;
    if percpu::online() < 2 || tsc_khz == 0 {
        println!("discard-list: needs 2 CPUs and a known TSC frequency");
        return guest::BAD_MACHINE;
    }
    let mut ok = true;
    let take = |n: usize| -> alloc::vec::Vec<u64> {
        (0..n)
            .filter_map(|_| phys::pages::alloc_frame_for_overwrite())
            .map(|pa| pa / PAGE_SIZE)
            .collect()
    };
    // Phase A: CPU 1 spins with interrupts off for 300 ms.
    trap::SPIN_UNTIL.store(cpu::rdtsc() + 300 * khz, Ordering::Release);
    apic::send_ipi(percpu::get(1).apic_id.get(), vectors::SPIN_VECTOR);
    while !trap::SPINNING.load(Ordering::Acquire) {
        core::hint::spin_loop();
    }
    let listed = take(8);
    let cpu1_at_listing = percpu::get(1).quiescent.load(Ordering::Acquire);
    discard::list_for_test(listed.clone());
    // This CPU passes quiescent states; CPU 1 cannot.
    let mut reused = 0;
    while trap::SPINNING.load(Ordering::Acquire)
        && cpu::rdtsc() < trap::SPIN_UNTIL.load(Ordering::Acquire) - 50 * khz
    {
        rest(5, khz);
        discard::drain();
        // Nothing listed may come back from the allocator meanwhile.
        let probe = take(32);
        reused += probe.iter().filter(|p| listed.contains(p)).count();
        probe
            .iter()
            .for_each(|&p| phys::pages::free_frame(p * PAGE_SIZE));
    }
    let still = listed.iter().filter(|&&p| discard::is_listed(p)).count();
    println!("discard-list: phase A (cpu 1 busy, interrupts off): {still}/8 still listed, {reused} reused");
    ok &= still == 8 && reused == 0;
    // CPU 1 returns to idle: a quiescent state.
    while trap::SPINNING.load(Ordering::Acquire) {
        core::hint::spin_loop();
    }
    let released = drained(&listed, 100, khz);
    let cpu1_now = percpu::get(1).quiescent.load(Ordering::Acquire);
    println!("discard-list: after cpu 1 passed a quiescent state ({cpu1_at_listing} -> {cpu1_now}): released {released}");
    ok &= released && cpu1_now > cpu1_at_listing;
    // Phase B: CPU 1 busy in user mode (a CPU-bound program that never
    // idles); its timer ticks from user mode are its quiescent states.
    let Ok(elf) = guest_logic::elf::Elf::parse(crate::process::USER_ELF) else {
        return guest::BAD_MACHINE;
    };
    match process::create(&elf, "preempt 400", 0) {
        Ok(task) => sched::spawn(task, 1),
        Err(_) => return guest::BAD_MACHINE,
    }
    rest(50, khz);
    let listed = take(8);
    // Read CPU 1's count before the batch is stamped: the stamp is then at
    // least `at`, and a release proves the count moved past it.
    let at = percpu::get(1).quiescent.load(Ordering::Acquire);
    discard::list_for_test(listed.clone());
    let released = drained(&listed, 200, khz);
    let now = percpu::get(1).quiescent.load(Ordering::Acquire);
    println!("discard-list: phase B (cpu 1 busy in user mode): released {released} after its count went {at} -> {now}");
    ok &= released && now > at;
    println!("discard-list: {}", if ok { "ok" } else { "FAILED" });
    if ok {
        guest::SUCCESS
    } else {
        guest::FAILURE
    }
}
