//! Guests that flood: their console into a stdout nobody reads, the
//! hypercall port with garbage. The VMM must keep its logs and its own
//! memory bounded, honour `--timeout`, and lose nothing a reader takes.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::process::stderr_of;
use common::{boot, hypercall_errors, json_u64 as get, read_stats as stats, require_kvm};
use pagehint_abi::exit::vmm as code;

/// The largest resident set `child` had while it ran (KiB, sampled every
/// 100 ms), and its exit status; fails past `limit`.
fn watch(child: &mut Child, limit: Duration) -> (u64, std::process::ExitStatus) {
    let start = Instant::now();
    let mut peak = 0;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return (peak, s);
        }
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()));
        if let Some(kib) = status.ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        }) {
            peak = peak.max(kib);
        }
        assert!(start.elapsed() < limit, "still running after {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A pipe holding one page: (read end, write end).
fn small_pipe() -> (std::fs::File, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2(2) returns.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: F_SETPIPE_SZ on the pipe just made.
    assert!(unsafe { libc::fcntl(fds[1], libc::F_SETPIPE_SZ, 4096) } >= 4096);
    // SAFETY: both descriptors are fresh and owned by nobody else.
    unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    }
}

#[test]
fn a_console_flood_into_a_stdout_nobody_reads_still_stops_at_the_timeout() {
    require_kvm();
    let s = std::env::temp_dir().join(format!("vmm-flood-{}.json", std::process::id()));
    // stdout is a pipe of one page that this test never reads: it fills
    // at once, and a VMM writing to it directly would block a vCPU in
    // write(2) for as long as the pipe stays full.
    let (mut out_rd, out_wr) = small_pipe();
    let mut child = Command::new(common::vmm_path())
        .args(["run", "--timeout", "8", "--stats", s.to_str().unwrap()])
        .args(["--", "copies=1", "flood", "120"])
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_wr))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let (peak_kib, status) = watch(&mut child, Duration::from_secs(60));
    let took = started.elapsed();
    let err = stderr_of(&mut child);
    assert_eq!(status.code(), Some(code::TIMEOUT), "{err}");
    // The timeout plus the console's final wait (0.5 s) and the stop.
    assert!(took < Duration::from_secs(14), "took {took:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let doc = stats(s.to_str().unwrap());
    let _ = std::fs::remove_file(&s);
    // stdout was found full (how much was dropped depends on how fast
    // this machine let the guest write: the VMM holds 64 KiB).
    assert!(get(&doc, "serial.stalls") > 0, "{doc}");
    // Held output is bounded: the VMM's whole resident set, the guest's
    // touched RAM included, stays far below 64 MiB.
    assert!(peak_kib < 64 * 1024, "peak RSS {peak_kib} KiB");
    // The pipe holds what went out first, in order: the boot lines, then
    // flood lines numbered from 0 with none missing.
    let mut out = String::new();
    out_rd.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("guest: "), "{out}");
    let numbers: Vec<u64> = out
        .lines()
        .filter_map(|l| l.strip_prefix("flood: line "))
        .filter_map(|l| l.get(..12)?.parse().ok())
        .collect();
    assert_eq!(numbers, (0..numbers.len() as u64).collect::<Vec<_>>());
}

#[test]
fn a_console_flood_that_the_reader_keeps_up_with_loses_no_line() {
    let s = std::env::temp_dir().join(format!("vmm-flood-ok-{}.json", std::process::id()));
    let r = boot(
        &["--stats", s.to_str().unwrap()],
        &["copies=1", "flood", "3"],
    );
    r.expect_status(0);
    let doc = stats(s.to_str().unwrap());
    let _ = std::fs::remove_file(&s);
    assert_eq!(get(&doc, "serial.dropped_bytes"), 0, "{doc}");
    let numbers: Vec<u64> = r
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("flood: line "))
        .map(|l| l[..12].parse().unwrap())
        .collect();
    let lines: u64 = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("result: program=flood lines="))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(lines > 0);
    assert_eq!(numbers, (0..lines).collect::<Vec<_>>());
}

#[test]
fn a_hypercall_flood_gets_bounded_logs_and_bounded_memory() {
    require_kvm();
    let s = std::env::temp_dir().join(format!("vmm-hcflood-{}.json", std::process::id()));
    let run = |guest: &[&str]| {
        let mut child = Command::new(common::vmm_path())
            .args(["run", "--timeout", "60", "--stats", s.to_str().unwrap()])
            .arg("--")
            .args(guest)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (peak, status) = watch(&mut child, Duration::from_secs(120));
        (peak, status, stderr_of(&mut child))
    };
    let (quiet_kib, status, _) = run(&["copies=1", "sleep", "4000"]);
    assert_eq!(status.code(), Some(0));
    // 20 garbage calls every 10 ticks on each CPU: thousands a second.
    let (flood_kib, status, err) = run(&["hcnoise=20", "copies=1", "sleep", "4000"]);
    assert_eq!(status.code(), Some(0), "{err}");
    let doc = stats(s.to_str().unwrap());
    let _ = std::fs::remove_file(&s);
    let refused = hypercall_errors(&doc);
    assert!(refused > 1000, "only {refused} refused: {doc}");
    // Warnings are rate-limited: a few dozen lines, not one per call.
    let lines = err.lines().count() as u64;
    assert!(
        lines < 200 && lines * 20 < refused,
        "{lines} lines for {refused} refusals"
    );
    // The flood costs the VMM no memory of note.
    assert!(
        flood_kib < quiet_kib + 8 * 1024,
        "{flood_kib} KiB flooded, {quiet_kib} KiB quiet"
    );
}
