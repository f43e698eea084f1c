//! The bundled guest boots under real KVM: every CPU comes up, user
//! programs run at CPL3 under the preemptive scheduler, and their exit
//! status becomes the VMM's.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{boot, Disk};

#[test]
fn default_program_greets_from_every_cpu_and_exits_zero() {
    let r = boot(&[], &[]);
    r.expect_status(0)
        .expect_stdout("guest: pagehint kernel booting")
        .expect_stdout("hypervisor PageHintVMM, ABI 1")
        .expect_stdout("(hello: Some(0))")
        .expect_stdout("cpu 1 online (apic id 1)")
        .expect_stdout("2/2 cpus online")
        .expect_stdout("hello from cpu 0,")
        .expect_stdout("hello from cpu 1,")
        .expect_stdout("all 2 processes exited, status 0");
}

#[test]
fn three_vcpus_all_report_in() {
    let r = boot(&["--vcpus", "3", "--mem", "64M"], &["hello"]);
    r.expect_status(0)
        .expect_stdout("3/3 cpus online")
        .expect_stdout("hello from cpu 2,");
    // One greeting per CPU, from distinct processes.
    assert_eq!(
        r.stdout.matches("hello from cpu").count(),
        3,
        "{}",
        r.stdout
    );
}

#[test]
fn guest_exit_status_becomes_the_vmm_status() {
    boot(&["--vcpus", "1"], &["copies=1", "exit", "7"]).expect_status(7);
    boot(&["--vcpus", "1"], &["copies=1", "exit", "0"]).expect_status(0);
}

#[test]
fn timer_preempts_user_programs_sharing_a_cpu() {
    // Four CPU-bound processes on two CPUs: each is descheduled while
    // its neighbour runs, which only a preemptive scheduler can do.
    let r = boot(&[], &["copies=4", "preempt", "200"]);
    r.expect_status(0);
    let lines: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.starts_with("preempt:"))
        .collect();
    assert_eq!(lines.len(), 4, "{}", r.stdout);
    for l in lines {
        let n: u64 = l
            .rsplit("descheduled ")
            .next()
            .and_then(|t| t.split_whitespace().next())
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("unparsable line {l:?}"));
        assert!(n >= 2, "process was not preempted: {l}");
    }
}

#[test]
fn anonymous_mmap_mprotect_munmap_work() {
    let r = boot(&[], &["mm", "128"]);
    r.expect_status(0);
    assert_eq!(
        r.stdout.matches("mm: ok pages=128 errors=0").count(),
        2,
        "{}",
        r.stdout
    );
}

#[test]
fn user_fault_kills_only_the_process() {
    let r = boot(&["--vcpus", "1"], &["copies=1", "segv"]);
    r.expect_status(1)
        .expect_stdout("segv: writing to read-only page")
        .expect_stdout("killed: #PF page fault (write)");
    assert!(!r.stdout.contains("FAIL"), "{}", r.stdout);
}

#[test]
fn unknown_program_is_reported() {
    boot(&["--vcpus", "1"], &["no-such-program"])
        .expect_status(5)
        .expect_stdout("unknown program 'no-such-program'");
}

/// One boot at `mem`: every CPU up, RAM as the E820 map says (`high_mib`
/// above 4 GiB), and an anonymous-memory workload intact on both CPUs.
/// Single frames come from the highest RAM range first, so on a guest
/// larger than 3 GiB the workload's pages are above 4 GiB.
fn boots_with(mem: &str, high_mib: Option<u64>) {
    let r = boot(&["--mem", mem], &["mm", "64"]);
    r.expect_status(0).expect_stdout("2/2 cpus online");
    assert_eq!(
        r.stdout.matches("mm: ok pages=64 errors=0").count(),
        2,
        "--mem {mem}: {}",
        r.stdout
    );
    match high_mib {
        Some(mib) => {
            r.expect_stdout(&format!("guest: {mib} MiB of RAM above 4 GiB"));
        }
        None => assert!(!r.stdout.contains("above 4 GiB"), "{}", r.stdout),
    }
}

#[test]
fn smallest_guest_boots() {
    boots_with("16M", None);
}

#[test]
fn two_and_three_gib_guests_boot() {
    boots_with("2G", None);
    // 3 GiB: all of it below the MMIO hole.
    boots_with("3G", None);
    // A bare number is MiB, as QEMU's -m. The guest counts RAM after its
    // own image and the frame allocator's links (a few MiB, which move as
    // the kernel grows), so a few MiB under 512, never a GiB count.
    let r = boot(&["--mem", "512", "--vcpus", "1"], &["hello"]);
    r.expect_status(0);
    let mib: u64 = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("guest: ")?.split_once(" MiB RAM,"))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no RAM line: {}", r.stdout));
    assert!((500..512).contains(&mib), "{mib} MiB: {}", r.stdout);
}

#[test]
fn sixteen_gib_guest_uses_ram_above_4g() {
    // 16 GiB on a 24 GiB host: lazily populated, so it costs the host
    // only what the guest touches. 13 GiB of it sits above 4 GiB.
    boots_with("16G", Some(13312));
    // The page cache and a disk work there too, every block verified.
    let disk = Disk::new("sixteen", 4, "1M");
    let r = disk.boot("--mem 16G", "copies=1 scan-mmap 2");
    r.expect_status(0)
        .expect_results("scan-mmap", "errors", &[0])
        .expect_results("scan-mmap", "bytes", &[8 << 20]);
}

#[test]
fn largest_guest_boots() {
    // The top of the range, 64 GiB, on a host with less memory than that.
    boots_with("64G", Some(62464));
}
