//! The guest kernel: boots through PVH, brings up every CPU, and runs the
//! user program the command line names, one instance per CPU unless told
//! otherwise, under a preemptive scheduler.
//!
//! Kernel code is emulated (about 1 us per instruction) on the development
//! machines, so boot does no per-frame work and the kernel stays out of the
//! way of user programs, which run natively.
//!
//! Two unsafe blocks, both at boot: the command line is read in place
//! from the low memory the loader put it in, and the free-page-reporting
//! batch frame is handed to `phys::report` for good.

#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;

mod arch;
mod clock;
mod console;
mod diag;
mod drivers;
mod fs;
mod hv;
mod mm;
mod percpu;
mod phys;
mod process;
mod sched;
mod smp;
mod sync;
mod syscall;
mod task;
mod trap;

use core::sync::atomic::Ordering;

use arch::{apic, boot, cpu, direct_map, gdt, idt, vectors};
use console::println;
use guest_logic::cmdline;
use guest_logic::elf::Elf;
use pagehint_abi::boot::CMDLINE_MAX;
use pagehint_abi::cpuid::features;
use pagehint_abi::exit::guest;

/// Pages of each IST stack.
const IST_PAGES: u64 = 2;

fn fail(status: u32, what: core::fmt::Arguments) -> ! {
    println!("guest: fatal: {what}");
    hv::exit(status)
}

/// Sets up this CPU's tables, per-CPU data, LAPIC and timer.
fn init_cpu(index: usize) {
    let Some(ist) = phys::allocator::alloc_contiguous(IST_PAGES * 2) else {
        fail(
            guest::BAD_MACHINE,
            format_args!("no memory for cpu {index}'s IST stacks"),
        );
    };
    let ist = crate::arch::direct_map::phys_to_virt(ist);
    let size = IST_PAGES * pagehint_abi::PAGE_SIZE;
    gdt::init(index, [ist + size, ist + 2 * size]);
    idt::load();
    boot::load_kernel_pml4();
    percpu::init_this(index, apic::id());
    phys::hints::init_cpu();
    apic::enable(vectors::SPURIOUS_VECTOR);
    sched::init_cpu();
    vectors::start_timer();
    percpu::ONLINE.fetch_add(1, Ordering::AcqRel);
}

/// Reads the NUL-terminated command line at physical address `pa`.
fn read_cmdline(pa: u64) -> &'static str {
    if pa == 0 || pa >= pagehint_abi::boot::MMIO_HOLE_START {
        return "";
    }
    // SAFETY: the loader placed the command line in RAM below the MMIO
    // hole (checked), which the direct map covers; PVH loaders put it
    // below the kernel image (this VMM at CMDLINE_ADDR), where no
    // allocator hands out frames and nothing writes after boot, so the
    // `'static` slice (and the `str` parsed from it, kept for the whole
    // run) stays valid. At most CMDLINE_MAX bytes are read. Trusted, not
    // checked: that the loader did not put it above the kernel image.
    let bytes = unsafe { direct_map::bytes(pa, CMDLINE_MAX) };
    let len = bytes.iter().position(|&b| b == 0).unwrap_or(0);
    core::str::from_utf8(&bytes[..len]).unwrap_or("")
}

#[no_mangle]
extern "C" fn kmain_bsp(start_info: u32) -> ! {
    println!("guest: pagehint kernel booting");
    let (info, ranges, nranges) = match phys::allocator::read_start_info(start_info as u64) {
        Ok(r) => r,
        Err(e) => fail(
            guest::BAD_MACHINE,
            format_args!("bad PVH start info: {e:?}"),
        ),
    };
    let hv = hv::Hypervisor::detect();
    if hv.is_some() {
        // This VMM's guest RAM is fresh anonymous memory: zeroes.
        phys::allocator::trust_fresh_frames_are_zero();
    }
    let mem = match mm::init(&ranges[..nranges]) {
        Ok(m) => m,
        Err(e) => fail(guest::BAD_MACHINE, format_args!("memory: {e:?}")),
    };
    idt::build(vectors::SYSCALL_VECTOR);
    // The legacy 8259 PICs would deliver device lines (through LINT0) on
    // vectors that collide with CPU exceptions: mask them all; devices are
    // routed through the I/O APIC.
    cpu::outb(0x21, 0xff);
    cpu::outb(0xa1, 0xff);
    init_cpu(0);
    clock::init(hv.map_or(0, |h| h.tsc_khz));
    match hv {
        Some(h) => {
            if h.features & features::PAGE_HINTS != 0 {
                phys::hints::enable();
                if h.features & features::POTENTIALLY_VOLATILE != 0 {
                    phys::hints::enable_potentially_volatile();
                }
                if h.features & features::GUEST_AGES != 0 {
                    phys::hints::enable_guest_ages();
                }
            }
            phys::discard::init_cpu(h.features & features::DISCARD_FAULTS != 0);
            let r = hv::hello(0).map(hv::wire);
            println!(
                "guest: hypervisor PageHintVMM, ABI {}, hypercall port {:#x} (hello: {:?}), TSC {} kHz",
                h.abi_version, h.port, r, h.tsc_khz
            );
        }
        None => println!("guest: not under PageHintVMM; running without hypercalls"),
    }
    let line = read_cmdline(info.cmdline_paddr);
    let cmd = match cmdline::parse(line) {
        Ok(c) => c,
        Err(e) => fail(
            guest::BAD_COMMAND_LINE,
            format_args!("command line {line:?}: {e:?}"),
        ),
    };
    // Before the other CPUs run: the shared table must be registered
    // while only this CPU hints.
    match cmd.hints {
        cmdline::HintsOption::Shared => {
            phys::hints::set_mode(phys::hints::Mode::Batched);
            let offered = hv.is_some_and(|h| h.features & features::SHARED_STATES != 0);
            if offered && phys::hints::enabled() && phys::hints::share_table() {
                println!("guest: page states shared with the VMM (no hint exits)");
                if phys::scribble::start(u64::from(cmd.scribble)) {
                    println!(
                        "guest: scribbling {} shared-table entries a tick (a stress test)",
                        cmd.scribble
                    );
                }
            }
        }
        cmdline::HintsOption::Batched => phys::hints::set_mode(phys::hints::Mode::Batched),
        cmdline::HintsOption::Unbatched => phys::hints::set_mode(phys::hints::Mode::Unbatched),
        cmdline::HintsOption::Fpr => {
            phys::hints::set_mode(phys::hints::Mode::FreePageReporting);
            if hv.is_some() {
                // SAFETY: a frame fresh from the allocator (or 0: none),
                // handed over for good: never freed or named again here.
                unsafe {
                    phys::report::init(
                        phys::allocator::max_pfn(),
                        phys::allocator::alloc_contiguous(1).unwrap_or(0),
                    )
                };
            }
        }
    }
    if phys::noise::start(u64::from(cmd.hcnoise)) {
        println!(
            "guest: sending {} garbage hypercalls every 10 ticks on every cpu (a stress test)",
            cmd.hcnoise
        );
    }
    let wanted = cpu::cpu_count();
    let cpus = smp::start_aps(wanted, hv.map_or(0, |h| h.tsc_khz));
    println!(
        "guest: {} MiB RAM, {} free frames, heap {} KiB, {}/{} cpus online",
        mem.total_frames / 256,
        phys::allocator::free_frames(),
        mem.heap_bytes / 1024,
        cpus,
        wanted
    );
    if mem.high_frames > 0 {
        println!("guest: {} MiB of RAM above 4 GiB", mem.high_frames / 256);
    }
    if cpus < wanted {
        fail(
            guest::BAD_MACHINE,
            format_args!("only {cpus} of {wanted} cpus came up"),
        );
    }
    if let Some(dev) = cmd.virtio_mmio {
        match drivers::virtio_blk::init(dev.base, dev.irq, vectors::VIRTIO_BLK_VECTOR) {
            Ok(sectors) => match fs::mount() {
                Ok(files) => println!(
                    "guest: disk {} KiB at {:#x} irq {}, {} files",
                    sectors / 2,
                    dev.base,
                    dev.irq,
                    files
                ),
                Err(e) => println!("guest: disk present but not mountable: {e:?}"),
            },
            Err(e) => fail(
                guest::BAD_MACHINE,
                format_args!("virtio block device: {e:?}"),
            ),
        }
    }
    if let Some(status) = diag::run(cmd.program, cmd.args, hv.map_or(0, |h| h.tsc_khz)) {
        hv::exit(status);
    }
    let elf = match Elf::parse(process::USER_ELF) {
        Ok(e) => e,
        Err(e) => fail(
            guest::BAD_MACHINE,
            format_args!("user program image: {e:?}"),
        ),
    };
    let copies = cmd.copies.map_or(cpus, |c| c as usize);
    let mut args = alloc::string::String::from(cmd.program);
    if !cmd.args.is_empty() {
        args.push(' ');
        args.push_str(cmd.args);
    }
    // Every copy is built before any is queued, so they start together:
    // building one takes long enough in an emulated kernel that copies
    // queued one by one would run mostly apart (and a test of
    // preemption would see a copy alone on its CPU).
    let mut tasks = alloc::vec::Vec::with_capacity(copies);
    for i in 0..copies {
        match process::create(&elf, &args, i as u32) {
            Ok(task) => tasks.push(task),
            Err(e) => fail(
                guest::BAD_MACHINE,
                format_args!("starting {}: {e:?}", cmd.program),
            ),
        }
    }
    for (i, task) in tasks.into_iter().enumerate() {
        sched::spawn(task, i % cpus);
    }
    sched::idle_loop()
}

#[no_mangle]
extern "C" fn kmain_ap(index: u32) -> ! {
    init_cpu(index as usize);
    if let Some(h) = hv::Hypervisor::detect() {
        phys::discard::init_cpu(h.features & features::DISCARD_FAULTS != 0);
    }
    println!("guest: cpu {} online (apic id {})", index, apic::id());
    if let Some(r) = hv::hello(index).map(hv::wire) {
        if r != 0 {
            println!("guest: cpu {index}: hello refused ({r})");
        }
    }
    sched::idle_loop()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    console::write_fmt_unlocked(format_args!("\nKERNEL PANIC: {info}\n"));
    hv::exit(guest::KERNEL_PANIC)
}
