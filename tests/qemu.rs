//! The bundled guest is a plain PVH ELF: it also boots under QEMU's microvm
//! machine, notices that it is not under this VMM, and runs its default
//! program without hypercalls.
//!
//! Runs whenever `qemu-system-x86_64` is installed (`.ci/run` installs it,
//! so it always runs in CI).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::guest_kernel_path;

fn qemu() -> Option<&'static str> {
    let ok = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    ok.then_some("qemu-system-x86_64")
}

fn boot_under_qemu(accel: &str, smp: &str, append: &str) -> (i32, String) {
    let kernel = guest_kernel_path();
    assert!(kernel.exists(), "{} missing", kernel.display());
    // A microvm with the console on stdio and the exit device the guest
    // stops through.
    let machine = "-machine microvm -m 64 -display none -monitor none -serial stdio -no-reboot";
    let mut child = Command::new(qemu().unwrap())
        .args(["-accel", accel, "-smp", smp])
        .args(machine.split_whitespace())
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .arg("-kernel")
        .arg(&kernel)
        .args(["-append", append])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn qemu");
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut out = String::new();
            use std::io::Read;
            child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            return (status.code().unwrap_or(-1), out);
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("qemu did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bundled_guest_boots_under_qemu_microvm() {
    if qemu().is_none() {
        eprintln!("qemu-system-x86_64 is not installed: this check did not run");
        return;
    }
    // TCG: fully emulated, independent of the host's KVM.
    let (status, out) = boot_under_qemu("tcg", "2", "hello");
    // isa-debug-exit turns guest status 0 into QEMU status 1.
    assert_eq!(status, 1, "{out}");
    assert!(
        out.contains("not under PageHintVMM; running without hypercalls"),
        "{out}"
    );
    assert!(out.contains("2/2 cpus online"), "{out}");
    assert!(out.contains("hello from cpu 0,"), "{out}");
    assert!(out.contains("hello from cpu 1,"), "{out}");
    assert!(out.contains("all 2 processes exited, status 0"), "{out}");
}

#[test]
fn bundled_guest_boots_under_qemu_with_kvm() {
    if qemu().is_none() {
        eprintln!("qemu-system-x86_64 is not installed: this check did not run");
        return;
    }
    common::require_kvm();
    let (status, out) = boot_under_qemu("kvm", "1", "mm 32");
    assert_eq!(status, 1, "{out}");
    assert!(out.contains("mm: ok pages=32 errors=0"), "{out}");
}
