//! Discard-fault benchmark: the VMM's discard-fault round trip against a
//! plain userfaultfd zero-page fault, measured in the same run.
//!
//! - Discard faults: the `cow 4` workload under a tight host budget, where
//!   the guest keeps touching mapped file pages the host has discarded.
//!   The VMM times each from the fault's arrival to the vCPU's re-entry
//!   with #VE injected (`discard_faults.round_trip_us` in the stats); the
//!   guest's handler (emulated kernel code here) comes on top.
//! - Plain userfaultfd: in this process, 2048 registered anonymous pages
//!   touched one by one, each resolved by a handler thread with
//!   `UFFDIO_ZEROPAGE`, timed from the access to its completion.
//!
//! Run with `cargo bench --bench discard_fault` or
//! `scripts/bench-discard-fault.sh`.

// A benchmark is a test program: a failed unwrap is a failed run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::fd::AsFd;
use std::time::Instant;

mod support;
use support::{make_disk, vmm};

use hypervisor::discard_fault::uffd_sys::{self as sys, UffdMsg};

fn plain_uffd_fault_us(pages: usize) -> (f64, f64) {
    let len = pages * 4096;
    // SAFETY: a fresh private anonymous mapping, unmapped at the end.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED);
    // Blocking, user-mode faults only, no extra features.
    let uffd = sys::open(libc::O_CLOEXEC | sys::UFFD_USER_MODE_ONLY, 0).expect("userfaultfd");
    sys::register(
        uffd.as_fd(),
        base as u64,
        len as u64,
        sys::UFFDIO_REGISTER_MODE_MISSING,
    )
    .expect("register");
    let uffd = std::sync::Arc::new(uffd);
    let handler = {
        let uffd = uffd.clone();
        std::thread::spawn(move || {
            let mut msg = [UffdMsg::zeroed()];
            for _ in 0..pages {
                let n = sys::read_msgs(uffd.as_fd(), &mut msg).unwrap_or(0);
                if let Some(pf) = msg[0].pagefault().filter(|_| n == 1) {
                    let page = pf.address & !4095;
                    // SAFETY: `page` lies in the registered range, which only
                    // this benchmark uses; its missing page reads as zeroes.
                    let _ = unsafe { sys::zeropage(uffd.as_fd(), page, 4096, 0) };
                }
            }
        })
    };
    let mut times: Vec<f64> = Vec::with_capacity(pages);
    for i in 0..pages {
        let p = (base as usize + i * 4096) as *const u8;
        let t = Instant::now();
        // SAFETY: inside our mapping; the read faults and is resolved.
        std::hint::black_box(unsafe { p.read_volatile() });
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    handler.join().unwrap();
    // SAFETY: the mapping made above.
    unsafe { libc::munmap(base, len) };
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    (times[times.len() / 2], mean)
}

fn main() {
    let dir = std::env::temp_dir().join(format!("vmm-bench-discard-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let stats = dir.join("stats.json");
    let img = make_disk(&dir, 4, "2M");
    let out = vmm()
        .args([
            "run",
            "--mem",
            "24M",
            "--vcpus",
            "2",
            "--host-budget",
            "8M",
            "--stats",
        ])
        .arg(&stats)
        .arg("--disk")
        .arg(&img)
        .args(["--", "copies=1", "cow", "4"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("errors=0"),
        "{stdout}"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    let rt = &doc["discard_faults"]["round_trip_us"];
    let (count, p50, mean) = (
        rt["count"].as_u64().unwrap_or(0),
        rt["p50_us"].as_f64().unwrap_or(0.0),
        rt["mean_us"].as_f64().unwrap_or(0.0),
    );
    let (zp50, zmean) = plain_uffd_fault_us(2048);
    println!("discard-fault benchmark (one run)");
    println!(
        "{:<44} {:>8} {:>10} {:>10}",
        "", "faults", "p50 us", "mean us"
    );
    println!(
        "{:<44} {:>8} {:>10.1} {:>10.1}",
        "discard fault: arrival -> #VE re-entry", count, p50, mean
    );
    println!(
        "{:<44} {:>8} {:>10.1} {:>10.1}",
        "plain userfaultfd zero-page fault", 2048, zp50, zmean
    );
    println!(
        "ratio discard / zero-page: p50 {:.2}, mean {:.2}",
        p50 / zp50.max(1e-9),
        mean / zmean.max(1e-9)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
