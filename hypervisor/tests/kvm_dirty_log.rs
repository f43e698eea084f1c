//! The dirty log of a real KVM VM: a guest that writes a page sets its
//! bit, a clear clears exactly the frames asked for and write-protects them
//! again, the host's own writes are not logged, and the block device's
//! clear covers only whole pages; plus an ignored measurement of the
//! ioctls' cost. The arithmetic is unit-tested beside the code
//! (`vstate/dirty_log_tests.rs`).
//!
//! Every test here needs KVM: without it they fail, never skip.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use hypervisor::arch::x86_64::regs::setup_bsp;
use hypervisor::memory::GuestRam;
use hypervisor::metrics::Metrics;
use hypervisor::vstate::dirty_log::{ClearOnDisk, DirtyLog, SlotSpan};
use hypervisor::vstate::kvm::KvmContext;
use hypervisor::vstate::vm::Vm;
use kvm_ioctls::VcpuExit;
use pagehint_abi::{GuestPhys, PAGE_SIZE};
use vm_memory::{Bytes, GuestAddress};

const GIB: u64 = 1 << 30;

/// Where the test code goes, and the page it writes.
const ENTRY: u64 = 0x10_0000;
const TARGET: u64 = 0x20_0000;
const EXIT_PORT: u16 = 0xf4;

/// Runs the vCPU until it writes the exit port.
fn run_to_out(vcpu: &mut kvm_ioctls::VcpuFd) {
    for _ in 0..100 {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(port, _)) if port == EXIT_PORT => return,
            Ok(VcpuExit::Hlt) => panic!("halted before the out"),
            Ok(_) => {}
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => panic!("KVM_RUN: {e}"),
        }
    }
    panic!("no out within 100 exits");
}

#[test]
fn a_guest_write_sets_its_bit_a_clear_clears_it_and_host_writes_are_not_logged() {
    let kvm = KvmContext::new().expect("this test needs /dev/kvm");
    let vm = Vm::new(&kvm).unwrap();
    vm.enable_manual_dirty_log().unwrap();
    let ram = GuestRam::new(16 << 20).unwrap();
    // 32-bit protected mode (the PVH entry state), twice:
    // mov dword [TARGET], 0x12345678; mov al, 7; out 0xf4, al.
    let mut code = Vec::new();
    for _ in 0..2 {
        code.extend_from_slice(&[0xc7, 0x05]);
        code.extend_from_slice(&(TARGET as u32).to_le_bytes());
        code.extend_from_slice(&0x1234_5678u32.to_le_bytes());
        code.extend_from_slice(&[0xb0, 0x07, 0xe6, EXIT_PORT as u8]);
    }
    code.push(0xf4);
    ram.mem().write_slice(&code, GuestAddress(ENTRY)).unwrap();
    vm.register_ram_logged(&ram, true).unwrap();
    let log = Arc::new(vm.dirty_log(&ram).unwrap());
    let mut vcpu = vm.create_vcpu(0).unwrap();
    setup_bsp(&vcpu, GuestPhys(ENTRY)).unwrap();
    let target = TARGET / PAGE_SIZE;
    let all = 0..ram.frames();

    // Initially set: every frame counts as written.
    let b = log.read().unwrap();
    assert!(b.written(0) && b.written(target) && b.written(ram.frames() - 1));
    assert_eq!(log.clear(&[all]).unwrap(), ram.frames());
    let b = log.read().unwrap();
    assert!((0..ram.frames()).all(|p| !b.written(p)), "all clear");

    // The host's own write (a disk read into the page) is not logged.
    ram.mem()
        .write_obj(0xabu8, GuestAddress(TARGET + PAGE_SIZE))
        .unwrap();
    assert!(!log.read().unwrap().written(target + 1));

    // The guest's write is, and reading does not clear it.
    run_to_out(&mut vcpu);
    for _ in 0..2 {
        let b = log.read().unwrap();
        assert!(b.written(target), "the guest wrote it");
        assert!(!b.written(target + 1) && !b.written(target - 1));
    }
    assert_eq!(
        ram.mem().read_obj::<u32>(GuestAddress(TARGET)).unwrap(),
        0x1234_5678
    );

    // A clear of that one frame clears it (and only it)...
    let one = target..target + 1;
    assert_eq!(log.clear(&[one]).unwrap(), 1);
    assert!(!log.read().unwrap().written(target));
    // ... and write-protects it again: the next write sets it again.
    run_to_out(&mut vcpu);
    assert!(log.read().unwrap().written(target));
    // The block device's clear after a request over the page and a half
    // before it: only the whole page is cleared.
    let metrics = Arc::new(Metrics::default());
    let blk = ClearOnDisk::new(log.clone(), metrics.clone());
    blk.on_disk(&[(TARGET - PAGE_SIZE / 2, PAGE_SIZE * 3 / 2)]);
    assert!(!log.read().unwrap().written(target));
    let m = &metrics.potentially_volatile;
    assert_eq!((m.clears.get(), m.cleared_pages.get()), (1, 1));
}

/// Times `KVM_GET_DIRTY_LOG` of a 256 MiB and a 4 GiB slot and
/// `KVM_CLEAR_DIRTY_LOG` of one 64-page window, on this host. Run with
/// `cargo test -p pagehint-hypervisor --release --test kvm_dirty_log -- --ignored
/// --nocapture dirty_log_cost`.
#[test]
#[ignore = "a measurement: prints figures"]
fn dirty_log_cost() {
    use std::time::Instant;
    let kvm = KvmContext::new().expect("this test needs /dev/kvm");
    for (name, size) in [("256 MiB", 256 << 20), ("4 GiB", 4 * GIB)] {
        let vm = kvm.kvm().create_vm().unwrap();
        let cap = kvm_bindings::kvm_enable_cap {
            cap: kvm_bindings::KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
            args: [3, 0, 0, 0],
            ..Default::default()
        };
        vm.enable_cap(&cap).unwrap();
        // SAFETY: a fresh anonymous private mapping, only given to KVM
        // and unmapped after the VM is gone.
        let host = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(host, libc::MAP_FAILED);
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot: 0,
            flags: kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES,
            guest_phys_addr: 0,
            memory_size: size,
            userspace_addr: host as u64,
        };
        // SAFETY: the mapping above, alive until after `vm` drops.
        unsafe { vm.set_user_memory_region(region) }.unwrap();
        let pages = size / PAGE_SIZE;
        let span = SlotSpan {
            slot: 0,
            first_pfn: 0,
            pages,
        };
        let log = DirtyLog::with_spans(&vm, vec![span]).unwrap();
        let n = 200u32;
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(log.get(0, pages).unwrap());
        }
        let get = t.elapsed() / n;
        // One 64-page window per call, `n` windows from frame 0.
        let time_clears = || {
            let t = Instant::now();
            for i in 0..u64::from(n) {
                let window = i * 64..(i + 1) * 64;
                log.clear(std::slice::from_ref(&window)).unwrap();
            }
            t.elapsed() / n
        };
        // First clears of set bits (initially set), then of clear ones.
        let clear_set = time_clears();
        let clear_clean = time_clears();
        println!(
            "slot {name}: KVM_GET_DIRTY_LOG {get:?} per call; KVM_CLEAR_DIRTY_LOG of one 64-page window {clear_set:?} (64 bits set), {clear_clean:?} (none set)"
        );
        drop(log);
        drop(vm);
        // SAFETY: the mapping made above; KVM let go of it with the VM.
        unsafe { libc::munmap(host, size as usize) };
    }
}
