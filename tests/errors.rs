//! Bad input from a user or a guest ends the VMM with a one-line error and
//! a distinct exit status, never a panic or a hang.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::process::{self, stderr_of, wait_exit, wait_until};
use common::{boot, guest_user_path, read_json, require_kvm, vmm, vmm_quick};
use pagehint_abi::exit::{guest, vmm as code};

fn one_line_error(stderr: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got:\n{stderr}");
    assert!(lines[0].starts_with("vmm: error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn missing_kernel_file() {
    let r = vmm_quick(&["run", "--kernel", "/nonexistent/kernel.elf"]);
    r.expect_status(code::NO_INPUT);
    one_line_error(&r.stderr);
    assert!(r.stderr.contains("/nonexistent/kernel.elf"), "{}", r.stderr);
}

#[test]
fn kernel_that_is_not_an_elf() {
    let path = std::env::temp_dir().join(format!("vmm-test-not-elf-{}", std::process::id()));
    std::fs::write(&path, b"#!/bin/sh\necho this is not a kernel\n").unwrap();
    let r = vmm_quick(&["run", "--kernel", path.to_str().unwrap()]);
    std::fs::remove_file(&path).ok();
    r.expect_status(code::BAD_KERNEL);
    one_line_error(&r.stderr);
}

#[test]
fn elf_without_pvh_note() {
    let user = guest_user_path();
    assert!(user.exists(), "{} missing", user.display());
    let r = vmm_quick(&["run", "--kernel", user.to_str().unwrap()]);
    r.expect_status(code::BAD_KERNEL);
    one_line_error(&r.stderr);
    assert!(r.stderr.contains("PVH"), "{}", r.stderr);
}

#[test]
fn too_little_and_too_much_memory() {
    // 8 bare means 8 MiB (as QEMU's -m): too little, like 1M; 65G is
    // past the 64 GiB top of the range.
    for mem in ["1M", "8", "65G", "68719480832B"] {
        let r = vmm_quick(&["run", "--mem", mem]);
        r.expect_status(code::CONFIG);
        one_line_error(&r.stderr);
        assert!(
            r.stderr.contains("16 MiB") && r.stderr.contains("64 GiB"),
            "{}",
            r.stderr
        );
    }
}

#[test]
fn bad_flags_and_values() {
    for args in [
        &["run", "--no-such-flag"][..],
        &["run", "--mem", "lots"],
        &["run", "--vcpus", "zero"],
        &["frobnicate"],
    ] {
        let r = vmm_quick(args);
        r.expect_status(code::USAGE);
        assert!(r.stderr.contains("error"), "{args:?}: {}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    }
}

#[test]
fn zero_vcpus_is_a_config_error() {
    let r = vmm_quick(&["run", "--vcpus", "0"]);
    r.expect_status(code::CONFIG);
    one_line_error(&r.stderr);
}

#[test]
fn guest_kernel_exception_is_diagnosed() {
    let r = boot(&["--vcpus", "1"], &["crash-kernel"]);
    r.expect_status(guest::CPU_EXCEPTION as i32)
        .expect_stdout("KERNEL PANIC: CPU exception #GP general protection (vector 13)")
        .expect_stdout("rip 0xffffffff8");
}

#[test]
fn guest_triple_fault_ends_the_run_with_a_register_dump() {
    let r = boot(&["--vcpus", "2"], &["triple-fault"]);
    r.expect_status(code::GUEST_TRIPLE_FAULT);
    r.expect_stderr("triple fault");
    r.expect_stderr("rip");
}

#[test]
fn timeout_stops_a_guest_that_never_exits() {
    require_kvm();
    let r = vmm(
        &[
            "run",
            "--timeout",
            "2",
            "--",
            "copies=2",
            "preempt",
            "100000",
        ],
        Duration::from_secs(60),
    );
    r.expect_status(code::TIMEOUT);
    assert!(r.elapsed < Duration::from_secs(20), "took {:?}", r.elapsed);
    one_line_error(&r.stderr);
}

#[test]
fn sigint_and_sigterm_stop_the_guest_join_every_thread_and_write_the_final_stats() {
    use std::process::{Command, Stdio};
    require_kvm();
    for (signal, status) in [(libc::SIGINT, code::SIGINT), (libc::SIGTERM, code::SIGTERM)] {
        let stats =
            std::env::temp_dir().join(format!("vmm-signal-{}-{signal}.json", std::process::id()));
        let _ = std::fs::remove_file(&stats);
        let mut child = Command::new(common::vmm_path())
            .args([
                "run",
                "--stats",
                stats.to_str().unwrap(),
                "--stats-interval",
                "100",
            ])
            .args(["--", "copies=1", "sleep", "60000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Running: the periodic stats document appears.
        let running = || stats.exists();
        wait_until(Duration::from_secs(60), running, || {
            "no stats: not running".into()
        });
        std::thread::sleep(Duration::from_millis(500));
        std::fs::remove_file(&stats).unwrap();
        process::signal(&child, signal);
        let exit = wait_exit(
            &mut child,
            Duration::from_secs(10),
            "did not stop within 10 s",
        );
        let err = stderr_of(&mut child);
        assert_eq!(exit.code(), Some(status), "{err}");
        one_line_error(&err);
        assert!(err.contains("stopped by signal"), "{err}");
        // The final document, written after every thread was joined.
        let doc = read_json(&stats);
        assert!(doc["exits"].is_object(), "{doc}");
        let _ = std::fs::remove_file(&stats);
    }
}

#[test]
fn a_forbidden_system_call_in_any_vmm_thread_stops_the_vmm_with_its_own_status() {
    // Each kind of thread makes one call outside its filter right after
    // installing it (the hidden test hook); the VMM must end at once with
    // the seccomp status and one line naming the thread. Four vCPUs break
    // their filters at about the same moment: still one line (CI once saw
    // two, before the handler let only the first thread write).
    let disk = common::Disk::new("seccomp", 1, "64K");
    for thread in [
        "main",
        "vcpu",
        "virtio-blk",
        "discard-faults",
        "reclaim",
        "stats",
        "api",
    ] {
        let sock = std::env::temp_dir().join(format!("vmm-probe-{}.sock", std::process::id()));
        let flags = format!(
            "--seccomp-probe {thread} --vcpus 4 --api-sock {}",
            sock.display()
        );
        let r = disk.boot_as("s.json", &flags, "hello");
        r.expect_status(code::SECCOMP);
        one_line_error(&r.stderr);
        r.expect_stderr(&format!("seccomp: the {thread} thread made system call"));
        let _ = std::fs::remove_file(&sock);
    }
    // The same runs without the filters: the probe's call is harmless.
    let r = boot(&["--no-seccomp", "--seccomp-probe", "vcpu"], &["hello"]);
    r.expect_status(0);
}

#[test]
fn a_disk_truncated_under_a_running_guest_gives_it_io_errors_not_a_crash() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    // The host takes the disk away from under the guest (the file is cut
    // to 64 KiB once the guest mounted it): every read past the cut fails
    // on the host side; the guest must see I/O errors and say so, and the
    // VMM must neither panic nor hang.
    let disk = common::Disk::new("truncate", 5, "4M");
    let image = disk.image();
    let mut child = Command::new(common::vmm_path())
        .args(["run", "--mem", "32M", "--timeout", "120", "--disk", &image])
        .args(["--", "copies=1", "scan-read", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.starts_with("guest: disk ") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the guest never found its disk");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap()
        .set_len(64 << 10)
        .unwrap();
    let status = wait_exit(&mut child, Duration::from_secs(150), "hung after the cut");
    let out = reader.join().unwrap();
    let err = stderr_of(&mut child);
    assert_eq!(status.code(), Some(guest::FAILURE as i32), "{out}\n{err}");
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "{err}"
    );
    assert!(err.contains("disk I/O failed"), "the host says why: {err}");
    assert!(
        out.contains("disk read of file"),
        "the guest says which read failed: {out}"
    );
    let errors = common::results(&out, "scan-read", "errors");
    assert!(errors.len() == 1 && errors[0] > 0, "{out}");
}
